"""``go1_bridge`` and ``piper_bridge``: the real robots behind the same topics as ``sim_bridge``.

A driver thread (:mod:`ws_ros.drivers`) reads the robot at ``rate_hz``, checks every reading
with the controller's own checks (:class:`ws_sim.safety.StateValidator`: finite, inside the
joint range plus ``range_margin``, ``|qd| <= max_joint_velocity``), publishes the valid ones on
``joint_states`` (and ``imu`` for the Go1) and writes the newest ``joint_command`` through the
shared safety layer. What each fault gives:

* **Invalid reading** (NaN/inf or out-of-range joint position or velocity) or **any exception**
  in the IO thread (the SDK's read or write, the limiter, publishing): the robot's own damping
  stop (:meth:`~ws_ros.drivers.Go1Driver.damping_stop`: on the Go1 ``Kp = 0`` with damping
  ``Kd = 3``, on the PiPER piper_sdk's ``EmergencyStop``), sent every cycle, and ERROR on
  ``/diagnostics`` naming the joint and the value (or the exception). The stop latches: it is
  released once readings have been valid for ``fault_clear_s`` *and* a command has arrived
  after that (so the controller has planned from the valid state). If the stop itself raises,
  it is tried again every cycle and the ERROR says so; should the IO thread ever end,
  ``/diagnostics`` reports ERROR "IO thread dead".
* **Stale command** (none yet, or the newest older than ``command_timeout_s``): a position hold
  at the position measured when the hold began, with the servo's gains (ERROR once commands
  had been followed).
* **E-stop** (``estop`` true, latched until ``estop`` false): the same position hold, ERROR.
* **Rejected command** (no point, other joints, wrong length, NaN): dropped and counted by
  reason; the previous command stays in force until it is stale. WARN when more than 5 % of
  the commands, or of the readings, of the last second were rejected, naming the top reason.

Each ``joint_command`` is a plan; the bridge runs only its point 0 (the command for now),
clamped against the newest valid reading, and holds once the watchdog fires: later points are
never executed, so none runs against a state it was not clamped for.

The Go1's low-level interface gives joint and IMU readings only: ``odom`` (base position and
velocity) must come from a state estimator or motion capture for ``mppi_controller`` to plan.
The vendor SDKs are imported when the node starts; where one is missing the node exits with
status 2 and a message naming the SDK and how to install it.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from ws_ros.common import command_qos, diagnostic_status, latched_qos, quat_mj_to_ros, run_node, sensor_qos
from ws_ros.drivers import DRIVERS
from ws_sim.safety import CommandLimiter, InvalidState, JointLimits, StateValidator

__all__ = ["HardwareBridge", "RejectionWindow", "main_go1", "main_piper"]

#: WARN when more than this share of the readings or commands of the last second was rejected
REJECTED_WARN_FRACTION = 0.05


def _model(robot: str):
    """The robot's MJCF (its joint ranges, torque limits and PD gains bound every command)."""
    if robot == "go1":
        from ws_sim.go1 import load_go1

        return load_go1()[0]
    if robot == "piper":
        from ws_sim.piper import PIPER_XML, load_piper

        return load_piper(PIPER_XML)[0]
    raise ValueError(f"no MJCF for robot {robot!r}; choose go1 or piper")


def _limits(robot: str, model) -> JointLimits:
    if robot == "go1":
        from ws_sim.go1 import JOINTS

        return JointLimits.from_model(model, JOINTS)
    return JointLimits.from_model(model)  # the actuated joints, in actuator order


def _mirrors(model) -> list[tuple[str, str, float, float]]:
    """Joints that follow another through a joint equality (the PiPER's ``joint8 = -joint7``):
    ``(joint, source, c0, c1)`` with ``q_joint = c0 + c1 q_source``. The SDK reports the source
    only; ``joint_states`` carries both, as ``sim_bridge`` does."""
    import mujoco

    out = []
    for e in range(model.neq):
        if model.eq_type[e] == mujoco.mjtEq.mjEQ_JOINT and model.eq_obj2id[e] >= 0:
            name = lambda j: mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(j))  # noqa: E731
            out.append((name(model.eq_obj1id[e]), name(model.eq_obj2id[e]), float(model.eq_data[e, 0]),
                        float(model.eq_data[e, 1])))
    return out


