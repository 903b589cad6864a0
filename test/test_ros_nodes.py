"""ROS 2 nodes over real rclpy and Fast DDS (``pip install -e '.[ros]'``; skipped without rclpy).

Each test uses its own ``ROS_DOMAIN_ID`` so that concurrent runs on one machine never hear
each other. No timing is asserted: the integration test checks that the Go1 walks and that
every command was finite, however fast the machine is.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: pip install -e '.[ros]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ws_ros.common import command_qos, latched_qos, sensor_qos  # noqa: E402

DOMAIN = 40 + os.getpid() % 150  # 0..232 are valid domain ids


class Listener(Node):
    """Collects odometry, commands and diagnostics."""

    def __init__(self, **kwargs):
        super().__init__("test_listener", **kwargs)
        self.x, self.commands, self.diag = [], [], {}
        self.create_subscription(Odometry, "odom", lambda m: self.x.append(m.pose.pose.position.x), sensor_qos())
        self.create_subscription(JointTrajectory, "joint_command", self._cmd, command_qos())
        self.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10)

    def _cmd(self, m):
        pt = m.points[0]
        self.commands.append(np.array(pt.positions if len(pt.positions) else pt.effort))

    def _diag(self, m):
        stamp = m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec
        for s in m.status:
            self.diag[s.name] = (s.level[0] if isinstance(s.level, bytes) else s.level, s.message,
                                 {kv.key: kv.value for kv in s.values}, stamp)


def _spin_until(executor, cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        executor.spin_once(timeout_sec=0.05)
    return cond()


@contextlib.contextmanager
def graph_context(params: str, overrides: dict, domain_id: int):
    """An rclpy context whose arguments load a graph's parameter file (``config/ros/<params>``) and then
    ``overrides`` (node -> parameter -> value) on top, as ``ros2 launch`` with two parameter files does."""
    import tempfile

    import yaml

    from ws_ros.graphs import params_file

    with tempfile.TemporaryDirectory() as tmp:
        over = os.path.join(tmp, "over.yaml")
        with open(over, "w") as fh:
            yaml.safe_dump({node: {"ros__parameters": values} for node, values in overrides.items()}, fh)
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=domain_id, args=[
            "test", "--ros-args", "--params-file", str(params_file(params)), "--params-file", over])
        try:
            yield ctx
        finally:
            rclpy.shutdown(context=ctx)


@pytest.fixture
def ros_context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    yield ctx
    rclpy.shutdown(context=ctx)


def test_ws_launch_go1_sim_walks_the_go1(ros_context):
    """``ws launch go1_sim``: sim_bridge and mppi_controller in one process on one executor, in
    simulated time at a quarter of real time (a loaded 2-core CI machine then controls as a fast one would:
    at real time and at half, with two training jobs beside it, the Go1 fell once), as a user starts them; this test
    listens over Fast DDS from its own process."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "osmesa"}
    ws = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())"]
    proc = subprocess.Popen(ws + ["launch", "go1_sim", "-p", "real_time_factor:=0.25"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True)
    try:
        lst = Listener(context=ros_context)
        ex = MultiThreadedExecutor(context=ros_context)
        ex.add_node(lst)
        assert _spin_until(ex, lambda: len(lst.x) > 0 and len(lst.commands) > 0, 60), "no odometry or commands"
        x0 = lst.x[-1]
        _spin_until(ex, lambda: lst.x[-1] - x0 > 0.4, 30)
        _spin_until(ex, lambda: any("MPPI" in k for k in lst.diag), 5)
        assert lst.x[-1] - x0 > 0.4, f"the Go1 moved {lst.x[-1] - x0:.2f} m"
        assert all(np.all(np.isfinite(c)) and c.shape == (12,) for c in lst.commands)
        ctl = next(v for k, v in lst.diag.items() if "MPPI" in k)
        assert ctl[2]["mode"] == "run" and int(ctl[2]["replans"]) > 0
        ex.remove_node(lst)
        lst.destroy_node()
        ex.shutdown()
    finally:
        output = _stop(proc)
    assert proc.returncode == 0, output
    assert "[sim_bridge]" in output and "[mppi_controller]" in output


def _stop(proc: subprocess.Popen, timeout: float = 30) -> str:
    """SIGINT, then the output. If the process does not stop in time, it and its children are killed
    (so later tests do not meet its nodes on the same domain) and the test fails with its output."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"{proc.args} did not stop within {timeout} s of SIGINT:\n{out[-3000:]}") from None


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_hopper_sim_graph_in_sim_time_keeps_hopper_upright(ros_context):
    """The ``hopper_sim`` graph's two processes (the argv ``ws launch`` runs) in simulated time, slowed to
    a tenth of real time so that a loaded 2-core machine keeps up: sim_bridge waits paused at t = 0, the controller
    unpauses it with its first plan and ticks on /clock; over the first 0.5 s Hopper stays upright (torso
    above 0.7 m, tilted under 0.4 rad) and moves forward at least 0.25 m (doing nothing moves it ~0 m).
    Gymnasium's stricter tilt bound of 0.2 rad is printed, not asserted: the graph's largest tilt in the
    first 0.5 s was 0.10-0.17 rad over 14 runs here (loaded and not) but 0.22 once on a CI machine, where
    synchronous MPPI with the same planner reaches 0.11-0.14 (12 planner seeds) and 0.12-0.18 when it
    replans three times on each state (9 seeds), as the lockstep graph does on the state a paused
    simulation republishes: more optimisation leans Hopper closer to the 0.2 rad edge its cost allows,
    and a test must not fail on that tail.
    The graph runs in lockstep (the controller pauses the simulation whenever its plan is older than one
    8 ms control step): without it, a busy machine let the plans grow stale and Hopper fell at 0.4 s; with it, and with readings past the soft joint limits accepted (the foot overshoots
    by up to 0.11 rad on landing), Hopper stayed healthy over 0.5 s in 6 of 6 runs and to 1.2 s in 5 of 6
    (synchronous MPPI with the same planner: 1.2 s in 6 of 6). The command rate in simulated time is printed
    (target 90 Hz); SIGINT stops both processes and leaves none behind."""
    from ws_ros.graphs import commands
    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    io = RobotIO.from_model(make_env("hopper").model)
    ix, iz, iang = (io.joint_names.index(n) for n in ("rootx", "rootz", "rooty"))
    lst = Listener(context=ros_context)
    states = []
    lst.create_subscription(JointState, "joint_states", lambda m: states.append(
        (m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, np.array(m.position))), sensor_qos())
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(lst)
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN), "OMP_NUM_THREADS": "1"}
    (bridge, bridge_argv), (ctl_name, ctl_argv) = commands("hopper_sim", {"real_time_factor": 0.1})
    assert (bridge, ctl_name) == ("sim_bridge", "mppi_controller")
    procs = [subprocess.Popen(bridge_argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    outputs = []
    try:
        # paused: the initial state is published at t = 0 until a controller is ready
        assert _spin_until(ex, lambda: len(states) > 5, 60), "no joint_states from the paused sim_bridge"
        assert all(t == 0.0 for t, _ in states), "sim_bridge did not wait paused at t = 0"
        procs.append(subprocess.Popen(ctl_argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert _spin_until(ex, lambda: states[-1][0] > 1.2, 120), "the simulation never ran 1.2 s"
        _spin_until(ex, lambda: any("MPPI" in k for k in lst.diag) and any("simulation" in k for k in lst.diag), 10)
    finally:
        outputs = [_stop(p) for p in procs]
    t = np.array([s[0] for s in states])
    q = np.stack([s[1] for s in states])
    window = (t > 0) & (t <= 0.5)
    assert window.sum() > 10, f"{window.sum()} states in the first 0.5 s"
    z, ang = q[window, iz], q[window, iang]
    bad = ~((z > 0.7) & (np.abs(ang) < 0.4))
    assert not bad.any(), f"fallen from t = {t[window][bad][0]:.3f} s: min z {z.min():.2f}, max |angle| {np.abs(ang).max():.2f}"
    moved = q[window, ix][-1] - q[0, ix]
    assert moved > 0.25, f"Hopper moved {moved:.2f} m in 0.5 s"
    ctl = next(v for k, v in lst.diag.items() if "MPPI" in k)[2]
    sim = next(v for k, v in lst.diag.items() if "simulation" in k)[2]
    assert ctl["time_base"].startswith("sim") and int(ctl["replans"]) > 0
    rate = int(sim["commands_applied"]) / float(sim["sim_time_s"])
    run = t > 0
    unhealthy = ~((q[run, iz] > 0.7) & (np.abs(q[run, iang]) < 0.2))
    healthy_for = t[run][unhealthy][0] if unhealthy.any() else t[run][-1]
    print(f"\nhopper_sim in sim time: {moved:.2f} m in 0.5 s, max |angle| {np.abs(q[run, iang][t[run] <= 0.5]).max():.3f} rad in 0.5 s, "
          f"healthy for {healthy_for:.2f} s; lockstep pauses {ctl.get('lockstep_pauses')}; {rate:.1f} commands per simulated second reached "
          f"sim_bridge (target 90); tick period p50/p99 {ctl.get('tick_period_ms_p50')}/"
          f"{ctl.get('tick_period_ms_p99')} ms (sim); {ctl.get('replan_rate_hz')} replans per simulated second")
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "unpaused at t = 0.000 s" in outputs[0] and "called unpause_physics" in outputs[1], outputs
    ex.remove_node(lst)
    lst.destroy_node()
    ex.shutdown()


def test_ws_launch_piper_sim_reaches_the_goal_it_is_sent(ros_context):
    """``ws launch piper_sim --processes`` (one process per node, as ros2 launch): the PiPER on its table
    in simulated time; a point published on ``goal`` is reached by the tool (forward kinematics of the
    joint_states it publishes) within 2 cm; SIGINT stops both node processes, even when the launcher
    inherited an ignored SIGINT (a background job's)."""
    import mujoco
    from geometry_msgs.msg import PoseStamped

    from ws_sim.piper import PIPER_SCENE_XML, load_piper

    model, data = load_piper(PIPER_SCENE_XML)
    lst = Listener(context=ros_context)
    joints = {}
    lst.create_subscription(JointState, "joint_states", lambda m: joints.update(zip(m.name, m.position)), sensor_qos())
    goal_pub = lst.create_publisher(PoseStamped, "goal", 10)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(lst)
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN), "OMP_NUM_THREADS": "1"}
    ws = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())"]
    # started with SIGINT ignored, as a shell starts a background job: ws launch must stop on it anyway
    proc = subprocess.Popen(ws + ["launch", "piper_sim", "--processes", "-p", "real_time_factor:=0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    goal = np.array([0.35, -0.12, 0.18])

    def distance():
        for i, name in enumerate(f"joint{k}" for k in range(1, 9)):
            data.qpos[i] = joints.get(name, data.qpos[i])
        mujoco.mj_kinematics(model, data)
        return float(np.linalg.norm(data.site("tcp").xpos - goal))

    try:
        assert _spin_until(ex, lambda: len(joints) == 8 and any("MPPI" in k for k in lst.diag), 90), \
            "no joint_states or controller diagnostics"
        start = distance()
        msg = PoseStamped()
        msg.header.frame_id = "world"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = goal.tolist()
        msg.pose.orientation.w = 1.0
        end = time.monotonic() + 150  # wall time: a loaded CPU slows the simulated-time reach
        while time.monotonic() < end and distance() > 0.02:
            goal_pub.publish(msg)  # until the controller has it (then it is a no-op)
            _spin_until(ex, lambda: False, 0.2)
        final = distance()
        nodes = _children(proc.pid)
    finally:
        output = _stop(proc)
    assert start > 0.1 and final < 0.02, (start, final, output[-2000:])
    assert proc.returncode == 0, output
    assert len(nodes) == 2 and not any(_alive(pid) for pid in nodes), (nodes, output)  # none left behind
    assert "new goal [0.35, -0.12, 0.18] m" in output
    ex.remove_node(lst)
    lst.destroy_node()
    ex.shutdown()


def test_piper_policy_graph_runs_the_policy_and_rejects_malformed_images(ros_context, tmp_path):
    """``ws launch piper_policy_sim`` as a user runs it, with no checkpoint given: the shipped policy reads the
    simulated scene and wrist cameras and the instruction and commands finite joint targets within the
    PiPER's ranges; a wrongly sized image and an instruction with an unknown word are rejected with a reason
    on /diagnostics."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ws_policy.train import DEFAULT_POLICIES, load_policy
    from ws_sim.piper import load_piper

    shipped, _ = load_policy(DEFAULT_POLICIES["pick_place"])
    assert shipped.cfg.wrist and shipped.cfg.image_size == 64
    lo, hi = load_piper()[0].actuator_ctrlrange.T
    lst = Listener(context=ros_context)
    bad_img = lst.create_publisher(Image, "camera/color/image_raw", sensor_qos())
    instr = lst.create_publisher(String, "instruction", latched_qos())
    wrist_depth = []  # the graph's sim_bridge renders the wrist camera too (wrist_camera: wrist)
    lst.create_subscription(Image, "wrist_camera/depth/image_raw", wrist_depth.append, sensor_qos())
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(lst)
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "osmesa"}
    ws = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())"]
    proc = subprocess.Popen(ws + ["launch", "piper_policy_sim", "-p", "real_time_factor:=0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def policy_diag():
        return next((v for k, v in lst.diag.items() if "policy executor" in k), None)

    try:
        assert _spin_until(ex, lambda: len(lst.commands) > 10 and policy_diag() is not None
                           and policy_diag()[2]["mode"] == "run", 120), (policy_diag(), len(lst.commands))
        cmds = np.stack(lst.commands[-10:])
        assert cmds.shape == (10, 7) and np.all(np.isfinite(cmds))
        assert _spin_until(ex, lambda: len(wrist_depth) > 0, 30)
        w = wrist_depth[-1]
        wd = np.frombuffer(bytes(w.data), np.float32)
        assert (w.width, w.height, w.encoding, w.header.frame_id) == (64, 64, "32FC1", "wrist_optical_frame")
        assert np.all(np.isfinite(wd)) and 0 < wd.min() < 0.5  # the fingers and the table, close to the wrist
        assert np.all(cmds >= lo - 1e-6) and np.all(cmds <= hi + 1e-6)
        small = Image(height=8, width=8, encoding="rgb8", step=24, data=bytes(8 * 8 * 3))
        end = time.monotonic() + 30
        while time.monotonic() < end and int(policy_diag()[2]["image_rejections"]) == 0:
            bad_img.publish(small)
            _spin_until(ex, lambda: False, 0.2)
        level, message, values, _ = policy_diag()
        assert int(values["image_rejections"]) > 0 and "8x8" in values["last_input_error"], values
        end = time.monotonic() + 60
        while time.monotonic() < end and "juggle" not in policy_diag()[2]["last_input_error"]:
            instr.publish(String(data="juggle the red cube"))
            _spin_until(ex, lambda: False, 0.5)
        assert "juggle" in policy_diag()[2]["last_input_error"], policy_diag()
        # the shipped pose policy runs with the object memory its checkpoint carries, and the same instruction
        # again starts a new episode (the memory forgets the last layout)
        assert int(policy_diag()[2]["object_memory"]) == shipped.object_memory > 0
        first = int(policy_diag()[2]["episodes"])
        assert first >= 1
        task = policy_diag()[2]["instruction"]
        instr.publish(String(data=task))
        assert _spin_until(ex, lambda: int(policy_diag()[2]["episodes"]) > first, 30), policy_diag()
    finally:
        output = _stop(proc)
    assert proc.returncode == 0, output[-3000:]
    assert "task instruction" in output
    ex.remove_node(lst)
    lst.destroy_node()
    ex.shutdown()


def test_ws_launch_lists_graphs_and_rejects_unknown_ones():
    from ws_cli.main import main

    assert main(["launch", "--list"]) == 0
    assert main(["launch", "go2_sim"]) == 2


@pytest.fixture
def controller():
    """mppi_controller on Hopper (the shipped MLPEnsemble, short timeouts) in its own process, as deployed."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ws_ros.nodes.mppi_controller", "--ros-args", "-p", "env:=hopper",
                             "-p", "dynamics:=default", "-p", "state_timeout_s:=0.3", "-p", "max_state_age_s:=0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    out = _stop(proc, 20)
    assert proc.returncode == 0, out


def test_controller_validates_states_holds_and_latches_estop(ros_context, controller):
    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    env = make_env("hopper")
    state, _ = env.reset(seed=0)
    io = RobotIO.from_model(env.model)
    q, qd, _ = io.split(state)
    lst = Listener(context=ros_context)
    pub = lst.create_publisher(JointState, "joint_states", sensor_qos())
    estop = lst.create_publisher(Bool, "estop", latched_qos())
    ex = SingleThreadedExecutor(context=ros_context)  # light: the controller runs in its own process
    ex.add_node(lst)
    def spin():
        try:
            ex.spin()
        except Exception:  # the executor is shut down under it at the end
            pass

    spinner = threading.Thread(target=spin, daemon=True)  # as in a node process: the executor has its own thread
    spinner.start()

    def publish(position):
        msg = JointState()
        msg.header.stamp = lst.get_clock().now().to_msg()
        msg.name, msg.position, msg.velocity = list(io.joint_names), list(position), list(qd)
        pub.publish(msg)

    def feed(position, seconds, rate_hz=200.0):
        """Publish ``position`` at ``rate_hz`` (a sensor's rate) for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            publish(position)
            time.sleep(1.0 / rate_hz)

    def mode():
        v = next((v for k, v in lst.diag.items() if "MPPI" in k), None)
        return None if v is None else (v[0], v[2]["mode"], {**v[2], "message": v[1]})

    def wait_mode(position, expected, timeout=30.0):
        """Publish ``position`` until a diagnostic reports ``expected`` mode (eventually, however loaded
        the machine), or the timeout; returns the last diagnostic."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            feed(position, 0.1)
            m = mode()
            if m is not None and m[1] == expected:
                return m
        return mode()

    # valid states: the controller runs and commands efforts within Hopper's [-1, 1]
    assert wait_mode(q, "run")[1] == "run", mode()
    assert lst.commands and all(np.all(np.abs(c) <= 1.0) for c in lst.commands)
    # NaN readings are rejected and counted; with no valid state the controller holds (zero effort) with ERROR
    bad = q.copy()
    bad[3] = math.nan
    level, m, values = wait_mode(bad, "hold")
    assert m == "hold" and level == 2 and int(values["rejected_non_finite"]) > 0, values
    assert all(np.all(np.isfinite(c)) for c in lst.commands)
    # valid states again: running
    assert wait_mode(q, "run")[1] == "run", mode()
    # the watchdog: no reading at all for longer than state_timeout_s -> hold with ERROR, then recovery
    end = time.monotonic() + 30
    while time.monotonic() < end and (mode() is None or mode()[1] != "hold"):
        time.sleep(0.1)
    level, m, values = mode()
    assert (level, m) == (2, "hold") and "no valid state" in values["message"], values
    assert wait_mode(q, "run")[1] == "run", mode()
    # malformed readings of every kind are rejected and counted by reason, never planned on
    def publish_raw(names, position, stamp_offset_s=0.0):
        msg = JointState()
        t = lst.get_clock().now().nanoseconds * 1e-9 + stamp_offset_s
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
        msg.name, msg.position, msg.velocity = list(names), [float(v) for v in position], [0.0] * len(position)
        pub.publish(msg)

    names = list(io.joint_names)
    cases = {"unknown_joint": (names[:-1] + ["elbow"], q), "length_mismatch": (names, q[:-1]),
             "missing_joint": (names[:-1], q[:-1]), "stale": (names, q, -5.0), "future_stamp": (names, q, 5.0)}
    for reason, args in cases.items():
        end = time.monotonic() + 30
        while time.monotonic() < end and int(mode()[2].get(f"rejected_{reason}", 0)) == 0:
            publish_raw(*args)
            time.sleep(0.05)
        assert int(mode()[2].get(f"rejected_{reason}", 0)) > 0, (reason, mode())
    # then the latched e-stop holds even with fresh valid states
    assert wait_mode(q, "run")[1] == "run", mode()
    estop.publish(Bool(data=True))
    level, m, _ = wait_mode(q, "estop")
    assert (level, m) == (2, "estop")
    n = len(lst.commands)
    end = time.monotonic() + 10
    while len(lst.commands) <= n + 5 and time.monotonic() < end:
        feed(q, 0.05)
    assert len(lst.commands) > n + 5
    np.testing.assert_allclose(lst.commands[-1], 0.0)  # the hold, whatever the plan says
    estop.publish(Bool(data=False))
    assert wait_mode(q, "run")[1] == "run", mode()
    ex.remove_node(lst)
    lst.destroy_node()
    ex.shutdown()
    spinner.join(timeout=5)


@pytest.mark.parametrize("robot, needs", [("go1", "unitree_legged_sdk"), ("piper", "piper_sdk")])
def test_hardware_bridges_fail_clearly_without_their_sdk(robot, needs):
    """No vendor SDK here: the bridge exits with status 2 and says what is missing."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN)}
    r = subprocess.run([sys.executable, "-c", f"from ws_ros.nodes.hardware_bridge import main_{robot}; main_{robot}()"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert needs in r.stderr and "Traceback" not in r.stderr


def test_sim_bridge_publishes_camera_images_and_rejects_bad_commands(ros_context):
    """Go1's tracking camera: RGB, metric depth and intrinsics; malformed commands are dropped, counted."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image
    from trajectory_msgs.msg import JointTrajectoryPoint

    from ws_ros.nodes.sim_bridge import SimBridge
    from ws_sim.go1 import JOINTS

    node = SimBridge(context=ros_context, parameter_overrides=[
        Parameter("env", value="go1"), Parameter("camera", value="tracking"), Parameter("camera_rate_hz", value=5.0),
        Parameter("camera_width", value=64), Parameter("camera_height", value=48)])
    lst = Listener(context=ros_context)
    got = {}
    for topic, cls in (("camera/color/image_raw", Image), ("camera/depth/image_raw", Image),
                       ("camera/color/camera_info", CameraInfo)):
        lst.create_subscription(cls, topic, lambda m, t=topic: got.__setitem__(t, m), sensor_qos())
    cmd = lst.create_publisher(JointTrajectory, "joint_command", command_qos())
    ex = MultiThreadedExecutor(context=ros_context)
    ex.add_node(node)
    ex.add_node(lst)
    try:
        assert _spin_until(ex, lambda: len(got) == 3, 30), sorted(got)
        rgb, depth, info = got["camera/color/image_raw"], got["camera/depth/image_raw"], got["camera/color/camera_info"]
        assert (rgb.width, rgb.height, rgb.encoding, len(rgb.data)) == (64, 48, "rgb8", 64 * 48 * 3)
        d = np.frombuffer(bytes(depth.data), dtype=np.float32)
        assert depth.encoding == "32FC1" and d.size == 64 * 48 and np.all(np.isfinite(d)) and d.min() > 0
        assert info.k[0] > 0 and info.k[2] == 32.0
        bad = JointTrajectory(joint_names=list(JOINTS)[:11], points=[JointTrajectoryPoint(positions=[0.0] * 11)])
        nan = JointTrajectory(joint_names=list(JOINTS), points=[JointTrajectoryPoint(positions=[float("nan")] * 12)])
        for k, m in enumerate((bad, nan)):  # keep-last-1 commands: one at a time
            cmd.publish(m)
            assert _spin_until(ex, lambda: node.commands_rejected == k + 1, 10), node.last_rejection
        assert np.all(np.isfinite(node.data.ctrl)) and node.commands_applied == 0
    finally:
        for n in (node, lst):
            ex.remove_node(n)
            n.destroy_node()
        ex.shutdown()


def test_state_estimator_makes_odom_from_the_hardware_like_sim_bridge(ros_context):
    """sim_bridge with hardware-like sensors publishes no odom, only a noisy imu and joint_states; state_estimator
    turns them into odom (with covariances) that agrees with the simulator's truth for a standing Go1, and drops
    non-finite readings, counting them."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Imu

    from ws_ros.nodes.sim_bridge import SimBridge
    from ws_ros.nodes.state_estimator import StateEstimatorNode

    bridge = SimBridge(context=ros_context, parameter_overrides=[
        Parameter("env", value="go1"), Parameter("sensors", value="hardware"), Parameter("publish_clock", value=True),
        Parameter("real_time_factor", value=0.5), Parameter("publish_rate_hz", value=200.0)])
    est = StateEstimatorNode(context=ros_context)
    lst = Listener(context=ros_context)
    odoms = []
    lst.create_subscription(Odometry, "odom", odoms.append, sensor_qos())
    imu_pub = lst.create_publisher(Imu, "imu", sensor_qos())
    ex = SingleThreadedExecutor(context=ros_context)
    for n in (bridge, est, lst):
        ex.add_node(n)
    try:
        assert _spin_until(ex, lambda: len(odoms) >= 100, 60), f"{len(odoms)} odom messages, {est.rejected} rejected"
        assert lst.count_publishers("odom") == 1  # the estimator's: the bridge keeps the truth to itself
        last = odoms[-1]
        with bridge._lock:
            true_z = float(bridge.data.qpos[2])
        assert last.pose.pose.position.z == pytest.approx(true_z, abs=0.02)
        v = last.twist.twist.linear
        assert math.hypot(v.x, v.y, v.z) < 0.1  # standing still
        cov = np.asarray(last.pose.covariance).reshape(6, 6)
        assert np.all(np.diag(cov) > 0) and np.allclose(cov, cov.T)
        before = est.rejected
        bad = Imu()
        bad.header.stamp = last.header.stamp
        bad.orientation.w, bad.angular_velocity.x = 1.0, float("nan")
        imu_pub.publish(bad)
        assert _spin_until(ex, lambda: est.rejected > before, 20)
        assert "non-finite" in est.last_rejection
    finally:
        for n in (bridge, est, lst):
            ex.remove_node(n)
            n.destroy_node()
        ex.shutdown()


def test_go1_walks_on_the_state_it_estimates_from_its_own_sensors():
    """The go1_sim_estimated graph in one process (sim_bridge with hardware-like sensors, state_estimator,
    mppi_controller, their parameter files) at a quarter of real time: the controller plans on the estimated
    odom only, and the Go1 walks 2 s of simulated time without falling while the estimate follows the truth."""
    from ws_ros.nodes.mppi_controller import MPPIControllerNode
    from ws_ros.nodes.sim_bridge import SimBridge
    from ws_ros.nodes.state_estimator import StateEstimatorNode

    with graph_context("go1_sim_estimated.yaml", {"sim_bridge": {"real_time_factor": 0.25}}, (DOMAIN + 1) % 230) as ctx:
        nodes = [SimBridge(context=ctx), StateEstimatorNode(context=ctx), MPPIControllerNode(context=ctx)]
        bridge, est = nodes[0], nodes[1]
        ex = SingleThreadedExecutor(context=ctx)
        for n in nodes:
            ex.add_node(n)
        heights, errors = [], []

        def walked():
            with bridge._lock:
                z, vx = float(bridge.data.qpos[2]), float(bridge.data.qvel[0])
            if est.started:
                heights.append(z)
                errors.append(abs(float(est.estimator.velocity[0]) - vx))
            return bridge.data.time >= 2.0

        try:
            assert _spin_until(ex, walked, 240), f"simulated {bridge.data.time:.2f} s"
            with bridge._lock:
                x = float(bridge.data.qpos[0])
            assert x > 0.8 and min(heights) > 0.15, (x, min(heights))
            assert np.sqrt(np.mean(np.square(errors))) < 0.2 and est.rejected == 0
        finally:
            for n in nodes:
                ex.remove_node(n)
                n.destroy_node()
            ex.shutdown()


def test_lockstep_pauses_the_simulation_for_each_fresh_plan():
    """The hopper_sim graph in one process at full real-time factor with lockstep forced on every tick
    (``max_plan_age_s`` 1 ms, below the 8 ms between readings, so no plan is ever that fresh): the
    controller pauses sim_bridge, plans from the newest state, unpauses it, over and over, and Hopper
    stays upright over the first 0.5 s whatever the speed of the machine (torso above 0.7 m, trunk within
    0.5 rad: not Gymnasium's healthy band of 0.2 rad, because a 90 Hz tick still finds the simulation up to
    a control step past its plan before it pauses it; 0.35 rad was seen once with the whole suite pinned to
    one core). Lockstep without the services or simulated time is refused at configure."""
    from rclpy.parameter import Parameter

    from ws_ros.nodes.mppi_controller import MPPIControllerNode
    from ws_ros.nodes.sim_bridge import SimBridge
    from ws_sim.robot_io import RobotIO

    with graph_context("hopper_sim.yaml", {"mppi_controller": {"max_plan_age_s": 0.001}}, (DOMAIN + 2) % 230) as ctx:
        bridge, ctl = SimBridge(context=ctx), MPPIControllerNode(context=ctx)
        assert bridge.rtf == 1.0 and ctl.max_plan_age_s == 0.001
        io = RobotIO.from_model(bridge.model)
        iz, iang = io.joint_names.index("rootz"), io.joint_names.index("rooty")
        ex = SingleThreadedExecutor(context=ctx)
        for n in (bridge, ctl):
            ex.add_node(n)
        worst = []

        def ran():
            with bridge._lock:
                z, ang, t = float(bridge.data.qpos[iz]), float(bridge.data.qpos[iang]), bridge.data.time
            worst.append((z, abs(ang)))
            return t >= 0.5

        try:
            assert _spin_until(ex, ran, 240), f"simulated {bridge.data.time:.2f} s, {ctl.lockstep_pauses} pauses"
            z, ang = np.array(worst).T
            assert z.min() > 0.7 and ang.max() < 0.5, (z.min(), ang.max())
            # every plan paused the simulation (the bridge served each pause the controller asked for, the
            # last one possibly still in flight), over and over; how many ticks 0.5 s holds depends on the
            # machine's load (45 at 90 Hz when idle, 20-21 seen with the whole suite on a slow machine)
            assert ctl.lockstep_pauses >= 10 and abs(ctl.lockstep_pauses - bridge.pauses) <= 1, \
                (ctl.lockstep_pauses, bridge.pauses)
        finally:
            for n in (bridge, ctl):
                ex.remove_node(n)
                n.destroy_node()
            ex.shutdown()
    refused = [  # simulated time but no pause service; a pause service but wall time
        [Parameter("use_sim_time", value=True), Parameter("unpause_service", value="unpause_physics")],
        [Parameter("unpause_service", value="unpause_physics"), Parameter("pause_service", value="pause_physics")]]
    for overrides in refused:
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=(DOMAIN + 2) % 230)
        try:
            with pytest.raises(RuntimeError, match="failed to configure"):
                MPPIControllerNode(context=ctx, parameter_overrides=[
                    Parameter("env", value="hopper"), Parameter("max_plan_age_s", value=0.02), *overrides])
        finally:
            rclpy.shutdown(context=ctx)
