"""``ws teleop``: drive the PiPER from the keyboard (``teleop/joy`` for the teleop node)."""

from __future__ import annotations

from .common import command


def cmd_teleop(args) -> int:
    """Publish the terminal's keys as sensor_msgs/Joy until Ctrl-C."""
    import importlib.util

    from ws_mppi.config import ConfigError

    if importlib.util.find_spec("rclpy") is None:
        raise ConfigError("ws teleop needs rclpy: source a ROS 2 install, or pip install -e '.[ros]'")
    if args.rate <= 0 or args.hold <= 0:
        raise ConfigError("--rate and --hold must be positive")
    from ws_ros.nodes.teleop import run_keyboard

    return run_keyboard(rate_hz=args.rate, hold_s=args.hold)


def add_teleop(sub) -> None:
    """``ws teleop``."""
    tk = command(sub, "teleop", cmd_teleop, help="drive the PiPER from the keyboard (teleop/joy for the teleop node)",
                 description="Publish the terminal's keys as sensor_msgs/Joy on teleop/joy, the message a "
                             "gamepad gives through the joy package, for the 'teleop' node (run a graph with "
                             "it, e.g. 'ws launch piper_hitl_sim -p checkpoint:=policy.pt', in another "
                             "terminal). Space takes over from the policy and hands back; w/s a/d r/f move "
                             "the tool; o/c open and close the gripper; t/y/n mark episode start, success, "
                             "failure.")
    tk.add_argument("--rate", type=float, default=20.0, help="Joy messages per second, Hz")
    tk.add_argument("--hold", type=float, default=0.3,
                    help="a key counts as held this long after its last press or auto-repeat, s")