class _Rejected(ValueError):
    """A ``joint_command`` the bridge drops; ``reason``: ``no_point``, ``wrong_joints`` or ``non_finite``."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class RejectionWindow:
    """Accepted and rejected events of the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s: float = 1.0):
        self.window_s = float(window_s)
        self._events: collections.deque[tuple[float, str | None]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, t: float, reason: str | None = None) -> None:
        """One event at ``t`` (monotonic s): accepted (``reason`` None) or rejected for ``reason``."""
        with self._lock:
            self._events.append((t, reason))
            self._trim(t)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def stats(self, now: float) -> tuple[int, int, str | None]:
        """``(events, rejected, top reason)`` of the window ending at ``now``."""
        with self._lock:
            self._trim(now)
            reasons = collections.Counter(r for _, r in self._events if r is not None)
            total = len(self._events)
        return total, sum(reasons.values()), (reasons.most_common(1)[0][0] if reasons else None)


def _bad_value(limits: JointLimits, validator: StateValidator, q, qd) -> str:
    """The first joint whose reading the validator refuses, with its value: ``"FR_calf_joint
    position nan"``, ``"joint3 position 0.5 outside [-3.067, 0.1]"``, ``"joint2 velocity 150 beyond
    ±100"`` ("" if none is found: the reading's shape is wrong)."""
    q, qd = np.asarray(q, dtype=np.float64), np.asarray(qd, dtype=np.float64)
    n = len(limits.names)
    if q.shape != (n,) or qd.shape != (n,):
        return ""
    lo, hi = limits.position_min - validator.range_margin, limits.position_max + validator.range_margin
    for i, name in enumerate(limits.names):
        if not np.isfinite(q[i]):
            return f"{name} position {q[i]}"
        if not np.isfinite(qd[i]):
            return f"{name} velocity {qd[i]}"
    for i, name in enumerate(limits.names):
        if not lo[i] <= q[i] <= hi[i]:
            return f"{name} position {q[i]:.6g} outside [{lo[i]:.6g}, {hi[i]:.6g}]"
        if abs(qd[i]) > validator.max_velocity:
            return f"{name} velocity {qd[i]:.6g} beyond ±{validator.max_velocity:g}"
    return ""


