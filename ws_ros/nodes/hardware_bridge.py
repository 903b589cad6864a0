"""``go1_bridge`` and ``piper_bridge``: the real robots behind the same topics as ``sim_bridge``.

A driver thread (:mod:`ws_ros.drivers`) reads the robot at ``rate_hz``, publishes
``joint_states`` (and ``imu`` for the Go1) and writes the newest ``joint_command`` through
the shared safety layer: unknown/missing joints, wrong lengths and NaN commands are dropped
and counted; targets are clamped to the MJCF's joint range and to the torque the PD gains may
produce; ``estop`` (latched) and a command older than ``command_timeout_s`` put the robot in
a safe hold: the position measured when the hold began, with the servo's damping.

The Go1's low-level interface gives joint and IMU readings only: ``odom`` (base position and
velocity) must come from a state estimator or motion capture for ``mppi_controller`` to plan.
The vendor SDKs are imported when the node starts; where one is missing the node exits with
status 2 and a message naming the SDK and how to install it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from ws_mppi.safety import CommandLimiter, JointLimits
from ws_ros.common import command_qos, diagnostic_status, latched_qos, quat_mj_to_ros, run_node, sensor_qos
from ws_ros.drivers import DRIVERS

__all__ = ["HardwareBridge", "main_go1", "main_piper"]


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


class HardwareBridge(Node):
    """See the module docstring. ``robot``: ``"go1"`` or ``"piper"``."""

    def __init__(self, robot: str, **kwargs):
        super().__init__(f"{robot}_bridge", **kwargs)

        def p(name, default, text):
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value

        self.rate_hz = float(p("rate_hz", 500.0, "read/write rate, Hz"))
        self.command_timeout_s = float(p("command_timeout_s", 0.1, "hold when the newest command is older, s"))
        model = _model(robot)
        self.limits = _limits(robot, model)
        self.mirrors = [(n, list(self.limits.names).index(src), c0, c1) for n, src, c0, c1 in _mirrors(model)
                        if src in self.limits.names]
        self.limiter = CommandLimiter(self.limits)
        if robot == "piper":
            self.driver = DRIVERS[robot](can_port=str(p("can_port", "can0", "SocketCAN interface of the arm")),
                                         speed_percent=int(p("speed_percent", 50, "the arm's joint-motion speed, 1..100")))
        else:
            self.driver = DRIVERS[robot]()
        self.robot = robot
        self._index = {n: i for i, n in enumerate(self.limits.names)}
        self._lock = threading.Lock()
        self._target, self._target_t = None, -np.inf
        self._hold = None
        self._estop = False
        self.rejected, self.applied, self.holds = 0, 0, 0
        self.last_rejection = ""
        self.pub_js = self.create_publisher(JointState, "joint_states", sensor_qos())
        self.pub_imu = self.create_publisher(Imu, "imu", sensor_qos()) if robot == "go1" else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "joint_command", self._on_command, command_qos())
        self.create_subscription(Bool, "estop", self._on_estop, latched_qos())
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{robot}_bridge-io", daemon=True)
        self._thread.start()

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            if not msg.points:
                raise ValueError("no trajectory point")
            values = np.asarray(msg.points[0].positions, dtype=np.float64)
            names = list(msg.joint_names)
            if len(values) != len(names) or sorted(names) != sorted(self.limits.names):
                raise ValueError(f"expected positions for {list(self.limits.names)}, got {names} ({len(values)} values)")
            if not np.all(np.isfinite(values)):
                raise ValueError("non-finite command")
            target = np.empty(len(names))
            target[[self._index[n] for n in names]] = values
        except ValueError as e:
            self.rejected += 1
            self.last_rejection = str(e)
            return
        with self._lock:
            self._target, self._target_t = target, time.monotonic()

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            self._estop = bool(msg.data)  # true latches; false is the explicit release

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            s = self.driver.read()
            now = time.monotonic()
            with self._lock:
                target, fresh, estop = self._target, now - self._target_t <= self.command_timeout_s, self._estop
            if target is None or not fresh or estop:
                if self._hold is None:
                    self._hold = s["q"].copy()  # hold where the robot is when the hold begins
                    self.holds += 1
                q_cmd = self.limiter(self._hold)
            else:
                self._hold = None
                q_cmd = self.limiter(target, s["q"], s["qd"])
                self.applied += 1
            self.driver.write(q_cmd, self.limits.kp, self.limits.kd)
            self._publish(s)
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def _publish(self, s: dict) -> None:
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        names, q, qd, tau = list(self.limits.names), list(s["q"]), list(s["qd"]), list(s["tau"])
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

    def _publish_diagnostics(self) -> None:
        holding = self._hold is not None
        level = 2 if (self._estop or (holding and self.applied)) else (1 if self.rejected else 0)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(
            f"{self.get_name()}: {self.robot} hardware", level,
            "e-stop: holding" if self._estop else ("holding: no fresh command" if holding else "following commands"),
            {"commands_applied": self.applied, "commands_rejected": self.rejected, "holds": self.holds,
             "last_rejection": self.last_rejection}, hardware_id=self.robot)]
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
