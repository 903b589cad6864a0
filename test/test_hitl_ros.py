"""Human-in-the-loop over real rclpy and Fast DDS (issue 8): MCAP recording, recovery, conversion,
and a person's keyboard driving the simulated PiPER through ``ws launch piper_hitl_sim``.

Skipped without rclpy (``pip install -e '.[ros]'``). Each test has its own ``ROS_DOMAIN_ID``.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: pip install -e '.[ros]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ws_ros.common import command_qos, latched_qos, sensor_qos  # noqa: E402

_BASE = 10 + (os.getpid() * 7) % 140
_NEXT = iter(range(1000))
WS = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())"]
JOINTS = [f"joint{i}" for i in range(1, 9)]


@pytest.fixture
def ctx():
    """A context on a domain of its own (no latched message of an earlier test can reach it)."""
    c = rclpy.Context()
    c.ws_domain = _BASE + next(_NEXT) % 60
    rclpy.init(context=c, domain_id=c.ws_domain)
    yield c
    rclpy.shutdown(context=c)


class Session(Node):
    """Publishes what a PiPER session carries (images, joint states, commands, flags) and listens."""

    def __init__(self, **kw):
        super().__init__("hitl_test_session", **kw)
        self.js = self.create_publisher(JointState, "joint_states", sensor_qos())
        self.rgb = self.create_publisher(Image, "camera/color/image_raw", sensor_qos())
        self.depth = self.create_publisher(Image, "camera/depth/image_raw", sensor_qos())
        self.wrist_rgb = self.create_publisher(Image, "wrist_camera/color/image_raw", sensor_qos())
        self.wrist_depth = self.create_publisher(Image, "wrist_camera/depth/image_raw", sensor_qos())
        self.wrist = False  # also publish the wrist camera
        self.cmd = self.create_publisher(JointTrajectory, "joint_command", command_qos())
        self.episode = self.create_publisher(String, "episode", 10)
        self.flag = self.create_publisher(Bool, "teleop/intervention", latched_qos())
        self.instr = self.create_publisher(String, "instruction", latched_qos())
        self.diag = {}
        self.commands = []
        self.flags = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10)

    def _diag(self, m):
        for s in m.status:
            self.diag[s.name] = (s.level[0] if isinstance(s.level, bytes) else s.level, s.message,
                                 {kv.key: kv.value for kv in s.values})

    def step(self, k: int):
        self.js.publish(JointState(name=JOINTS, position=[0.01 * k] * 8, velocity=[0.0] * 8))
        self.rgb.publish(Image(height=8, width=8, encoding="rgb8", step=24, data=bytes([k % 256] * 192)))
        self.depth.publish(Image(height=8, width=8, encoding="32FC1", step=32,
                                 data=np.full((8, 8), 0.5, np.float32).tobytes()))
        if self.wrist:  # the wrist camera sees something else than the scene camera: tell them apart
            self.wrist_rgb.publish(Image(height=8, width=8, encoding="rgb8", step=24, data=bytes([(k + 100) % 256] * 192)))
            self.wrist_depth.publish(Image(height=8, width=8, encoding="32FC1", step=32,
                                           data=np.full((8, 8), 0.1, np.float32).tobytes()))
        self.cmd.publish(JointTrajectory(joint_names=JOINTS[:7],
                                         points=[JointTrajectoryPoint(positions=[0.01 * k] * 7)]))


def _spin(ex, seconds, until=lambda: False):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        ex.spin_once(timeout_sec=0.01)
    return until()


def _session(ex, s, steps=(0, 40), takeover_at=20, outcome="success"):
    s.instr.publish(String(data="pick up the red cube and place it on the blue target"))
    s.episode.publish(String(data="start"))
    _spin(ex, 0.2)
    for k in range(*steps):
        if k == takeover_at:
            s.flag.publish(Bool(data=True))
        s.step(k)
        _spin(ex, 0.03)
    s.episode.publish(String(data=outcome))
    _spin(ex, 0.3)


def _record(ctx, path, wrist=False, **params):
    """One 40-step session (the human takes over at step 20) recorded by a CorrectionRecorder node with
    ``output=path`` and ``params``, stopped cleanly (which writes the summary); returns the path."""
    from ws_ros.nodes.correction_recorder import CorrectionRecorder

    overrides = [Parameter("output", value=str(path))] + [Parameter(k, value=v) for k, v in params.items()]
    rec = CorrectionRecorder(context=ctx, parameter_overrides=overrides)
    s = Session(context=ctx)
    s.wrist = wrist
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(rec)
    ex.add_node(s)
    # discovery: until the recorder subscribes to what the session publishes
    pubs = [s.js, s.rgb, s.cmd, s.episode] + ([s.wrist_rgb, s.wrist_depth] if wrist else [])
    assert _spin(ex, 30.0, lambda: all(p.get_subscription_count() > 0 for p in pubs))
    _session(ex, s)
    ex.remove_node(rec)
    rec.destroy_node()
    s.destroy_node()
    return path


def _trains_on(episodes, **cfg):
    """A two-step training of a tiny policy on ``episodes`` gives finite losses."""
    from ws_policy.data import DemoDataset
    from ws_policy.model import PolicyConfig, default_vocabulary
    from ws_policy.train import train_policy

    cfg = PolicyConfig(image_size=8, future_size=8, patch=4, chunk=4, d_model=32, layers=1,
                       vocab=tuple(default_vocabulary()), **cfg)
    _, hist = train_policy(cfg, DemoDataset(episodes, chunk=4), steps=2, batch_size=4)
    return np.all(np.isfinite(hist["loss"]))


def test_recording_round_trips_through_mcap_ros2_reader_conversion_and_training(ctx, tmp_path):
    """Written by the recorder node, complete in the ROS 2 profile, read by ``mcap_ros2.reader``,
    converted with who acted at each step, and trained on."""
    from mcap.reader import make_reader
    from mcap_ros2.reader import read_ros2_messages

    from ws_policy.data import read_demos, write_demos
    from ws_ros.mcap_io import recording_to_episodes

    path = _record(ctx, tmp_path / "session.mcap", workspace="narrow")
    topics = {}
    for m in read_ros2_messages(str(path)):
        topics.setdefault(m.channel.topic, []).append(m.ros_msg)
    assert {"/joint_states", "/camera/color/image_raw", "/camera/depth/image_raw", "/joint_command", "/episode",
            "/instruction", "/teleop/intervention"} <= set(topics)
    assert [m.data for m in topics["/episode"]] == ["start", "success"]
    assert topics["/joint_states"][5].position[0] == pytest.approx(0.05)
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and summary.statistics.message_count > 150
    for ch in summary.channels.values():
        assert ch.message_encoding == "cdr" and "reliability" in ch.metadata["offered_qos_profiles"]
    assert all(sc.encoding == "ros2msg" for sc in summary.schemas.values())

    episodes, attrs = recording_to_episodes(path)
    assert len(episodes) == 1 and attrs["workspace"] == "narrow"
    ep = episodes[0]
    assert ep.success and ep.instruction == "pick up the red cube and place it on the blue target"
    assert len(ep.actions) >= 30 and ep.rgb.shape[1:] == (8, 8, 3)
    assert ep.actor[:10].sum() == 0 and ep.actor[-10:].sum() == 10  # the human took over at step 20
    out = write_demos(episodes, attrs, tmp_path / "corrections.hdf5")
    back, _ = read_demos(out)
    assert np.array_equal(back[0].actor, ep.actor)
    assert _trains_on(back)
    assert ep.wrist_rgb is None and "wrist" not in attrs  # no wrist camera recorded: a scene-camera dataset


def test_a_recording_with_the_wrist_camera_converts_to_two_camera_demonstrations(ctx, tmp_path):
    """The recorder records the wrist camera's streams by default; conversion pairs each step with the
    wrist frames of its instant (not the scene camera's) and marks the file as two-camera data, which
    a two-camera keypoint policy trains on."""
    from ws_policy.data import read_demos, write_demos
    from ws_ros.mcap_io import recording_to_episodes

    path = _record(ctx, tmp_path / "session.mcap", wrist=True)
    episodes, attrs = recording_to_episodes(path)
    ep = episodes[0]
    assert attrs["wrist"] is True and 1.0 < attrs["wrist_fovy"] < 180.0
    assert ep.wrist_rgb.shape == ep.rgb.shape and ep.wrist_depth.shape == ep.depth.shape
    # each frame's wrist image is the one published with its scene image (k + 100 against k)
    assert np.array_equal(ep.wrist_rgb[:, 0, 0, 0].astype(int), (ep.rgb[:, 0, 0, 0].astype(int) + 100) % 256)
    assert np.allclose(ep.wrist_depth, 0.1, atol=1e-3) and np.allclose(ep.depth, 0.5, atol=1e-3)
    back, battrs = read_demos(write_demos(episodes, attrs, tmp_path / "corrections.hdf5"))
    assert battrs["wrist"] and np.array_equal(back[0].wrist_rgb, ep.wrist_rgb)
    assert _trains_on(back, encoder="keypoints", wrist=True)


def test_a_killed_recorder_leaves_a_file_readable_to_its_last_chunk(ctx, tmp_path):
    from mcap_ros2.reader import read_ros2_messages

    from ws_ros.mcap_io import read_messages, recover

    path = tmp_path / "killed.mcap"
    env = {**os.environ, "ROS_DOMAIN_ID": str(ctx.ws_domain)}
    proc = subprocess.Popen([sys.executable, "-c", "from ws_ros.nodes.correction_recorder import main; main()",
                             "--ros-args", "-p", f"output:={path}", "-p", "flush_period_s:=0.2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s = Session(context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(s)
    try:
        _spin(ex, 3.0)
        _session(ex, s, steps=(0, 30))
        _spin(ex, 1.0)  # past a flush
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    got = [(t, m) for t, _, m in read_messages(path)]
    assert sum(t == "/joint_states" for t, _ in got) >= 20
    assert [m.data for t, m in got if t == "/episode"] == ["start", "success"]
    with pytest.raises(Exception):  # no summary or footer: a seeking reader gives up ...
        list(read_ros2_messages(str(path)))
    n = recover(path, tmp_path / "recovered.mcap")  # ... until the file is made complete
    assert n == len(got)
    assert sum(1 for _ in read_ros2_messages(str(tmp_path / "recovered.mcap"))) == n


@pytest.mark.parametrize("output, words", [("/dev/full", "disk is full"), ("/proc/no/such/dir/x.mcap", "cannot")])
def test_recorder_reports_disk_full_and_unwritable_paths_on_diagnostics(ctx, output, words):
    from ws_ros.nodes.correction_recorder import CorrectionRecorder

    rec = CorrectionRecorder(context=ctx, parameter_overrides=[Parameter("output", value=output)])
    s = Session(context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(rec)
    ex.add_node(s)
    name = "correction_recorder: correction recorder"
    try:
        _spin(ex, 1.0)
        end = time.monotonic() + 20
        while time.monotonic() < end and not (name in s.diag and int(s.diag[name][2]["dropped"]) > 0):
            s.step(0)  # messages keep coming; the recorder must count them as dropped, not write them
            _spin(ex, 0.1)
        level, message, values = s.diag[name]
        assert level == 2 and words in message, message
        assert int(values["dropped"]) > 0 and int(values["messages"]) == 0
    finally:
        ex.remove_node(rec)
        rec.destroy_node()


def test_teleop_takes_over_from_the_command_in_force_holds_on_estop_and_hands_back(ctx):
    from sensor_msgs.msg import Joy

    from ws_policy.teleop import JoyMapping
    from ws_ros.nodes.teleop import TeleopNode
    from ws_sim.piper import READY_JOINTS

    tele = TeleopNode(context=ctx)
    s = Session(context=ctx)
    joy = s.create_publisher(Joy, "teleop/joy", 10)
    estop = s.create_publisher(Bool, "estop", latched_qos())
    s.create_subscription(JointTrajectory, "joint_command", lambda m: s.commands.append(np.array(m.points[0].positions)),
                          command_qos())
    s.create_subscription(Bool, "teleop/intervention", lambda m: s.flags.append(m.data), latched_qos())
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(tele)
    ex.add_node(s)
    m = JoyMapping()

    def pad(**kw):
        axes, buttons = [0.0] * 8, [0] * 11
        for k, v in kw.items():
            (axes if k.startswith("axis") else buttons)[getattr(m, k)] = v
        joy.publish(Joy(axes=axes, buttons=buttons))
        _spin(ex, 0.1)

    try:
        policy_cmd = np.r_[READY_JOINTS + 0.03, 0.02]
        assert _spin(ex, 10, lambda: s.flags[-1:] == [False])  # latched: a late joiner knows the policy acts
        for _ in range(5):
            s.cmd.publish(JointTrajectory(joint_names=JOINTS[:7], points=[JointTrajectoryPoint(positions=list(policy_cmd))]))
            _spin(ex, 0.05)
        n0 = len(s.commands)
        pad(button_intervene=1)
        pad()
        assert _spin(ex, 5, lambda: s.flags[-1] is True and len(s.commands) > n0 + 3)
        assert np.allclose(s.commands[n0], policy_cmd)  # the human's first command is the one in force
        for _ in range(10):
            pad(axis_z=1.0)
        moving = s.commands[-1]
        assert np.abs(moving - policy_cmd).max() > 0.01
        estop.publish(Bool(data=True))
        _spin(ex, 0.5)
        n1 = len(s.commands)
        for _ in range(5):
            pad(axis_z=1.0)
        held = np.stack(s.commands[n1:])
        assert len(held) > 3 and np.allclose(held, held[0])  # estop: the teleop holds, whatever the stick says
        estop.publish(Bool(data=False))
        pad(button_intervene=1)
        pad()
        assert _spin(ex, 5, lambda: s.flags[-1] is False)
        n2 = len(s.commands)
        _spin(ex, 1.0)
        assert len(s.commands) - n2 <= 1  # handed back: the teleop falls silent
    finally:
        ex.remove_node(tele)
        tele.destroy_node()


def test_a_person_drives_the_sim_arm_from_the_keyboard_takes_over_and_hands_back(ctx, tmp_path):
    """``ws launch piper_hitl_sim`` (sim, a barely trained policy, teleop, recorder) and ``ws teleop``
    reading keys from a terminal (a pty): space takes over, r raises the tool, space hands back.
    The commanded positions never jump at either switch, the tool rises while the human drives,
    and the session's recording converts with the human's steps marked.

    Every step waits for what it needs to have happened, seen over DDS (the teleop hearing the
    keyboard, the take-over acknowledged by the executor, the arm holding the human's first
    command, the tool risen, the policy back in control, the recorder closing the episode), never
    for a number of seconds: a loaded machine only makes it slower. The timeouts bound a failure."""
    import collections

    import mujoco
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

    from ws_policy.data import DemoDataset, collect_demos
    from ws_policy.model import PolicyConfig, default_vocabulary
    from ws_policy.train import save_policy, train_policy
    from ws_ros.mcap_io import recording_to_episodes
    from ws_sim.piper import load_piper

    eps, _ = collect_demos("pick_place", 1, size=32)
    cfg = PolicyConfig(image_size=32, future_size=16, chunk=4, d_model=32, layers=1, vocab=tuple(default_vocabulary()))
    model, _ = train_policy(cfg, DemoDataset(eps, chunk=4), steps=2, batch_size=4)
    ckpt = save_policy(model, tmp_path / "policy.pt")
    rec_dir = tmp_path / "rec"
    env = {**os.environ, "ROS_DOMAIN_ID": str(ctx.ws_domain), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "osmesa"}
    graph = subprocess.Popen(WS + ["launch", "piper_hitl_sim", "-p", f"checkpoint:={ckpt}", "-p", "camera_width:=32",
                                   "-p", "camera_height:=32", "-p", "real_time_factor:=0.5",
                                   "-p", f"output:={rec_dir}"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    master, slave = pty.openpty()
    keys = subprocess.Popen(WS + ["teleop"], env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    os.close(slave)

    class Watch(Node):
        """Records every joint_command as (sent by the teleop, flag heard, positions), the arm's joints
        and the diagnostics. The teleop's commands are told from the executor's by their publisher's
        sequence numbers: the teleop sends nothing before the take-over, so its numbers run 1, 2, 3, ...
        from there, while the executor's (>10 by then) carry on from where they were; ``teleop_from``
        (set as space is typed) starts the count, ``None`` stops it."""

        def __init__(self, **kw):
            super().__init__("hitl_watch", **kw)
            self.cmds, self.q, self.human, self.diag = [], None, False, {}
            self.teleop_from, self._teleop_next = None, 1
            self.js = collections.deque(maxlen=1000)  # (commands heard before it, sim time, arm joints)
            # every command, however slowly this process spins (the nodes' own QoS keeps only the newest)
            every = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                               history=QoSHistoryPolicy.KEEP_LAST, durability=QoSDurabilityPolicy.VOLATILE)
            self.create_subscription(JointTrajectory, "joint_command", self._cmd, every)
            self.create_subscription(Bool, "teleop/intervention", lambda m: setattr(self, "human", m.data),
                                     latched_qos())
            self.create_subscription(JointState, "joint_states", self._js, sensor_qos())
            self.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10)

        def _cmd(self, m, info):
            seq = info.get("publication_sequence_number")  # None where the RMW gives none: the flag decides
            teleop = self.teleop_from is not None and (seq == self._teleop_next if seq is not None else self.human)
            self._teleop_next += teleop
            self.cmds.append((teleop, self.human, np.array(m.points[0].positions)))

        def teleop(self, start=0, stop=None):
            """Indices of the teleop's commands among ``cmds[start:stop]``."""
            return [i for i in range(start, len(self.cmds) if stop is None else stop) if self.cmds[i][0]]

        def _js(self, m):
            idx = {n: i for i, n in enumerate(m.name)}
            self.q = np.array([m.position[idx[n]] for n in JOINTS[:6]])
            self.js.append((len(self.cmds), m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, self.q))

        def _diag(self, m):
            for st in m.status:
                self.diag[st.name] = {kv.key: kv.value for kv in st.values}

        def holding_still(self, after: int, span: float = 0.25, tol: float = 2e-3) -> bool:
            """The arm has stood still (every joint within ``tol`` rad) for ``span`` s of simulated time,
            in joint states heard after the first ``after`` commands."""
            recent = [(t, q) for n, t, q in self.js if n > after]
            if not recent or recent[-1][0] - recent[0][0] < span:
                return False
            window = np.stack([q for t, q in recent if t >= recent[-1][0] - span])
            return float(np.ptp(window, axis=0).max()) < tol

    w = Watch(context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(w)
    robot, data = load_piper()

    def tool_z(q=None):
        """The tool's height (m) at the measured arm joints, or at the arm joints ``q``."""
        data.qpos[:6] = w.q if q is None else q[:6]
        mujoco.mj_kinematics(robot, data)
        return data.site("tcp").xpos[2]

    def policy_mode():
        d = w.diag.get("policy_executor: policy executor")
        return d and d.get("mode")

    def press(key, until=None, timeout=0.0):
        """Type ``key`` once or, with ``until``, again every 0.05 s (a held key) until ``until()`` is true."""
        end = time.monotonic() + timeout
        while True:
            os.write(master, key.encode())
            _spin(ex, 0.05, until or (lambda: False))
            if until is None or until() or time.monotonic() >= end:
                return until is None or until()

    z0 = z1 = None
    try:
        assert _spin(ex, 150, lambda: policy_mode() == "run" and len(w.cmds) > 10 and w.q is not None), w.diag
        # ws teleop is up and the teleop node hears its Joy messages: a key typed now is not lost
        assert _spin(ex, 120, lambda: w.diag.get("teleop: teleop", {}).get("joy_age_s", "never") != "never"), w.diag
        press("t")
        w.teleop_from = n_space = len(w.cmds)
        press(" ")
        # the take-over acknowledged: the teleop says the human acts and the executor has stopped
        assert _spin(ex, 60, lambda: w.human and policy_mode() == "human" and w.teleop(w.teleop_from)), w.diag
        n_take = w.teleop(w.teleop_from)[0]  # the human's first command
        n_ack = len(w.cmds)
        # the human's first command applied: the teleop's commands keep coming and the arm holds still
        assert _spin(ex, 60, lambda: w.teleop(n_ack) and w.holding_still(after=n_ack)), (len(w.cmds) - n_ack,
                                                                                         list(w.js)[-3:])
        z0 = tool_z()
        n_r = len(w.cmds)
        # r held (typed every 0.05 s) until the tool has risen 5 cm
        assert press("r", until=lambda: tool_z() > z0 + 0.05, timeout=180), \
            (f"the tool did not rise: z {z0:.4f} -> {tool_z():.4f} m measured; commanded "
             f"{tool_z(w.cmds[n_r - 1][2]):.4f} -> {tool_z(w.cmds[-1][2]):.4f} m (the teleop's last command "
             f"{np.round(w.cmds[-1][2], 4).tolist()}, {len(w.cmds) - n_r} since r)")
        z1 = tool_z()
        w.teleop_from = None  # the executor's numbers might meet the teleop's from here on
        press(" ")
        # handed back: the teleop says the policy acts, the executor runs again, and commands it
        assert _spin(ex, 60, lambda: not w.human and policy_mode() == "run"
                     and not all(h for _, h, _ in w.cmds[n_r:])), w.diag
        n_back = next(i for i in range(n_r, len(w.cmds)) if not w.cmds[i][1])
        assert _spin(ex, 60, lambda: len(w.cmds) > n_back + 10), len(w.cmds) - n_back
        press("y")
        # the recorder closed the episode (it counts a success or failure when it writes it)
        assert _spin(ex, 60, lambda: int(w.diag.get("correction_recorder: correction recorder", {})
                                         .get("episodes", 0)) >= 1), w.diag
    finally:
        keys.send_signal(signal.SIGINT)
        keys_out = keys.communicate(timeout=30)[0]
        os.close(master)
        graph.send_signal(signal.SIGINT)
        try:
            out = graph.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            graph.kill()
            out = graph.communicate()[0]
        ex.remove_node(w)
        w.destroy_node()
    assert graph.returncode == 0, out[-3000:]
    assert "space" in keys_out  # the key help was shown
    assert z1 > z0 + 0.05, (z0, z1)  # the tool rose while the human held r
    cmds = np.stack([c for _, _, c in w.cmds])
    held = cmds[n_take]  # the human's first command
    human = w.teleop(n_take, n_r)  # the human's commands before r (numbered 1, 2, 3, ...: none missing)
    late = [i for i in range(n_take, n_r) if i not in human]  # the executor's, sent before it heard the flag
    assert human[-1] == n_r - 1, (n_take, n_r, human[-5:])
    assert np.all(np.isclose(cmds[human], held)), (cmds[human], late)  # the human holds until r
    before = cmds[max(n_space - 5, 0):n_take]
    assert np.abs(before - held).max(axis=1).min() < 1e-6, (before, held)  # = a command the policy sent
    back = np.abs(np.diff(cmds[n_back - 1:n_back + 4], axis=0))
    assert len(back) == 4 and back[:, :6].max() <= 0.02 + 1e-6, back  # hand-back: slew-limited, no jump
    files = list(rec_dir.glob("hitl_*.mcap"))
    assert len(files) == 1
    episodes, attrs = recording_to_episodes(files[0])
    assert len(episodes) == 1 and episodes[0].success
    assert 0 < episodes[0].actor.sum() < len(episodes[0].actor)
    # the wrist camera was recorded beside the scene camera: corrections for two-camera policies
    assert attrs["wrist"] and episodes[0].wrist_rgb.shape == episodes[0].rgb.shape
    assert not np.array_equal(episodes[0].wrist_rgb, episodes[0].rgb)


def test_ws_hitl_convert_names_what_a_recording_lacks(tmp_path, capsys):
    from rclpy.serialization import serialize_message

    from ws_cli.main import main
    from ws_ros.mcap_io import RecordingWriter

    path = tmp_path / "no_events.mcap"
    w = RecordingWriter(path)
    w.add_topic("/joint_states", "sensor_msgs/msg/JointState", [])
    w.write("/joint_states", serialize_message(JointState(name=JOINTS, position=[0.0] * 8)), 1)
    w.close()
    with pytest.raises(OSError, match="never overwritten"):
        RecordingWriter(path)
    assert main(["hitl", "convert", str(path), "--out", str(tmp_path / "x.hdf5")]) == 2
    assert "no messages on joint_command" in capsys.readouterr().err
    (tmp_path / "text.mcap").write_text("not a recording")
    assert main(["hitl", "convert", str(tmp_path / "text.mcap"), "--out", str(tmp_path / "x.hdf5")]) == 2
    assert "not an MCAP file" in capsys.readouterr().err
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.parametrize("kind", ["action_only", "pose"])
def test_a_wrist_camera_policy_holds_until_both_cameras_publish_then_runs(ctx, tmp_path, kind):
    """A policy that reads the wrist camera too (an image policy, or the pose policy: object perception, then a
    state policy over its estimate): policy_executor subscribes to ``wrist_camera/`` as well, holds with "no fresh
    images" while only the scene camera publishes, and runs once both do."""
    from ws_policy.model import PolicyConfig, build_policy, default_vocabulary
    from ws_policy.perception import ObjectPerception, PerceptionConfig, PosePolicy
    from ws_policy.state_policy import StatePolicy, StatePolicyConfig
    from ws_policy.train import save_policy
    from ws_ros.nodes.policy_executor import PolicyExecutorNode

    if kind == "pose":
        net = PosePolicy(ObjectPerception(PerceptionConfig(keypoints=4, trunk_width=8, trunk_blocks=1, d=16, hidden=32,
                                                           vocab=tuple(default_vocabulary()))),
                         StatePolicy(StatePolicyConfig(hidden=32, layers=1, euler_steps=2, inputs="targets")))
    else:
        net = build_policy(PolicyConfig(mode="action_only", encoder="keypoints", wrist=True, crop=56, d_model=32,
                                        heads=2, layers=1, keypoints=4, trunk_width=8, trunk_blocks=1, euler_steps=2,
                                        vocab=tuple(default_vocabulary())))
    path = save_policy(net, tmp_path / "wrist.pt")
    node = PolicyExecutorNode(context=ctx, parameter_overrides=[Parameter("checkpoint", value=str(path))])
    s = Session(context=ctx)
    wrist_rgb = s.create_publisher(Image, "wrist_camera/color/image_raw", sensor_qos())
    wrist_depth = s.create_publisher(Image, "wrist_camera/depth/image_raw", sensor_qos())
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(s)
    rgb = Image(height=64, width=64, encoding="rgb8", step=192, data=bytes([90] * 64 * 64 * 3))
    depth = Image(height=64, width=64, encoding="32FC1", step=256, data=np.full((64, 64), 0.6, np.float32).tobytes())
    s.instr.publish(String(data="pick up the red cube and place it on the blue target"))

    def publish(wrist: bool):
        js = JointState(name=JOINTS, position=[0.0] * 8, velocity=[0.0] * 8)
        js.header.stamp = s.get_clock().now().to_msg()
        s.js.publish(js)
        s.rgb.publish(rgb)
        s.depth.publish(depth)
        if wrist:
            wrist_rgb.publish(rgb)
            wrist_depth.publish(depth)

    def scene_only(ready=True):
        publish(False)
        return ready and node._rgb is not None and node._instruction and node.supervisor.state(node._now()) is not None

    try:
        assert node.wrist
        assert _spin(ex, 30, scene_only), node._last  # a valid state, the scene images and the instruction
        _spin(ex, 0.5, lambda: scene_only(ready=False))
        assert node._step == 0 and node._wrist_rgb is None  # no observation, so no inference, without the wrist camera
        assert node._last.mode.value == "hold"

        def running():
            publish(True)
            return node._step > 0 and node._last.mode.value == "run"

        assert _spin(ex, 60, running), (node._last, node._step)
    finally:
        ex.remove_node(node)
        ex.remove_node(s)
        node.destroy_node()
        s.destroy_node()
        ex.shutdown()


def test_a_policy_that_reads_object_poses_is_refused_at_configure(ctx, tmp_path):
    """A privileged policy (``ws policy train --model state``, or ``--privileged``) needs the simulator's object
    poses, which no robot gives: policy_executor fails its configure transition instead of running it."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from ws_policy.state_policy import StatePolicy, StatePolicyConfig
    from ws_policy.train import save_policy
    from ws_ros.nodes.policy_executor import PolicyExecutorNode

    path = save_policy(StatePolicy(StatePolicyConfig(hidden=16, layers=1)), tmp_path / "state.pt")
    node = PolicyExecutorNode(context=ctx, parameter_overrides=[Parameter("checkpoint", value=str(path)),
                                                                Parameter("autostart", value=False)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert getattr(node, "runner", None) is None
    finally:
        node.destroy_node()
