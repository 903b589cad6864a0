"""``mppi_controller``'s faults driven through the real path: the node in this process over real rclpy and
Fast DDS, real MuJoCo, real world models and ONNX Runtime; the test publishes the robot's readings and
(where time matters) ``/clock`` and listens to ``joint_command`` and ``/diagnostics`` over DDS.

Where an assertion is about what a model saw, the model's ``predict`` is wrapped to record its inputs;
nothing it computes is replaced. Waits are on events (a message, a plan made); the timeouts only bound
a failure.
"""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: pip install -e '.[ros]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ws_ros.common import command_qos, s_to_stamp, sensor_qos, stamp_to_s  # noqa: E402

DOMAIN = 40 + (os.getpid() + 71) % 150
TH, H = 4, 5  # the toy model's history and horizon


def wait_for(cond, timeout=60.0, what=""):
    """Poll ``cond`` until it holds (an event: a message, a plan); the timeout only bounds a failure."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what or cond}")


class Robot(Node):
    """The test's side of the graph: publishes readings and /clock, records commands and diagnostics."""

    def __init__(self, io, **kwargs):
        super().__init__("test_robot", **kwargs)
        self.io = io
        self.pub_js = self.create_publisher(JointState, "joint_states", sensor_qos())
        self.pub_clock = self.create_publisher(Clock, "/clock", 10)
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []  # (stamp, point times, points)
        self.diag: list[tuple[int, str, dict]] = []
        self._lock = threading.Lock()
        self.create_subscription(JointTrajectory, "joint_command", self._on_cmd, command_qos())
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_cmd(self, m):
        times = np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in m.points])
        rows = np.array([p.positions if len(p.positions) else p.effort for p in m.points])
        with self._lock:
            self.commands.append((stamp_to_s(m.header.stamp), times, rows))

    def _on_diag(self, m):
        for s in m.status:
            if "MPPI" in s.name:
                level = s.level[0] if isinstance(s.level, bytes) else s.level
                with self._lock:
                    self.diag.append((int(level), s.message, {kv.key: kv.value for kv in s.values}))

    def publish_state(self, state, stamp_s, qd_override=None):
        q, qd, _ = self.io.split(state)
        msg = JointState()
        msg.header.stamp = s_to_stamp(stamp_s)
        msg.name = list(self.io.joint_names)
        msg.position = [float(v) for v in q]
        msg.velocity = [float(v) for v in (qd if qd_override is None else qd_override)]
        self.pub_js.publish(msg)

    def action_in_force(self, tau):
        """What a trajectory-following bridge executes at ``tau``: the newest command stamped at or before
        it, its newest point whose time has come."""
        with self._lock:
            for stamp, times, rows in reversed(self.commands):
                if stamp <= tau + 1e-9:
                    j = int(np.searchsorted(times, tau - stamp + 1e-9, side="right")) - 1
                    return rows[max(j, 0)]
        return None

    def last_diag(self):
        with self._lock:
            return self.diag[-1] if self.diag else None


class Sensor:
    """A 200 Hz sensor in wall time on its own thread: publishes ``reading(i)`` -> ``(state, qd or None)``."""

    def __init__(self, robot, reading):
        self.robot, self.reading = robot, reading
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            state, qd = self.reading(i)
            self.robot.publish_state(state, self.robot.get_clock().now().nanoseconds * 1e-9, qd_override=qd)
            i += 1
            self._stop.wait(0.005)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join()


