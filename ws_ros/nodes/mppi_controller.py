"""``mppi_controller``: the real-time MPPI controller as a ROS 2 lifecycle node.

Wraps :class:`ws_mppi.realtime.RealtimeController` (a ``rate_hz`` command tick and a
free-running planner thread) around MPPI with the dynamics named by ``dynamics`` (``oracle``,
``default`` for the shipped checkpoint, or a checkpoint path), behind
:class:`ws_mppi.safety.SafetySupervisor`:

* ``joint_states`` (and ``odom`` for a floating base) are validated before they can become
  the planner's state; rejected readings are counted by reason;
* no valid state for ``state_timeout_s`` -> safe hold and ERROR on ``/diagnostics``; running
  again once valid states return;
* ``estop`` (``std_msgs/Bool``, transient-local): ``true`` latches the e-stop (hold),
  ``false`` is the explicit release;
* every command is clamped to the MJCF's joint and torque limits; a non-finite plan is never
  published.

The planner replans as fast as it can, but only from a state newer than the one it last
planned from (a sensor at 125 Hz gets at most 125 plans per second; the spare CPU goes to
the tick and the rest of the robot).

Commands go out on ``joint_command`` (``trajectory_msgs/JointTrajectory``; ``positions`` for
position-servo robots, ``effort`` for motor-driven ones) at ``rate_hz``: point 0 is the
command for now (``time_from_start`` 0, stamped now), followed while running by the rest of
the current plan at its step times, each clamped like the command. A receiver that only
reads point 0 gets the 90 Hz command; ``sim_bridge`` executes the points at their times, so
that MPPI's step boundaries (8 ms on Hopper) are kept between 90 Hz ticks.
``/diagnostics`` (1 Hz) carries tick period percentiles, missed ticks, replanning rate,
planning latency, rejected readings and the safety mode. With ``unpause_service`` set, the
controller calls that ``std_srvs/Empty`` service once its first plan exists (a paused
``sim_bridge`` starts then). ``goal`` (``PoseStamped``): for the Go1 it replaces the
waypoint list with one planar goal; for the PiPER it moves the tool's goal point (solved
once by inverse kinematics; an unreachable goal is logged and ignored).

Time: with ``use_sim_time`` (the sim graphs set it; ``sim_bridge`` publishes ``/clock``) the
command loop ticks at ``rate_hz`` in simulated time and plans are shifted by their age in
simulated time, so a simulation running slower than real time (a busy machine) is
controlled as it would be at full speed with a planner that much faster. State stamps,
timeouts and command stamps all use the node's clock; ``/diagnostics`` is published every
wall-clock second either way (a stalled simulation is still reported).

Lifecycle: ``configure`` loads the model and builds the planner; ``activate`` starts the
tick and the planner; ``deactivate`` stops them and publishes one hold command. With
``autostart`` (default) the node configures and activates itself; otherwise drive it with
``ros2 lifecycle set /mppi_controller configure|activate|deactivate``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Empty
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ws_mppi.safety import JointLimits, SafetySupervisor, StateValidator
from ws_ros.common import (command_qos, diagnostic_status, latched_qos, odom_arrays_to_free_base, run_node,
                           sensor_qos, stamp_to_s)

__all__ = ["MPPIControllerNode", "main"]


def _descriptor(text: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=True)


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
        p("threads", 1, _descriptor("torch / oracle threads of the planner"))
        p("seed", 0, _descriptor("MPPI noise seed"))
        p("autostart", True, _descriptor("configure and activate on start"))
        p("unpause_service", "", _descriptor("std_srvs/Empty service to call once the first plan exists "
                                             "(sim graphs: the paused sim_bridge's unpause_physics); empty: none"))
        self._rt = None
        self._lock = threading.Lock()
        self._base = None
        self._base_stamp = None
        self._last = None  # last Decision
        self._t_active = 0.0
        self._subs, self._pubs, self._timers = [], [], []
        self._unpause = None
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
                validator=StateValidator(every, max_age_s=float(g("max_state_age_s"))), base_dim=self.io.base_dim)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.command_names = list(limits.names)
        self.command_kind = limits.command
        self.rate_hz = float(g("rate_hz"))
        self._pub_cmd = self.create_lifecycle_publisher(JointTrajectory, "joint_command", command_qos())
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subs = [self.create_subscription(JointState, "joint_states", self._on_joint_states, sensor_qos()),
                      self.create_subscription(Bool, "estop", self._on_estop, latched_qos())]
        if self.io.floating_base:
            self._subs.append(self.create_subscription(Odometry, "odom", self._on_odom, sensor_qos()))
        if self.env.name in ("go1", "piper"):
            self._subs.append(self.create_subscription(PoseStamped, "goal", self._on_goal, 10))
        self._timers = [self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))]
        service = g("unpause_service")
        self._unpause = self.create_client(Empty, service) if service else None
        self.get_logger().info(f"configured: {self.env.name}, dynamics {self.planner.name}, MPPI H={cfg.mppi.horizon} "
                               f"K={cfg.mppi.samples} lambda={cfg.mppi.temperature}, {self.rate_hz} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ws_mppi.realtime import RealtimeController

        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self._loop_clock = self._now if self.sim_time else time.perf_counter
        self._t_active = None  # set by the first plan (a ROS clock may not have started yet)
        self._planned_update = -1
        self.planner.reset(int(self.get_parameter("seed").value))
        self._rt = RealtimeController(self._plan, self._get_state, self._send, horizon=self.cfg.mppi.horizon,
                                      action_dim=len(self.command_names), plan_dt=self.env.dt, rate_hz=self.rate_hz,
                                      hold_action=np.zeros(len(self.command_names)), clock=self._loop_clock)
        result = super().on_activate(state)
        self._rt.start()
        self.get_logger().info("active: planning and commanding")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
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

    # --- inputs -------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

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
        with self._lock:
            base, base_stamp = self._base, self._base_stamp
            self.supervisor.update_state(list(msg.name), msg.position, msg.velocity, stamp_to_s(msg.header.stamp),
                                         self._now(), base, base_stamp)

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data:
                self.supervisor.engage_estop("estop topic")
                self.get_logger().warn("e-stop engaged: holding until estop=false is published")
            elif self.supervisor.estopped:
                self.supervisor.release_estop()
                self.get_logger().info("e-stop released")

    def _on_goal(self, msg: PoseStamped) -> None:
        p = np.array([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])
        if not np.all(np.isfinite(p)):
            self.get_logger().warn(f"ignored a goal with non-finite position {p.tolist()}")
            return
        if self.env.name == "go1":
            self.env.waypoints = p[None, :2]
            self.env.goal_index = 0
            return
        from ws_sim.piper import IKError

        try:
            self.env.set_goal(p)  # inverse kinematics once; the planner's cost reads the joint goal
        except IKError as e:
            self.get_logger().warn(f"ignored goal {p.round(3).tolist()}: {e}")
            return
        self.get_logger().info(f"new goal {p.round(3).tolist()} m")

    # --- the real-time loop's callbacks ---------------------------------------------------------
    def _get_state(self):
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
        if self.env.name == "go1":
            self.env.update_goal(state[:2])
        now = self._loop_clock()
        if self._t_active is None:
            self._t_active = now
        # in sim time the reading's stamp is on the loop's clock: the plan starts at the state it was made from
        return (state, int((now - self._t_active) / self.env.dt)) + ((stamp,) if self.sim_time else ())

    def _plan(self, state, t):
        self.planner.plan(state, t)
        if self._unpause is not None:  # once: the simulation may start now that a plan exists
            if self._unpause.service_is_ready():
                self._unpause.call_async(Empty.Request())
                self.get_logger().info(f"first plan made: called {self._unpause.srv_name}")
                self._unpause = None
            else:
                self.get_logger().warn(f"waiting for the service {self._unpause.srv_name}", throttle_duration_sec=2.0)
        return self.planner.last.nominal

    def _send(self, command: np.ndarray) -> None:
        tail = None
        with self._lock:
            rt = self._rt
            d = self.supervisor.decide(self._now(), command if rt is not None and rt.has_plan else None)
            if d.mode.value == "run" and rt is not None:
                steps, lead = rt.plan_tail()
                tail = self.supervisor.limit_plan(steps)
        self._last = d
        if d.command is not None:
            self._publish_command(d.command, tail, lead if tail is not None else 0.0)

    def _publish_command(self, command: np.ndarray, tail: np.ndarray | None = None, lead_s: float = 0.0) -> None:
        """One ``JointTrajectory``: point 0 is the command for now (``time_from_start`` 0); when
        running, the rest of the plan follows, step ``j`` at ``lead_s + j * dt`` (MPPI's actions
        are piecewise constant: hold each point until the next)."""
        if not np.all(np.isfinite(command)):  # the supervisor never lets one through; belt and braces
            return
        msg = JointTrajectory()
        msg.header.stamp = self.get_clock().now().to_msg()
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

    def _publish_diagnostics(self) -> None:
        d = self._last
        rt = self._rt
        stats = rt.stats() if rt is not None else {}
        values = {**{k: v for k, v in stats.items() if v is not None},
                  "mode": d.mode.value if d else "inactive", "estop": self.supervisor.estopped,
                  **{f"rejected_{k}": v for k, v in self.supervisor.validator.rejected.items() if v},
                  "accepted_states": self.supervisor.validator.accepted,
                  "time_base": "sim (/clock)" if getattr(self, "sim_time", False) else "wall"}
        level = d.level if d else 1
        message = d.message if d else "inactive"
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

