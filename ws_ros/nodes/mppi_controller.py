"""``mppi_controller``: the real-time MPPI controller as a ROS 2 lifecycle node.

Wraps :class:`ws_mppi.realtime.RealtimeController` (a ``rate_hz`` command tick and a
free-running planner thread) around MPPI with the dynamics named by ``dynamics`` (``oracle``,
``default`` for the shipped checkpoint, or a checkpoint path), behind
:class:`ws_sim.safety.SafetySupervisor`:

* ``joint_states`` (and ``odom`` for a floating base) are validated before they can become
  the planner's state; rejected readings are counted by reason;
* no valid state for ``state_timeout_s`` -> safe hold and ERROR on ``/diagnostics``; running
  again once valid states return;
* ``estop`` (``std_msgs/Bool``, transient-local): ``true`` latches the e-stop (hold),
  ``false`` is the explicit release;
* every command is clamped to the MJCF's joint and torque limits; a non-finite plan is never
  published; a planning cycle in which every rollout's cost is non-finite (a diverged learned
  model) holds and reports ERROR until a plan succeeds again;
* more than 5 % of the readings of the last second rejected -> WARN naming the top reason,
  even while valid readings also arrive;
* a position-commanded robot (the Go1) that has never had a valid state sends nothing and
  says so ("no valid state yet: not commanding").

History: a history-conditioned model (WestWorld, TrajWorld, TDM, an ``.onnx`` export) is fed
the executed transitions as ``ws mppi run``'s ``run_episode`` feeds them: before planning from
the state at control step ``t`` (steps counted from the first state planned from, on the
readings' stamps), each step ``k < t`` not yet reported is given to the model's ``observe`` as
the newest valid reading at that step's start and the command in force then (the newest
published ``joint_command`` point at or before it). A step with no reading (a gap longer than
``state_timeout_s``) restarts the history.

Parameters that are safe to change at runtime are dynamic (``ros2 param set``), validated in
a callback and applied between planning cycles: ``temperature`` (MPPI lambda, > 0),
``samples`` (K, 2..65536), ``goal`` (Go1: ``[x, y]`` m, PiPER: ``[x, y, z]`` m; as the ``goal``
topic) and, for the Go1, ``desired_speed`` (m/s, 0..2). The others are read-only.

The planner replans as fast as it can, but only from a state newer than the one it last
planned from (a sensor at 125 Hz gets at most 125 plans per second; the spare CPU goes to
the tick and the rest of the robot). Each cycle warm-starts from the last plan shifted by the
control steps elapsed since it was made (:meth:`ws_mppi.mppi.MPPI.warm_start`), whatever the
replanning rate.

Commands go out on ``joint_command`` (``trajectory_msgs/JointTrajectory``; ``positions`` for
position-servo robots, ``effort`` for motor-driven ones) at ``rate_hz``: point 0 is the
command for now (``time_from_start`` 0, stamped now), followed while running by the rest of
the current plan at its step times, each clamped like the command. A receiver that only
reads point 0 gets the 90 Hz command; ``sim_bridge`` executes the points at their times, so
that MPPI's step boundaries (8 ms on Hopper) are kept between 90 Hz ticks. A later point of a
position-commanded plan is clamped against the state MPPI predicts for its start (the
torque bound depends on the joint's position and velocity then); without a finite
prediction only point 0 goes out.
``/diagnostics`` (1 Hz) carries tick period percentiles, missed ticks, replanning rate,
planning latency, rejected readings and the safety mode. With ``unpause_service`` set, the
controller calls that ``std_srvs/Empty`` service once its first plan exists (a paused
``sim_bridge`` starts then). Lockstep (``max_plan_age_s`` > 0, simulated time only, with
``pause_service`` and ``unpause_service``): whenever a tick finds the plan in force older
than ``max_plan_age_s`` of simulated time, the controller pauses the simulation, and unpauses
it as soon as a plan made from a state at most that old exists, so that a machine too slow
for the real-time factor slows the simulation rather than degrading the control (the sim
graphs of the motor-driven robots and the Go1 set it; a real robot cannot be paused, so the
robot graphs leave it 0). ``goal`` (``PoseStamped``): for the Go1 it replaces the
waypoint list with one planar goal; for the PiPER it moves the tool's goal point (solved
once by inverse kinematics; an unreachable goal is logged and ignored).

Time: with ``use_sim_time`` (the sim graphs set it; ``sim_bridge`` publishes ``/clock``) the
command loop ticks at ``rate_hz`` in simulated time and plans are shifted by their age in
simulated time, so a simulation running slower than real time (a busy machine) is
controlled as it would be at full speed with a planner that much faster. State stamps,
timeouts and command stamps all use the node's clock; ``/diagnostics`` is published every
wall-clock second either way (a stalled simulation is still reported), and with
``use_sim_time`` but no ``/clock`` message for a second or more it reports ERROR "no /clock
for N s" (the tick cannot run without a clock).

Lifecycle: ``configure`` loads the model and builds the planner; ``activate`` starts the
tick and the planner (the log then says what it waits for: a valid state, ``/clock``; it logs
again when the first plan is made); ``deactivate`` stops them and publishes one hold command. With
``autostart`` (default) the node configures and activates itself; otherwise drive it with
``ros2 lifecycle set /mppi_controller configure|activate|deactivate``.
"""

