"""``teleop``: a human drives the PiPER from a gamepad or the keyboard, and takes over from the policy.

Inputs: ``teleop/joy`` (``sensor_msgs/Joy``: a pad through the ``joy`` package's ``joy_node``,
or the keyboard through ``ws teleop``, which publishes the same message); ``joint_command`` (the
command in force, whoever sent it) and ``joint_states`` (used only before any command is seen).

The A button (keyboard: space) toggles the intervention. Taking over publishes ``true`` on
``teleop/intervention`` (transient local, so a late joiner knows who acts) and from then on a
``joint_command`` every tick at ``rate_hz``, starting from the command in force: the first
human command equals the last policy command, so the switch never moves the arm. Handing back
publishes ``false`` and stops publishing; ``policy_executor`` resumes from the last human
command under a slew-rate limit. Sticks move the tool in Cartesian space through inverse
kinematics or, in joint mode, one joint (:class:`ws_policy.teleop.TeleopController`). A pad
that goes silent for ``joy_timeout_s`` while the human acts stops the motion (the arm holds), and
so does ``estop`` (latched) until it is released.

X / Y / B (keyboard t / y / n) publish ``start`` / ``success`` / ``failure`` on ``episode``
(``std_msgs/String``) for the recorder: the episode boundaries and outcomes of a session.

Parameters: ``rate_hz``, ``linear_speed`` (m/s), ``yaw_rate`` and ``joint_speed`` (rad/s),
``grip_speed`` (m/s), ``min_tool_z`` (m), ``joy_timeout_s``, and the :class:`JoyMapping`
fields (``axis_x`` ... ``button_mode``, ``deadzone``) for other pads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Joy, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ws_ros.common import command_qos, diagnostic_status, latched_qos, run_node, sensor_qos

__all__ = ["TeleopNode", "KeyboardJoyNode", "main", "run_keyboard"]


class TeleopNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        from ws_policy.teleop import JoyMapping, TeleopController
        from ws_sim.piper import COMMAND_JOINTS

        super().__init__("teleop", **kwargs)

        def p(name, default, text):
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value

        self.rate_hz = float(p("rate_hz", 20.0, "command rate while the human acts, Hz"))
        linear = float(p("linear_speed", 0.08, "tool speed at full stick, m/s"))
        yaw = float(p("yaw_rate", 0.8, "wrist rotation at full stick, rad/s"))
        joint = float(p("joint_speed", 0.5, "joint speed at full stick (joint mode), rad/s"))
        grip = float(p("grip_speed", 0.05, "finger speed while a gripper button is held, m/s"))
        min_z = float(p("min_tool_z", 0.012, "the tool stays this far above the table top, m"))
        self.joy_timeout = float(p("joy_timeout_s", 0.5, "a silent pad for this long stops the motion, s"))
        fields = {f.name: p(f.name, f.default, f"Joy {'axis' if f.name.startswith('axis') else 'button'} index"
                            if f.name != "deadzone" else "stick deadzone")
                  for f in dataclasses.fields(JoyMapping)}
        if self.rate_hz <= 0 or linear <= 0 or self.joy_timeout <= 0:
            raise ValueError("teleop: rate_hz, linear_speed and joy_timeout_s must be positive")
        self.ctl = TeleopController(mapping=JoyMapping(**fields), linear_speed=linear, yaw_rate=yaw,
                                    joint_speed=joint, grip_speed=grip, min_tool_z=min_z)
        self.names = list(COMMAND_JOINTS)
        self.intervening = False
        self.last_command: np.ndarray | None = None
        self.last_state: np.ndarray | None = None
        self.estopped = False
        self.joy_errors = 0
        self.last_error = ""
        self._joy_t = None
        self._pub_cmd = self.create_publisher(JointTrajectory, "joint_command", command_qos())
        self._pub_flag = self.create_publisher(Bool, "teleop/intervention", latched_qos())
        self._pub_episode = self.create_publisher(String, "episode", 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(Joy, "teleop/joy", self._on_joy, sensor_qos())
        self.create_subscription(JointTrajectory, "joint_command", self._on_command, command_qos())
        self.create_subscription(JointState, "joint_states", self._on_state, sensor_qos())
        self.create_subscription(Bool, "estop", lambda m: setattr(self, "estopped", bool(m.data)), latched_qos())
        self._pub_flag.publish(Bool(data=False))
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info("teleop ready: A (keyboard: space) takes over and hands back")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- inputs -----------------------------------------------------------------------------------
    def _on_command(self, msg: JointTrajectory) -> None:
        if not msg.points:
            return
        idx = {n: i for i, n in enumerate(msg.joint_names)}
        if all(n in idx for n in self.names):
            c = np.array([msg.points[0].positions[idx[n]] for n in self.names])
            if np.all(np.isfinite(c)):
                self.last_command = c

    def _on_state(self, msg: JointState) -> None:
        idx = {n: i for i, n in enumerate(msg.name)}
        if all(n in idx for n in self.names):
            q = np.array([msg.position[idx[n]] for n in self.names])
            if np.all(np.isfinite(q)):
                self.last_state = q

    def _on_joy(self, msg: Joy) -> None:
        try:
            events = self.ctl.update(msg.axes, msg.buttons)
        except ValueError as e:
            self.joy_errors += 1
            self.last_error = str(e)
            return
        self._joy_t = self._now()
        for event in events:
            if event == "intervene":
                self._toggle()
            elif event in ("start", "success", "failure"):
                self._pub_episode.publish(String(data=event))
                self.get_logger().info(f"episode: {event}")
            elif event == "mode":
                self.get_logger().info(f"{self.ctl.mode} mode")

    def _toggle(self) -> None:
        if self.intervening:
            self.intervening = False
            self._pub_flag.publish(Bool(data=False))
            self.get_logger().info("handed back to the policy")
            return
        start = self.last_command if self.last_command is not None else self.last_state
        if start is None:
            self.last_error = "cannot take over: no joint_command or joint_states seen yet"
            self.get_logger().warning(self.last_error)
            return
        self.ctl.take_over(start)
        self.intervening = True
        self._pub_flag.publish(Bool(data=True))
        self._publish(self.ctl.command)
        self.get_logger().info("human in control")

    # --- output -----------------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.intervening:
            return
        if self.estopped:
            self._publish(self.ctl.command)  # hold where the arm was told to be
            return
        if self._joy_t is None or self._now() - self._joy_t > self.joy_timeout:
            m = self.ctl.mapping
            self.ctl.update([0.0] * m.n_axes(), [0] * m.n_buttons())  # a silent pad: hold
        self._publish(self.ctl.step(1.0 / self.rate_hz))

    def _publish(self, command: np.ndarray) -> None:
        if not np.all(np.isfinite(command)):
            return
        msg = JointTrajectory()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.joint_names = self.names
        msg.points = [JointTrajectoryPoint(positions=[float(v) for v in command])]
        self._pub_cmd.publish(msg)

    def _publish_diagnostics(self) -> None:
        values = {"intervening": self.intervening, "estop": self.estopped, "mode": self.ctl.mode, "joint": self.ctl.joint + 1,
                  "joy_errors": self.joy_errors, "last_error": self.last_error,
                  "joy_age_s": "never" if self._joy_t is None else f"{self._now() - self._joy_t:.2f}"}
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: teleop", 1 if self.last_error else 0,
                                        "human in control" if self.intervening else "policy in control", values,
                                        hardware_id="piper")]
        self._pub_diag.publish(msg)


class KeyboardJoyNode(Node):
    """``ws teleop``: the terminal's keys as ``sensor_msgs/Joy`` on ``teleop/joy`` at ``rate_hz``
    (:class:`ws_policy.teleop.KeyboardJoy`; :data:`ws_policy.teleop.KEYBOARD_HELP` lists the keys)."""

    def __init__(self, rate_hz: float = 20.0, hold_s: float = 0.3, **kwargs):
        from ws_policy.teleop import KeyboardJoy

        super().__init__("teleop_keyboard", **kwargs)
        self.keys = KeyboardJoy(hold_s=hold_s)
        self.pressed = 0
        self._pub = self.create_publisher(Joy, "teleop/joy", 10)
        self.create_timer(1.0 / rate_hz, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def press(self, key: str) -> None:
        import time

        if self.keys.press(key, time.monotonic()):
            self.pressed += 1

    def _tick(self) -> None:
        import time

        axes, buttons = self.keys.state(time.monotonic())
        msg = Joy(axes=axes, buttons=buttons)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)


def run_keyboard(rate_hz: float = 20.0, hold_s: float = 0.3, stream=None, args=None) -> int:
    """Read keys from ``stream`` (default stdin; a terminal is put in cbreak mode and restored) and
    publish them as ``teleop/joy`` until Ctrl-C or end of input. Returns 0."""
    import os
    import select
    import sys

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ws_policy.teleop import KEYBOARD_HELP

    stream = stream or sys.stdin
    fd = stream.fileno()
    saved = None
    if os.isatty(fd):
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    rclpy.init(args=args)
    node = KeyboardJoyNode(rate_hz=rate_hz, hold_s=hold_s)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    print(KEYBOARD_HELP, file=sys.stderr, flush=True)
    try:
        while rclpy.ok():
            ready, _, _ = select.select([fd], [], [], 0.01)
            if ready:
                data = os.read(fd, 64)
                if not data:
                    break  # end of input
                for ch in data.decode(errors="ignore"):
                    node.press(ch)
            ex.spin_once(timeout_sec=0.0)
    except KeyboardInterrupt:
        pass
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        ex.remove_node(node)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def main(args=None) -> None:
    """``ros2 run worldscape teleop`` (with ``ros2 run joy joy_node`` for a pad, or ``ws teleop`` for keys)."""
    run_node(TeleopNode, args)


if __name__ == "__main__":
    main()