@pytest.fixture
def graph():
    """A context, an executor spinning in a thread, and a function to add nodes; torn down after."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    ex = MultiThreadedExecutor(num_threads=4, context=ctx)
    nodes = []

    def add(node):
        nodes.append(node)
        ex.add_node(node)
        return node

    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    yield ctx, add
    for n in reversed(nodes):
        n.destroy_node()
    ex.shutdown(timeout_sec=2.0)
    rclpy.shutdown(context=ctx)
    th.join(timeout=5.0)


def _controller(ctx, **params):
    from ws_ros.nodes.mppi_controller import MPPIControllerNode

    return MPPIControllerNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory, small_datasets):
    """A toy-size WestWorld trained for Hopper (a few steps: the test is about what it is fed, not how well
    it predicts), its ONNX export, and an MPPI config at its horizon."""
    from ws_distill.export import export_onnx
    from ws_mppi.config import ControllerConfig, save_config
    from ws_mppi.mppi import MPPIConfig
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import PretrainConfig, pretrain, windows_from_splits
    from ws_worldmodel.westworld import WestWorldConfig

    d = tmp_path_factory.mktemp("toy")
    train, val = small_datasets
    tw, vw = windows_from_splits(train, [val], make_env("hopper").model, TH + H, 2)
    cfg = WestWorldConfig(d_model=16, n_heads=2, n_blocks=2, expert_hidden=16, bins=16, d_state=4, expand=1)
    pretrain([tw], [vw], cfg, PretrainConfig(history=TH, horizon=H, steps=5, eval_every=5, batch_size=8, stride=2,
                                             warmup=1, lr=3e-3), d / "toy.pt", progress=False)
    export_onnx(load_checkpoint(d / "toy.pt"), "hopper", H, d / "toy.onnx")
    save_config(ControllerConfig(mppi=MPPIConfig(horizon=H, samples=16, temperature=0.1, noise_sigma=0.5)),
                d / "mppi.yaml")
    return {"westworld": d / "toy.pt", "onnx": d / "toy.onnx", "config": d / "mppi.yaml"}


@pytest.mark.parametrize("kind", ["westworld", "onnx"])
def test_sequence_models_in_the_node_see_the_executed_history(graph, toy_models, kind):
    """The test is the simulator, in lockstep on ``/clock``: at each 8 ms control step it publishes Hopper's
    state, lets the controller plan, and steps real MuJoCo with the command in force (as ``sim_bridge``
    executes it). Every plan's model input must be the states it was sent and the commands it sent back."""
    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = make_env("hopper")
    io = RobotIO.from_model(env.model)
    robot = add(Robot(io, context=ctx))
    # use_sim_time: the node's clock is the test's /clock; 250 Hz ticks: one at every 8 ms step
    node = add(_controller(ctx, env="hopper", dynamics=str(toy_models[kind]), config=str(toy_models["config"]),
                           use_sim_time=True, rate_hz=250.0, seed=0))
    model = node.planner.mppi.dynamics.model
    seen = []  # (states (Th, nx), actions (Th - 1, nu)) of sample 0 of every predict call
    real_predict = model.predict

    def recording_predict(system, states, actions):
        seen.append((np.array(states[0]), np.array(actions[0, :TH - 1])))
        return real_predict(system, states, actions)

    model.predict = recording_predict
    dt = env.dt
    state, _ = env.reset(seed=3)
    states, applied = [], []
    t0 = 100.0  # simulated time of step 0
    for k in range(14):
        tau = t0 + k * dt
        robot.pub_clock.publish(Clock(clock=s_to_stamp(tau)))
        wait_for(lambda: abs(node.get_clock().now().nanoseconds * 1e-9 - tau) < 1e-6, what=f"the node's clock at {tau}")
        robot.publish_state(state, tau)
        states.append(state)
        wait_for(lambda: node.planner.last is not None and node.planner.last.t0 == k, what=f"the plan of step {k}")
        wait_for(lambda: any(abs(c[0] - tau) < 1e-6 for c in list(robot.commands)), what=f"a command at step {k}")
        a = robot.action_in_force(tau)
        applied.append(a)
        state, _, term, _, _ = env.step(a)
        assert not term
    assert len(seen) >= 14
    # the last plan (step 13): the model saw the states of steps 10..13 and the commands in force at 10..12
    hist_s, hist_a = seen[-1]
    np.testing.assert_array_equal(hist_s[:-1], np.stack(states[-TH:-1]))  # the reported history, bit for bit
    np.testing.assert_allclose(hist_s[-1], states[-1], rtol=0, atol=1e-6)  # the state planned from (MPPI's float32)
    np.testing.assert_allclose(hist_a, np.stack(applied[-TH:-1]), rtol=0, atol=1e-6)  # ONNX: float32
    # and it is not the current state repeated (what the node fed before it called observe)
    assert not np.allclose(hist_s[0], hist_s[-1])