class HardwareBridge(Node):
    """See the module docstring. ``robot``: ``"go1"`` or ``"piper"``.

    Args:
        robot: which robot (its MJCF gives the joints and limits).
        driver: the driver to use (an object with ``read``, ``write``, ``damping_stop``,
            ``release_stop`` and ``close`` like :class:`ws_ros.drivers.Go1Driver`); default: the
            robot's SDK driver, built from the node's parameters. Tests pass a fake one.
        **kwargs: for ``rclpy.node.Node`` (``context``, ``parameter_overrides``, ...).
    """

    def __init__(self, robot: str, driver=None, **kwargs):
        super().__init__(f"{robot}_bridge", **kwargs)

        def p(name, default, text):
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value

        self.rate_hz = float(p("rate_hz", 500.0, "read/write rate, Hz"))
        self.command_timeout_s = float(p("command_timeout_s", 0.1, "hold when the newest command is older, s"))
        self.fault_clear_s = float(p("fault_clear_s", 1.0, "after a fault (invalid reading, IO error) the damping "
                                     "stop ends once readings were valid this long and a command came after, s"))
        diagnostics_hz = float(p("diagnostics_rate_hz", 1.0, "/diagnostics rate, Hz"))
        range_margin = float(p("range_margin", 0.1, "a reading this far beyond the joint range is invalid, rad"))
        max_velocity = float(p("max_joint_velocity", 100.0, "a reading with |qd| above this is invalid, rad/s"))
        model = _model(robot)
        self.limits = _limits(robot, model)
        self.mirrors = [(n, list(self.limits.names).index(src), c0, c1) for n, src, c0, c1 in _mirrors(model)
                        if src in self.limits.names]
        self.limiter = CommandLimiter(self.limits)
        self.validator = StateValidator(self.limits, range_margin=range_margin, max_velocity=max_velocity)
        if robot == "piper":
            can_port = str(p("can_port", "can0", "SocketCAN interface of the arm"))
            speed = int(p("speed_percent", 50, "the arm's joint-motion speed, 1..100"))
            if driver is None:
                driver = DRIVERS[robot](can_port=can_port, speed_percent=speed)
        elif driver is None:
            driver = DRIVERS[robot]()
        self.driver = driver
        self.robot = robot
        self._index = {n: i for i, n in enumerate(self.limits.names)}
        self._lock = threading.Lock()
        self._target, self._target_t = None, -np.inf
        self._hold = None
        self._estop = False
        self.rejected, self.applied, self.holds = 0, 0, 0
        self.rejected_by_reason: dict[str, int] = {}
        self.last_rejection = ""
        # faults: the damping stop (IO thread state; the diagnostics read it)
        self.fault = ""  # why the damping stop is on ("" when it is not)
        self.last_fault = ""  # the newest fault, kept after it clears
        self.faults = 0  # times the damping stop began
        self.stop_error = ""  # the damping stop's own exception, while it fails
        self.thread_error = ""  # why the IO thread ended, should it ever
        self._valid_since: float | None = None  # start of the current run of valid readings during a fault
        self._last_q: np.ndarray | None = None  # the newest valid joint positions
        self.readings = RejectionWindow(1.0)
        self.commands = RejectionWindow(1.0)
        self.pub_js = self.create_publisher(JointState, "joint_states", sensor_qos())
        self.pub_imu = self.create_publisher(Imu, "imu", sensor_qos()) if robot == "go1" else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "joint_command", self._on_command, command_qos())
        self.create_subscription(Bool, "estop", self._on_estop, latched_qos())
        self.create_timer(1.0 / diagnostics_hz, self._publish_diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{robot}_bridge-io", daemon=True)
        self._thread.start()

    # --- commands (executor thread) ------------------------------------------------------------
    def _on_command(self, msg: JointTrajectory) -> None:
        now = time.monotonic()
        try:
            if not msg.points:
                raise _Rejected("no_point", "no trajectory point")
            values = np.asarray(msg.points[0].positions, dtype=np.float64)  # point 0 only: see the module doc
            names = list(msg.joint_names)
            if len(values) != len(names) or sorted(names) != sorted(self.limits.names):
                raise _Rejected("wrong_joints", f"expected positions for {list(self.limits.names)}, got {names} "
                                                   f"({len(values)} values)")
            if not np.all(np.isfinite(values)):
                bad = [n for n, v in zip(names, values) if not np.isfinite(v)]
                raise _Rejected("non_finite", f"non-finite command for {bad}")
            target = np.empty(len(names))
            target[[self._index[n] for n in names]] = values
        except _Rejected as e:
            self.rejected += 1
            self.rejected_by_reason[e.reason] = self.rejected_by_reason.get(e.reason, 0) + 1
            self.last_rejection = str(e)
            self.commands.add(now, e.reason)
            return
        self.commands.add(now)
        with self._lock:
            self._target, self._target_t = target, now

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            self._estop = bool(msg.data)  # true latches; false is the explicit release

    # --- the IO thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self._cycle()
                except Exception as e:  # noqa: BLE001 -- any failure: the damping stop and ERROR, never a dead loop
                    self._enter_fault(f"IO exception: {type(e).__name__}: {e}")
                    self._damping_stop()
                next_t += period
                now = time.monotonic()
                if next_t < now - period:  # fell behind (a slow SDK call): no burst of catch-up cycles
                    next_t = now
                self._stop.wait(max(0.0, next_t - now))
        except BaseException as e:  # SystemExit, KeyboardInterrupt, ...: say so, and try to leave the robot stopped
            self.thread_error = f"{type(e).__name__}: {e}"
            try:
                self.driver.damping_stop(self._last_q)
            except BaseException:  # noqa: BLE001
                pass
            try:
                self.get_logger().fatal(f"IO thread dead: {self.thread_error}")
            except Exception:  # noqa: BLE001 -- the context may be gone
                pass

    def _cycle(self) -> None:
        """One read-validate-write cycle."""
        s = self.driver.read()
        now = time.monotonic()
        try:
            q, qd = self.validator.check(self.limits.names, s["q"], s["qd"], now, now)
        except InvalidState as e:
            self.readings.add(now, e.reason)
            what = _bad_value(self.limits, self.validator, s["q"], s["qd"])
            self._enter_fault(f"invalid reading: {what or e}" + (f" ({e.reason})" if what else ""))
            self._damping_stop()
            return
        self.readings.add(now)
        self._last_q = q
        with self._lock:
            target, target_t, estop = self._target, self._target_t, self._estop
        if self.fault:
            if self._valid_since is None:
                self._valid_since = now
            valid_for = now - self._valid_since
            cleared = valid_for >= self.fault_clear_s and target_t >= self._valid_since + self.fault_clear_s
            if not cleared:
                self._damping_stop()
                self._publish(s, q, qd)  # valid readings go out: the controller plans from them
                return
            self.driver.release_stop()
            self.fault, self._valid_since, self._hold = "", None, None
        if target is None or now - target_t > self.command_timeout_s or estop:
            if self._hold is None:
                self._hold = q.copy()  # hold where the robot is when the hold begins
                self.holds += 1
            q_cmd = self.limiter(self._hold)
        else:
            self._hold = None
            q_cmd = self.limiter(target, q, qd)
            self.applied += 1
        self.driver.write(q_cmd, self.limits.kp, self.limits.kd)
        self._publish(s, q, qd)

    def _enter_fault(self, why: str) -> None:
        if not self.fault:
            self.faults += 1
            try:
                self.get_logger().error(f"damping stop: {why}")
            except Exception:  # noqa: BLE001
                pass
        self.fault = self.last_fault = why
        self._valid_since, self._hold = None, None

    def _damping_stop(self) -> None:
        """The driver's damping stop; if it raises, remember why (ERROR) and try again next cycle."""
        try:
            self.driver.damping_stop(self._last_q)
            self.stop_error = ""
        except Exception as e:  # noqa: BLE001
            self.stop_error = f"{type(e).__name__}: {e}"
            self._valid_since = None

    def _publish(self, s: dict, q: np.ndarray, qd: np.ndarray) -> None:
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        names, q, qd, tau = list(self.limits.names), list(q), list(qd), list(s["tau"])
        for name, i, c0, c1 in self.mirrors:
            names.append(name)
            q.append(c0 + c1 * q[i])
            qd.append(c1 * qd[i])
            tau.append(0.0)
        js.name, js.position, js.velocity, js.effort = names, [float(v) for v in q], [float(v) for v in qd], \
            [float(v) for v in tau]
        self.pub_js.publish(js)
        if self.pub_imu is not None:
            imu = Imu()
            imu.header.stamp, imu.header.frame_id = stamp, "base_link"
            o = quat_mj_to_ros(s["quat_wxyz"])
            imu.orientation.x, imu.orientation.y, imu.orientation.z, imu.orientation.w = o.tolist()
            imu.angular_velocity.x, imu.angular_velocity.y, imu.angular_velocity.z = s["gyro"].tolist()
            imu.linear_acceleration.x, imu.linear_acceleration.y, imu.linear_acceleration.z = s["accel"].tolist()
            self.pub_imu.publish(imu)

    # --- diagnostics -------------------------------------------------------------------------------
    def status(self) -> tuple[int, str, dict]:
        """``(level, message, values)`` of the bridge now (0 OK, 1 WARN, 2 ERROR)."""
        now = time.monotonic()
        n_read, bad_read, top_read = self.readings.stats(now)
        n_cmd, bad_cmd, top_cmd = self.commands.stats(now)
        with self._lock:
            estop = self._estop
        fault, stop_error, valid_since = self.fault, self.stop_error, self._valid_since
        holding = self._hold is not None
        values = {"commands_applied": self.applied, "commands_rejected": self.rejected, "holds": self.holds,
                  "last_rejection": self.last_rejection, "damping_stops": self.faults, "last_fault": self.last_fault,
                  "readings_accepted": self.validator.accepted,
                  "readings_rejected_1s": f"{bad_read}/{n_read}", "commands_rejected_1s": f"{bad_cmd}/{n_cmd}"}
        values.update({f"commands_rejected_{k}": v for k, v in sorted(dict(self.rejected_by_reason).items())})
        values.update({f"readings_rejected_{k}": v for k, v in self.validator.rejected.items() if v})
        if stop_error:
            values["damping_stop_error"] = stop_error
        if not self._thread.is_alive() and not self._stop.is_set():
            return 2, f"IO thread dead: {self.thread_error or 'ended'}; the robot is not being commanded", values
        if fault:
            msg = f"damping stop: {fault}"
            if stop_error:
                msg += f"; the stop itself fails ({stop_error}), retrying every cycle"
            elif valid_since is not None:
                if now - valid_since >= self.fault_clear_s:
                    msg += f"; readings valid for {self.fault_clear_s:g} s: waiting for a fresh command to release"
                else:
                    msg += f"; readings valid again, released by a fresh command after {self.fault_clear_s:g} s of them"
            return 2, msg, values
        if estop:
            return 2, "e-stop: holding", values
        if holding and self.applied:
            return 2, "holding: no fresh command", values
        windows = (("readings", n_read, bad_read, top_read), ("commands", n_cmd, bad_cmd, top_cmd))
        warn = [f"{100.0 * bad / n:.1f} % of the {what} of the last second rejected (top reason: {top})"
                for what, n, bad, top in windows if n and bad > REJECTED_WARN_FRACTION * n]
        if warn:
            return 1, "; ".join(warn), values
        return 0, "holding: no command yet" if holding else "following commands", values

    def _publish_diagnostics(self) -> None:
        level, message, values = self.status()
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: {self.robot} hardware", level, message, values,
                                        hardware_id=self.robot)]
        self.pub_diag.publish(msg)

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.driver.close()
        return super().destroy_node()


def main_go1(args=None) -> None:
    """``ros2 run worldscape go1_bridge`` (needs unitree_legged_sdk's robot_interface)."""
    run_node(lambda: HardwareBridge("go1"), args)


def main_piper(args=None) -> None:
    """``ros2 run worldscape piper_bridge`` (needs piper_sdk)."""
    run_node(lambda: HardwareBridge("piper"), args)