from __future__ import annotations

import collections
import math
import threading
import time

import numpy as np
import rclpy.time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Empty
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ws_mppi.realtime import plan_step_index
from ws_ros.common import (command_qos, diagnostic_status, latched_qos, odom_arrays_to_free_base, run_node,
                           sensor_qos, stamp_to_s)
from ws_sim.safety import Decision, JointLimits, Mode, SafetySupervisor, StateValidator

__all__ = ["MPPIControllerNode", "main"]


class _Done:
    """A request future that is already done (before the first lockstep request)."""

    @staticmethod
    def done() -> bool:
        return True


def _descriptor(text: str, read_only: bool = True, **kwargs) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only, **kwargs)


#: share of the last second's readings above which rejected readings give WARN
REJECTED_WARN_SHARE = 0.05
#: MPPI samples a runtime change may ask for
SAMPLES_RANGE = (2, 65536)
#: Go1 desired forward speeds a runtime change may ask for, m/s
DESIRED_SPEED_RANGE = (0.0, 2.0)


class MPPIControllerNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("mppi_controller", **kwargs)
        p = self.declare_parameter
        p("env", "go1", _descriptor("environment whose model and cost MPPI uses: go1, hopper, walker2d or piper"))
        p("dynamics", "default", _descriptor("oracle, default (the shipped checkpoint) or a checkpoint path"))
        p("config", "", _descriptor("MPPI/cost YAML (default: the environment's, config/mppi_<env>.yaml)"))
        p("rate_hz", 90.0, _descriptor("command rate, Hz (seed 003 App. G: 90)"))
        p("state_timeout_s", 0.1, _descriptor("no valid state for this long -> safe hold and ERROR"))
        p("max_state_age_s", 0.1, _descriptor("readings older than this are rejected as stale"))
        p("joint_range_margin_rad", 0.1, _descriptor(
            "a reading whose joint lies further than this outside the joint's range is rejected; MJCF soft limits "
            "(Gymnasium's Hopper and Walker2d) are overshot on hard landings: their sim graphs set more"))
        p("threads", 1, _descriptor("torch / oracle threads of the planner"))
        p("seed", 0, _descriptor("MPPI noise seed"))
        p("autostart", True, _descriptor("configure and activate on start"))
        p("unpause_service", "", _descriptor("std_srvs/Empty service to call once the first plan exists "
                                             "(sim graphs: the paused sim_bridge's unpause_physics); empty: none"))
        p("pause_service", "", _descriptor("std_srvs/Empty service that pauses the simulation (sim graphs: "
                                           "sim_bridge's pause_physics), for max_plan_age_s; empty: none"))
        p("max_plan_age_s", 0.0, _descriptor(
            "lockstep, simulated time only: when the plan in force is older than this (s since the state it was "
            "made from), call pause_service, and unpause_service once a plan that fresh exists, so that a slow "
            "machine slows the simulation rather than the control; 0: off (a real robot cannot be paused)"))
        from rclpy.parameter import Parameter

        p("goal", Parameter.Type.DOUBLE_ARRAY, _descriptor(
            "dynamic: the goal, m: Go1 [x, y] (replaces the waypoints), PiPER [x, y, z] (the tool's goal point)",
            read_only=False, type=ParameterType.PARAMETER_DOUBLE_ARRAY))
        self._rt = None
        self._active = False
        self._param_cb = None
        self._pending: dict = {}  # validated runtime parameter changes, applied between planning cycles
        self._lock = threading.Lock()
        self._base = None
        self._base_stamp = None
        self._last = None  # last Decision
        self._subs, self._pubs, self._timers = [], [], []
        self._unpause = None  # the first-plan unpause, called once
        self._unpause_client = self._pause_client = None
        self.max_plan_age_s = 0.0
        self._lockstep_paused = False  # this node paused the simulation and has not unpaused it yet
        self.lockstep_pauses = 0
        self._rejected_at_pause = 0  # readings rejected before the last lockstep pause
        self._lockstep_future = _Done()  # the last pause or unpause request
        self._planning_stamp = 0.0  # stamp of the state the planner is planning from
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("mppi_controller failed to configure (see the log above)")
            self.trigger_activate()

    # --- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        import torch

        from ws_mppi.config import default_config, load_config
        from ws_mppi.report import resolve_dynamics
        from ws_mppi.runner import make_controller
        from ws_sim.envs import make_env
        from ws_sim.robot_io import RobotIO

        g = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            threads = int(g("threads"))
            if float(g("joint_range_margin_rad")) < 0:
                raise ValueError(f"joint_range_margin_rad must be >= 0, got {g('joint_range_margin_rad')}")
            torch.set_num_threads(threads)
            self.env = make_env(g("env"))
            self.env.reset(seed=int(g("seed")))
            cfg = load_config(g("config")) if g("config") else default_config(self.env.name)
            self.cfg = cfg
            self.planner = make_controller(self.env, resolve_dynamics(self.env.name, g("dynamics")), cfg,
                                           seed=int(g("seed")), nthread=threads)
            if hasattr(self.planner.mppi.dynamics, "physics_state_fn"):
                self.planner.mppi.dynamics.physics_state_fn = None  # plan from the received state
            self.io = RobotIO.from_model(self.env.model)
            limits = JointLimits.from_model(self.env.model)
            every = JointLimits.from_model(self.env.model, self.io.joint_names, require_actuator=False)
            self.supervisor = SafetySupervisor(
                limits, state_timeout_s=float(g("state_timeout_s")),
                validator=StateValidator(every, range_margin=float(g("joint_range_margin_rad")),
                                         max_age_s=float(g("max_state_age_s"))), base_dim=self.io.base_dim)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.command_names = list(limits.names)
        self.command_kind = limits.command
        self.rate_hz = float(g("rate_hz"))
        try:
            self._declare_dynamic(cfg)
        except ValueError as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self._pub_cmd = self.create_lifecycle_publisher(JointTrajectory, "joint_command", command_qos())
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subs = [self.create_subscription(JointState, "joint_states", self._on_joint_states, sensor_qos()),
                      self.create_subscription(Bool, "estop", self._on_estop, latched_qos())]
        if self.io.floating_base:
            self._subs.append(self.create_subscription(Odometry, "odom", self._on_odom, sensor_qos()))
        if self.env.name in ("go1", "piper"):
            self._subs.append(self.create_subscription(PoseStamped, "goal", self._on_goal, 10))
        self._timers = [self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))]
        self.sim_time = bool(g("use_sim_time"))
        self._configured_wall = time.monotonic()
        self._clock_msgs, self._clock_wall = 0, None
        if self.sim_time:
            self._subs.append(self.create_subscription(ClockMsg, "/clock", self._on_clock, 10))
        service, pause = g("unpause_service"), g("pause_service")
        self.max_plan_age_s = float(g("max_plan_age_s"))
        problem = ("max_plan_age_s must be >= 0, got %g" % self.max_plan_age_s if self.max_plan_age_s < 0 else
                   "max_plan_age_s > 0 (lockstep) needs use_sim_time: true" if self.max_plan_age_s and not self.sim_time
                   else "max_plan_age_s > 0 (lockstep) needs pause_service and unpause_service"
                   if self.max_plan_age_s and not (service and pause) else "")
        if problem:
            self.get_logger().error(f"configure failed: {problem}")
            return TransitionCallbackReturn.FAILURE
        self._unpause_client = self.create_client(Empty, service) if service else None
        self._unpause = self._unpause_client
        self._pause_client = self.create_client(Empty, pause) if pause else None
        self.get_logger().info(f"configured: {self.env.name}, dynamics {self.planner.name}, MPPI H={cfg.mppi.horizon} "
                               f"K={cfg.mppi.samples} lambda={cfg.mppi.temperature}, {self.rate_hz} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ws_mppi.realtime import RealtimeController

        self._loop_clock = self._now if self.sim_time else time.perf_counter
        self._planned_update = -1
        self.planner.reset(int(self.get_parameter("seed").value))
        self._reset_history()
        self._plan_fault = ""
        self._first_plan_logged = False
        self._rt = RealtimeController(self._plan, self._get_state, self._send, horizon=self.cfg.mppi.horizon,
                                      action_dim=len(self.command_names), plan_dt=self.env.dt, rate_hz=self.rate_hz,
                                      hold_action=np.zeros(len(self.command_names)), clock=self._loop_clock)
        result = super().on_activate(state)
        self._rt.start()
        self._active = True
        waits = ["a valid joint_states reading" + (" and odom" if self.io.floating_base else "")]
        if self.sim_time:
            waits.append("/clock (use_sim_time)")
        self.get_logger().info(f"active: waiting for {' and '.join(waits)}; commanding at {self.rate_hz:g} Hz "
                               "once a plan exists (logged when the first plan is made)")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_loop()
        hold = self.supervisor.hold_command()
        if hold is not None:
            self._publish_command(hold)
        self.get_logger().info("inactive: sent one hold command")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_loop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self) -> None:
        if self._rt is not None:
            self._rt.stop()
            self._rt = None

    def _release(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        for t in self._timers:
            self.destroy_timer(t)
        self._subs, self._timers = [], []
        if getattr(self, "planner", None) is not None:
            self.planner.close()
            self.planner = None

    def destroy_node(self):
        self._stop_loop()
        if getattr(self, "planner", None) is not None:
            self.planner.close()
        return super().destroy_node()

    # --- runtime parameters ----------------------------------------------------------------------
    def _declare_dynamic(self, cfg) -> None:
        """Declare the runtime-changeable parameters with the loaded config's values as defaults
        (a launch override wins) and validate every later change in a callback."""
        from rclpy.parameter import Parameter

        dyn = [("temperature", float(cfg.mppi.temperature), "dynamic: MPPI temperature lambda, cost units, > 0"),
               ("samples", int(cfg.mppi.samples), f"dynamic: MPPI samples K, {SAMPLES_RANGE[0]}..{SAMPLES_RANGE[1]}")]
        cost = getattr(getattr(self.planner, "mppi", None), "cost", None)
        if self.env.name == "go1" and hasattr(cost, "v_des"):
            dyn.append(("desired_speed", float(cost.v_des),
                        f"dynamic: desired forward speed, m/s, {DESIRED_SPEED_RANGE[0]}..{DESIRED_SPEED_RANGE[1]}"))
        for name, default, text in dyn:
            if not self.has_parameter(name):
                self.declare_parameter(name, default, _descriptor(text, read_only=False))
        if self._param_cb is None:
            self._param_cb = self.add_on_set_parameters_callback(self._on_set_parameters)
        initial = [self.get_parameter(n) for n, _, _ in dyn]  # launch overrides apply from the first plan
        goal = self.get_parameter_or("goal", Parameter("goal", Parameter.Type.NOT_SET))
        if goal.type_ != Parameter.Type.NOT_SET and goal.value is not None and len(goal.value):
            initial.append(goal)
        result = self._on_set_parameters(initial, log=False)
        if not result.successful:
            raise ValueError(f"invalid parameter: {result.reason}")

    def _on_set_parameters(self, params, log: bool = True) -> SetParametersResult:
        """Validate runtime changes; a valid set is applied between planning cycles, an invalid
        one is refused whole with the reason (``ros2 param set`` prints it)."""
        changes = {}
        for prm in params:
            name, v = prm.name, prm.value
            if name == "temperature":
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                    return SetParametersResult(successful=False, reason=f"temperature must be finite and > 0, got {v}")
                changes[name] = float(v)
            elif name == "samples":
                if not (isinstance(v, int) and SAMPLES_RANGE[0] <= v <= SAMPLES_RANGE[1]):
                    return SetParametersResult(successful=False,
                                               reason=f"samples must be an integer in {list(SAMPLES_RANGE)}, got {v}")
                changes[name] = int(v)
            elif name == "desired_speed":
                if not (isinstance(v, (int, float)) and DESIRED_SPEED_RANGE[0] <= v <= DESIRED_SPEED_RANGE[1]):
                    return SetParametersResult(successful=False, reason=f"desired_speed must be in "
                                               f"{list(DESIRED_SPEED_RANGE)} m/s, got {v}")
                changes[name] = float(v)
            elif name == "goal":
                if getattr(self, "env", None) is None:
                    return SetParametersResult(successful=False, reason="goal: configure the node first")
                try:
                    changes[name] = self._check_goal(v)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=f"goal: {e}")
        with self._lock:
            self._pending.update(changes)
        for name, v in changes.items() if log else ():
            self.get_logger().info(f"parameter {name} = {v if name != 'goal' else np.round(v, 3).tolist()} "
                                   "(applied from the next planning cycle)")
        return SetParametersResult(successful=True)

    def _check_goal(self, value) -> np.ndarray:
        """A goal parameter/topic value -> the array to apply. Raises ValueError with the reason."""
        p = np.asarray([] if value is None else list(value), dtype=np.float64)
        if not np.all(np.isfinite(p)):
            raise ValueError(f"non-finite position {p.tolist()}")
        if self.env.name == "go1":
            if p.shape not in ((2,), (3,)):
                raise ValueError(f"the Go1 takes [x, y] (m), got {p.tolist()}")
            return p[:2]
        if self.env.name == "piper":
            if p.shape != (3,):
                raise ValueError(f"the PiPER takes [x, y, z] (m), got {p.tolist()}")
            return p
        raise ValueError(f"{self.env.name} has no goal")

    def _apply_pending(self) -> None:
        """Apply validated runtime changes (planner thread, between cycles)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        mppi = getattr(self.planner, "mppi", None)
        for name, v in pending.items():
            if name == "temperature" and mppi is not None:
                mppi.config.temperature = v
            elif name == "samples" and mppi is not None:
                mppi.config.samples = v
            elif name == "desired_speed" and mppi is not None:
                mppi.cost.v_des = v
            elif name == "goal":
                self._set_goal(v)

    def _set_goal(self, p: np.ndarray) -> bool:
        if self.env.name == "go1":
            self.env.waypoints = np.asarray(p, dtype=np.float64)[None, :2]
            self.env.goal_index = 0
            return True
        from ws_sim.piper import IKError

        try:
            self.env.set_goal(p)  # inverse kinematics once; the planner's cost reads the joint goal
        except IKError as e:
            self.get_logger().warn(f"ignored goal {np.round(p, 3).tolist()}: {e}")
            return False
        self.get_logger().info(f"new goal {np.round(p, 3).tolist()} m")
        return True

    # --- inputs -------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_clock(self, msg) -> None:
        self._clock_msgs += 1
        self._clock_wall = time.monotonic()

    def _on_odom(self, msg: Odometry) -> None:
        pose, tw = msg.pose.pose, msg.twist.twist
        try:
            qpos, qvel = odom_arrays_to_free_base(
                [pose.position.x, pose.position.y, pose.position.z],
                [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w],
                [tw.linear.x, tw.linear.y, tw.linear.z], [tw.angular.x, tw.angular.y, tw.angular.z])
        except (ValueError, FloatingPointError, ZeroDivisionError):
            qpos, qvel = np.full(7, np.nan), np.full(6, np.nan)  # rejected (and counted) with the next reading
        with self._lock:
            self._base = np.concatenate([qpos, qvel])
            self._base_stamp = stamp_to_s(msg.header.stamp)

    def _on_joint_states(self, msg: JointState) -> None:
        stamp = stamp_to_s(msg.header.stamp)
        with self._lock:
            base, base_stamp = self._base, self._base_stamp
            ok = self.supervisor.update_state(list(msg.name), msg.position, msg.velocity, stamp, self._now(),
                                              base, base_stamp)
            if ok and self._active:
                q, qd, b = self.supervisor._q, self.supervisor._qd, self.supervisor._base
                self._state_log.append((stamp, self.io.join(q, qd, b)))

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data:
                self.supervisor.engage_estop("estop topic")
                self.get_logger().warn("e-stop engaged: holding until estop=false is published")
            elif self.supervisor.estopped:
                self.supervisor.release_estop()
                self.get_logger().info("e-stop released")

    def _on_goal(self, msg: PoseStamped) -> None:
        try:
            p = self._check_goal([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])
        except ValueError as e:
            self.get_logger().warn(f"ignored a goal: {e}")
            return
        with self._lock:
            self._pending["goal"] = p

    # --- the history of a sequence model ----------------------------------------------------------
    def _reset_history(self) -> None:
        """A new episode: no origin, no reported steps, empty logs."""
        with self._lock:
            self._origin = None  # stamp of the first state planned from (control step 0)
            self._fed = -1  # the last control step reported to the dynamics
            n = 4 * self.cfg.mppi.horizon + 64
            self._state_log = collections.deque(maxlen=n)  # (stamp, [qpos, qvel]) of valid readings
            self._sent_log = collections.deque(maxlen=n)  # (stamp, point times (m,), points (m, nu)) sent
            self._plans_log = collections.deque(maxlen=4)  # (nominal (H, nu), predicted states (H, nx))

    def _step_of(self, stamp: float) -> int:
        return int(math.floor((stamp - self._origin) / self.env.dt + 1e-6))

    def _action_at(self, tau: float) -> np.ndarray | None:
        """The command in force at time ``tau``: the newest published point at or before it."""
        for stamp, times, rows in reversed(self._sent_log):
            if stamp <= tau + 1e-9:
                j = int(np.searchsorted(times, tau - stamp + 1e-9, side="right")) - 1
                return rows[max(j, 0)]
        return None

    def _state_at(self, tau: float) -> np.ndarray | None:
        """The newest valid reading at or before ``tau``, if no older than ``state_timeout_s``."""
        for stamp, state in reversed(self._state_log):
            if stamp <= tau + 1e-9:
                return state if tau - stamp <= self.supervisor.state_timeout_s else None
        return None

    def _feed_history(self, t: int) -> None:
        """Report control steps ``fed + 1 .. t - 1`` to a history-conditioned model (planner thread)."""
        dyn = getattr(getattr(self.planner, "mppi", None), "dynamics", None)
        if not hasattr(dyn, "observe"):
            return
        with self._lock:
            steps = []
            for k in range(max(self._fed + 1, t - getattr(dyn, "history", t) - 1), t):
                tau = self._origin + k * self.env.dt
                steps.append((k, self._state_at(tau), self._action_at(tau)))
            self._fed = max(self._fed, t - 1)
        for k, state, action in steps:
            if state is None or action is None:  # a gap: the history restarts after it
                dyn.reset()
                continue
            dyn.observe(state, action)

    # --- the real-time loop's callbacks ---------------------------------------------------------
    def _get_state(self):
        if self._lockstep_paused and self._rejected_total() > self._rejected_at_pause:
            # a reading came while paused and was rejected: no plan can be made from it, and the
            # supervisor's state timeout needs time to pass; the simulation runs on
            self._lockstep_resume(force=True)
        with self._lock:
            if self.supervisor.valid_updates == self._planned_update:
                return None  # nothing new since the last plan: replanning on the same state wastes the CPU
            st = self.supervisor.state(self._now())
            self._planned_update = self.supervisor.valid_updates
            stamp = self.supervisor.state_stamp_s
        if st is None:
            return None
        q, qd, base = st
        state = self.io.join(q, qd, base)
        if self._origin is None:
            self._origin = stamp
        t = self._step_of(stamp)
        if t < self._fed + 1:  # a reading older than a step already reported: nothing to plan
            return None
        if self.env.name == "go1":
            self.env.update_goal(state[:2])
        self._planning_stamp = stamp
        # in sim time the reading's stamp is on the loop's clock: the plan starts at the state it was made from
        return (state, t) + ((stamp,) if self.sim_time else ())

    def _plan(self, state, t):
        self._apply_pending()
        self._feed_history(t)
        try:
            self.planner.plan(state, t)
        except FloatingPointError as e:  # every rollout non-finite: hold (the tick reads the fault) and report
            self._plan_fault = str(e)
            raise
        self._plan_fault = ""
        last = self.planner.last
        with self._lock:
            self._plans_log.append((np.asarray(last.nominal, dtype=np.float64), last.predicted_states))
        if not self._first_plan_logged:
            self._first_plan_logged = True
            self.get_logger().info(f"first plan made (step {t}): planning and commanding")
        if self._unpause is not None:  # once: the simulation may start now that a plan exists
            if self._unpause.service_is_ready():
                self._unpause.call_async(Empty.Request())
                self.get_logger().info(f"first plan made: called {self._unpause.srv_name}")
                self._unpause = None
            else:
                self.get_logger().warn(f"waiting for the service {self._unpause.srv_name}", throttle_duration_sec=2.0)
        if self.max_plan_age_s > 0:
            self._lockstep_resume()
        return last.nominal

    # --- lockstep (simulated time): a slow machine slows the simulation, not the control ----------
    def _lockstep_pause(self, now: float) -> None:
        """Tick thread: the plan in force is older than ``max_plan_age_s``: pause the simulation."""
        rt = self._rt
        if rt is None or not rt.has_plan or self._unpause is not None:  # before the first plan's unpause
            return
        with self._lock:
            if self._lockstep_paused or now - rt.plan_made <= self.max_plan_age_s:
                return
            if not self._pause_client.service_is_ready() or not self._lockstep_future.done():
                return  # (the last unpause not yet done: the two requests could arrive swapped)
            self._lockstep_paused = True
            self.lockstep_pauses += 1
            self._rejected_at_pause = self._rejected_total()
            self._lockstep_future = self._pause_client.call_async(Empty.Request())
        if self.lockstep_pauses == 1:
            self.get_logger().info(f"lockstep: plan {1e3 * (now - rt.plan_made):.1f} ms old (max "
                                   f"{1e3 * self.max_plan_age_s:.1f} ms of simulated time): paused the simulation "
                                   "until the planner catches up (counted in /diagnostics as lockstep_pauses)")

    def _rejected_total(self) -> int:
        return sum(self.supervisor.validator.rejected.values())

    def _lockstep_resume(self, force: bool = False) -> None:
        """Planner thread, after a plan: unpause the simulation this node paused once the plan is
        fresh: made from a state at most ``max_plan_age_s`` old, or from the newest state there is
        (a paused simulation sends no newer one, whatever its publishing period). ``force``: at
        once (a reading rejected while paused: there is nothing to plan from, and only running
        time lets the supervisor's state timeout hold the robot)."""
        with self._lock:
            fresh = force or (self._now() - self._planning_stamp <= self.max_plan_age_s
                              or self._planning_stamp >= self.supervisor.state_stamp_s)
            # the pause done first: an unpause that overtook it would leave the simulation paused for good
            if not self._lockstep_paused or not fresh or not self._lockstep_future.done():
                return
            self._lockstep_paused = False
            self._lockstep_future = self._unpause_client.call_async(Empty.Request())

    def _predicted_for(self, steps: np.ndarray):
        """The states MPPI predicts for the starts of the plan ``steps`` ``(n, nu)`` (the tick's
        tail): ``(q (n, nu), qd (n, nu))`` of the commanded joints, or ``(None, None)``."""
        n = len(steps)
        if n == 0:
            return None, None
        for nominal, predicted in reversed(self._plans_log):
            h = len(nominal)
            i = h - 1 - n  # the tick's command is the plan's step i; the tail is steps i+1 .. H-1
            if i < 0 or not np.array_equal(nominal[i + 1:], steps):
                continue
            pred = np.asarray(predicted[i:i + n], dtype=np.float64)  # the state after step i+j starts step i+1+j
            if pred.shape[0] != n:
                return None, None
            qs, qds = zip(*(self.io.split(x)[:2] for x in pred))
            idx = self.supervisor._cmd_idx
            return np.asarray(qs)[:, idx], np.asarray(qds)[:, idx]
        return None, None

    def _send(self, command: np.ndarray) -> None:
        tail = None
        with self._lock:
            rt = self._rt
            now = self._now()
            d = self.supervisor.decide(now, command if rt is not None and rt.has_plan else None)
            if d.mode == Mode.RUN and self._plan_fault:
                d = Decision(Mode.HOLD, self.supervisor.hold_command(), 2,
                             f"planner fault ({self._plan_fault}): holding")
            if d.mode == Mode.RUN and rt is not None:
                steps, lead = rt.plan_tail()
                pq, pqd = self._predicted_for(steps) if self.command_kind == "position" else (None, None)
                tail = self.supervisor.limit_plan(steps, pq, pqd)
            self._last = d
            if d.command is not None and np.all(np.isfinite(d.command)):
                rows = [d.command] if tail is None else [d.command, *tail]
                times = np.array([0.0] + [lead + j * self.env.dt for j in range(len(rows) - 1)])
                self._sent_log.append((now, times, np.array(rows)))
        if d.command is not None:
            self._publish_command(d.command, tail, lead if tail is not None else 0.0, stamp_s=now)
        if self.max_plan_age_s > 0 and d.mode == Mode.RUN:
            self._lockstep_pause(now)

    def _publish_command(self, command: np.ndarray, tail: np.ndarray | None = None, lead_s: float = 0.0,
                         stamp_s: float | None = None) -> None:
        """One ``JointTrajectory``: point 0 is the command for now (``time_from_start`` 0); when
        running, the rest of the plan follows, step ``j`` at ``lead_s + j * dt`` (MPPI's actions
        are piecewise constant: hold each point until the next)."""
        if not np.all(np.isfinite(command)):  # the supervisor never lets one through; belt and braces
            return
        msg = JointTrajectory()
        msg.header.stamp = (self.get_clock().now() if stamp_s is None else
                            rclpy.time.Time(nanoseconds=int(round(stamp_s * 1e9)), clock_type=self.get_clock().clock_type)).to_msg()
        msg.joint_names = self.command_names
        rows = [command] if tail is None else [command, *tail]
        for j, row in enumerate(rows):
            pt = JointTrajectoryPoint()
            if self.command_kind == "position":
                pt.positions = row.tolist()
            else:
                pt.effort = row.tolist()
            t = 0.0 if j == 0 else lead_s + (j - 1) * self.env.dt
            pt.time_from_start.sec, pt.time_from_start.nanosec = int(t), int(round((t - int(t)) * 1e9))
            msg.points.append(pt)
        self._pub_cmd.publish(msg)

    def _clock_fault(self) -> str:
        """With ``use_sim_time``: "no /clock for N s" once no /clock message came for a second."""
        if not getattr(self, "sim_time", False):
            return ""
        since = self._configured_wall if self._clock_wall is None else self._clock_wall
        quiet = time.monotonic() - since
        return f"no /clock for {quiet:.0f} s" if quiet >= 1.0 else ""

    def _publish_diagnostics(self) -> None:
        d = self._last
        rt = self._rt
        stats = rt.stats() if rt is not None else {}
        now = self._now()
        checked, rejected, top = self.supervisor.validator.recent(now)
        values = {**{k: v for k, v in stats.items() if v is not None},
                  "mode": d.mode.value if d and self._active else "inactive", "estop": self.supervisor.estopped,
                  **{f"rejected_{k}": v for k, v in self.supervisor.validator.rejected.items() if v},
                  "accepted_states": self.supervisor.validator.accepted,
                  "readings_last_s": checked, "rejected_last_s": rejected,
                  "time_base": "sim (/clock)" if getattr(self, "sim_time", False) else "wall"}
        if self.max_plan_age_s > 0:
            values["lockstep_pauses"] = self.lockstep_pauses
        if not self._active:
            level, message = 1, "inactive (lifecycle): not planning, not commanding"
        elif d is None:
            level, message = 1, "active: no tick yet (waiting for the loop's clock)"
        else:
            level, message = d.level, d.message
        clock_fault = self._clock_fault() if self._active else ""
        if clock_fault:
            level, message = 2, f"{clock_fault}: the tick cannot run without simulated time; {message}"
            self.get_logger().error(clock_fault + " (use_sim_time is set: is the simulator publishing /clock?)",
                                    throttle_duration_sec=5.0)
        if checked and rejected > REJECTED_WARN_SHARE * checked:
            level = max(level, 1)
            message = (f"{message}; {rejected} of {checked} readings in the last second rejected "
                       f"({100.0 * rejected / checked:.0f} %), mostly {top}")
        if rt is not None and rt.faults:
            level, message = max(level, 1), f"{message}; planner faults {rt.faults}: {rt.last_fault}"
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: MPPI controller", level, message, values,
                                        hardware_id=self.env.name)]
        self._pub_diag.publish(msg)


def main(args=None) -> None:
    """``ros2 run worldscape mppi_controller --ros-args -p env:=go1``."""
    run_node(MPPIControllerNode, args)


if __name__ == "__main__":
    main()