def test_a_diverged_model_holds_and_reports_until_it_plans_again(graph):
    """Every rollout's cost non-finite (the model diverged): the controller holds (Hopper: zero effort) with
    ERROR on /diagnostics instead of executing the stale plan, and runs again once planning succeeds."""
    import torch

    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = make_env("hopper")
    io = RobotIO.from_model(env.model)
    robot = add(Robot(io, context=ctx))
    node = add(_controller(ctx, env="hopper", dynamics="oracle", seed=0))
    state, _ = env.reset(seed=0)
    with Sensor(robot, lambda i: (state, None)):
        wait_for(lambda: (robot.last_diag() or (0, "", {}))[2].get("mode") == "run", what="running")
        dyn = node.planner.mppi.dynamics
        real_rollout = dyn.rollout
        dyn.rollout = lambda s, a: torch.full((a.shape[0], a.shape[1], env.nq + env.nv), -math.inf)
        n0 = len(robot.commands)
        wait_for(lambda: (robot.last_diag() or (0, "", {}))[1].startswith("planner fault"), what="the planner fault")
        level, message, values = robot.last_diag()
        assert level == 2 and values["mode"] == "hold" and "non-finite cost" in message, (level, message)
        n1 = len(robot.commands)
        wait_for(lambda: len(robot.commands) > n1 + 5, what="commands while holding")
        assert n1 > n0
        assert all(np.array_equal(rows[0], np.zeros(3)) for _, _, rows in robot.commands[n1:n1 + 5])
        dyn.rollout = real_rollout
        wait_for(lambda: (robot.last_diag() or (0, "", {}))[2].get("mode") == "run", what="running again")


def test_rejected_readings_among_valid_ones_warn_with_the_top_reason(graph):
    """One reading in eight has a NaN velocity while the others are valid: the controller keeps running on
    the valid ones, and /diagnostics says WARN with the share and the top reason (today: OK)."""
    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = make_env("hopper")
    io = RobotIO.from_model(env.model)
    robot = add(Robot(io, context=ctx))
    # The age limit is wide: on a loaded 2-core machine the planner delays callbacks past the default 0.1 s,
    # and those readings are (rightly) rejected as stale; this test is about the non-finite ones.
    add(_controller(ctx, env="hopper", dynamics="oracle", seed=0, max_state_age_s=10.0))
    state, _ = env.reset(seed=0)
    nan_qd = io.split(state)[1]
    nan_qd[4] = math.nan
    with Sensor(robot, lambda i: (state, nan_qd if i % 8 == 0 else None)):  # one reading in eight bad
        def warned():
            d = robot.last_diag()
            return d is not None and d[2].get("mode") == "run" and "readings in the last second rejected" in d[1]

        wait_for(warned, what="a WARN about rejected readings")
        level, message, values = robot.last_diag()
        assert level == 1 and "mostly non_finite" in message, message
        assert int(values["rejected_last_s"]) > 0.05 * int(values["readings_last_s"])


def test_use_sim_time_without_clock_is_an_error_not_inactive(graph):
    """``use_sim_time`` and nobody publishes /clock: ERROR "no /clock for N s" on /diagnostics (today: WARN
    "inactive" while the log said "active: planning and commanding")."""
    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = make_env("hopper")
    robot = add(Robot(RobotIO.from_model(env.model), context=ctx))
    add(_controller(ctx, env="hopper", dynamics="oracle", use_sim_time=True))
    wait_for(lambda: robot.last_diag() is not None and "no /clock for" in robot.last_diag()[1], what="no /clock")
    level, message, values = robot.last_diag()
    assert level == 2 and "inactive" not in message and values["time_base"] == "sim (/clock)", message
    assert not robot.commands  # no clock, no tick


def test_a_go1_controller_that_never_had_a_valid_state_says_it_is_not_commanding(graph):
    """A position-commanded robot has no safe position to hold before its first valid reading: it sends
    nothing, and /diagnostics says so, also while only invalid readings arrive."""
    from ws_sim.go1_env import Go1WalkEnv
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = Go1WalkEnv()
    io = RobotIO.from_model(env.model)
    robot = add(Robot(io, context=ctx))
    add(_controller(ctx, env="go1", dynamics="oracle"))
    wait_for(lambda: robot.last_diag() is not None and "no valid state yet" in robot.last_diag()[1], what="diag")
    state, _ = env.reset(seed=0)
    n = len(robot.diag)
    # joint readings without odometry: rejected (missing_base); still not commanding
    for _ in range(400):
        robot.publish_state(state, robot.get_clock().now().nanoseconds * 1e-9)
        time.sleep(0.005)
        if len(robot.diag) > n + 1:
            break
    level, message, values = robot.last_diag()
    assert level == 2 and message.startswith("no valid state yet: not commanding"), message
    # rejected (missing_base; under load some also arrive stale), counted by reason
    assert "last rejection" in message and sum(int(v) for k, v in values.items() if k.startswith("rejected_")
                                              and k != "rejected_last_s") > 0, (message, values)
    assert not robot.commands


def test_runtime_parameters_are_validated_and_applied_between_cycles(graph):
    """Over DDS with a parameter client: a bad temperature is refused with its reason, a read-only parameter
    is refused, new samples and temperature reach the planner (the dynamics sees K new samples)."""
    from rclpy.parameter_client import AsyncParameterClient

    from ws_sim.envs import make_env
    from ws_sim.robot_io import RobotIO

    ctx, add = graph
    env = make_env("hopper")
    io = RobotIO.from_model(env.model)
    robot = add(Robot(io, context=ctx))
    node = add(_controller(ctx, env="hopper", dynamics="oracle", seed=0))
    batches = []
    dyn = node.planner.mppi.dynamics
    real_rollout = dyn.rollout

    def recording_rollout(s, a):
        batches.append(a.shape[0])
        return real_rollout(s, a)

    dyn.rollout = recording_rollout
    client = AsyncParameterClient(robot, "mppi_controller")
    assert client.wait_for_services(timeout_sec=30.0)

    def set_params(params):
        fut = client.set_parameters([Parameter(k, value=v) for k, v in params.items()])
        wait_for(fut.done, what="set_parameters")
        return fut.result().results

    r = set_params({"temperature": -0.5})
    assert not r[0].successful and "temperature must be finite and > 0" in r[0].reason
    r = set_params({"samples": 1})
    assert not r[0].successful and "samples" in r[0].reason
    r = set_params({"env": "walker2d"})
    assert not r[0].successful and "read-only" in r[0].reason
    r = set_params({"goal": [1.0, 2.0]})
    assert not r[0].successful and "hopper has no goal" in r[0].reason
    r = set_params({"samples": 24, "temperature": 0.3})
    assert all(x.successful for x in r)
    state, _ = env.reset(seed=0)
    with Sensor(robot, lambda i: (state, None)):
        wait_for(lambda: 24 in batches, what="a planning cycle with K = 24")
    assert node.planner.mppi.config.temperature == 0.3
    # applied before the first cycle, never half-way through one (batches of 1: the expert's own rollout)
    assert set(batches) - {1} == {24}
