"""Teleoperation of the PiPER (issue 8): gamepad and keyboard to joint targets, and hand-overs.

Core library (no ROS): the ``teleop`` node and ``ws teleop`` wrap these.

* :class:`JoyMapping`: which ``sensor_msgs/Joy`` axis and button does what. The defaults follow
  the ``joy`` package's report of an Xbox-layout pad (``joy_node``): axes 0/1 left stick
  (left and up positive), 3/4 right stick, 6/7 the d-pad; buttons 0 A, 1 B, 2 X, 3 Y, 4 LB,
  5 RB, 6 Back.
* :class:`KeyboardJoy`: keys to the same ``(axes, buttons)`` a pad reports, so that one node
  handles both (a terminal sends no key-up events: a key counts as held for ``hold_s`` after
  its last press or auto-repeat).
* :class:`TeleopController`: integrates the sticks into a joint command ``(7,)`` (six joint
  targets in rad, then the finger position in m): in ``cartesian`` mode the tool centre point
  moves at ``linear_speed`` m/s in the base frame through inverse kinematics with mink
  (:func:`ws_sim.piper.solve_ik`, position only, warm-started at the current
  targets, so the wrist keeps its attitude and nothing jumps) and the right stick's
  horizontal axis turns the wrist (joint 6); in ``joint`` mode the left stick drives one
  joint, chosen with the d-pad. It starts from the command in force when the human takes
  over, so taking over never moves the arm by itself.
* :class:`Handover`: a slew-rate limit on the command after a switch of actor (human to
  policy), so the first policy commands after hand-back cannot jump.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["JoyMapping", "KeyboardJoy", "TeleopController", "Handover", "KEYBOARD_HELP", "EVENTS"]

#: what a button press asks for (the ``teleop`` node acts on these)
EVENTS = ("intervene", "failure", "start", "success", "mode")


@dataclasses.dataclass
class JoyMapping:
    """Axis and button indices of a ``sensor_msgs/Joy`` message (Xbox layout under ``joy_node``)."""

    axis_x: int = 1  #: left stick up/down: tool forward/back (+x), or the selected joint
    axis_y: int = 0  #: left stick left/right: tool left/right (+y)
    axis_z: int = 4  #: right stick up/down: tool up/down (+z)
    axis_yaw: int = 3  #: right stick left/right: wrist rotation (joint 6)
    axis_select: int = 6  #: d-pad left/right: previous/next joint in joint mode
    button_intervene: int = 0  #: A: take over / hand back
    button_failure: int = 1  #: B: the episode failed
    button_start: int = 2  #: X: a new episode starts
    button_success: int = 3  #: Y: the episode succeeded
    button_close: int = 4  #: LB (held): close the gripper
    button_open: int = 5  #: RB (held): open the gripper
    button_mode: int = 6  #: Back: cartesian / joint mode
    deadzone: float = 0.1  #: stick deflections below this are zero

    def n_axes(self) -> int:
        return 1 + max(self.axis_x, self.axis_y, self.axis_z, self.axis_yaw, self.axis_select)

    def n_buttons(self) -> int:
        return 1 + max(self.button_intervene, self.button_failure, self.button_start, self.button_success,
                       self.button_close, self.button_open, self.button_mode)


#: key -> ("axis", field, sign) or ("button", field)
_KEYS = {
    "w": ("axis", "axis_x", 1.0), "s": ("axis", "axis_x", -1.0),
    "a": ("axis", "axis_y", 1.0), "d": ("axis", "axis_y", -1.0),
    "r": ("axis", "axis_z", 1.0), "f": ("axis", "axis_z", -1.0),
    "q": ("axis", "axis_yaw", 1.0), "e": ("axis", "axis_yaw", -1.0),
    "[": ("axis", "axis_select", -1.0), "]": ("axis", "axis_select", 1.0),
    " ": ("button", "button_intervene"), "c": ("button", "button_close"), "o": ("button", "button_open"),
    "t": ("button", "button_start"), "y": ("button", "button_success"), "n": ("button", "button_failure"),
    "m": ("button", "button_mode"),
}

KEYBOARD_HELP = """\
WorldScape teleop (keyboard -> teleop/joy)
  space  take over / hand back to the policy
  w / s  tool forward / back (+x)        (joint mode: selected joint + / -)
  a / d  tool left / right (+y)          [ / ]  previous / next joint (joint mode)
  r / f  tool up / down (+z)             m      cartesian / joint mode
  q / e  wrist rotation + / -
  o / c  open / close the gripper (hold)
  t new episode   y success   n failure   Ctrl-C quit"""


class KeyboardJoy:
    """Key presses -> the ``(axes, buttons)`` of a ``sensor_msgs/Joy`` under ``mapping``.

    A terminal reports presses (and auto-repeats while a key is held) but no releases, so a
    key counts as held for ``hold_s`` seconds after its last report.

    Args:
        mapping: the :class:`JoyMapping` the ``teleop`` node uses.
        hold_s: seconds a key stays held after its last press, s.

    Raises:
        ValueError: ``hold_s`` not positive.
    """

    def __init__(self, mapping: JoyMapping | None = None, hold_s: float = 0.3):
        if not hold_s > 0:
            raise ValueError(f"hold_s must be positive, got {hold_s}")
        self.mapping = mapping or JoyMapping()
        self.hold_s = float(hold_s)
        self._last: dict[str, float] = {}

    def press(self, key: str, now: float) -> bool:
        """Record a key press at ``now`` (s); returns whether the key means anything."""
        key = key.lower()
        if key not in _KEYS:
            return False
        self._last[key] = float(now)
        return True

    def state(self, now: float) -> tuple[list[float], list[int]]:
        """``(axes, buttons)`` at ``now``: the keys held then, as a pad would report them."""
        m = self.mapping
        axes, buttons = [0.0] * m.n_axes(), [0] * m.n_buttons()
        for key, t in self._last.items():
            if now - t > self.hold_s:
                continue
            kind, field, *sign = _KEYS[key]
            if kind == "axis":
                axes[getattr(m, field)] += sign[0]
            else:
                buttons[getattr(m, field)] = 1
        return [float(np.clip(a, -1.0, 1.0)) for a in axes], buttons


class TeleopController:
    """Sticks and buttons -> PiPER joint commands (see the module docstring).

    Args:
        model: a PiPER ``mujoco.MjModel`` (default: ``piper.xml``) for the kinematics and joint ranges.
        mapping: the :class:`JoyMapping`.
        linear_speed: tool speed at full stick, m/s.
        yaw_rate: wrist rotation at full stick, rad/s.
        joint_speed: joint speed at full stick in joint mode, rad/s.
        grip_speed: finger speed while a gripper button is held, m/s.
        min_tool_z: the tool is kept at least this high above the table top (z = 0), m.
    """

    def __init__(self, model=None, mapping: JoyMapping | None = None, linear_speed: float = 0.08,
                 yaw_rate: float = 0.8, joint_speed: float = 0.5, grip_speed: float = 0.05,
                 min_tool_z: float = 0.012):
        import mujoco

        from ws_sim.piper import ARM_JOINTS, COMMAND_JOINTS, FINGER_STROKE, PIPER_XML, load_piper

        self.model = model if model is not None else load_piper(PIPER_XML)[0]
        self.mapping = mapping or JoyMapping()
        self.linear_speed, self.yaw_rate = float(linear_speed), float(yaw_rate)
        self.joint_speed, self.grip_speed, self.min_tool_z = float(joint_speed), float(grip_speed), float(min_tool_z)
        jids = [self.model.joint(n).id for n in ARM_JOINTS]
        self.lower = np.r_[self.model.jnt_range[jids, 0], 0.0]
        self.upper = np.r_[self.model.jnt_range[jids, 1], FINGER_STROKE]
        self._data = mujoco.MjData(self.model)
        self._qadr = np.array([self.model.jnt_qposadr[j] for j in jids])
        self.n = len(COMMAND_JOINTS)
        self.mode = "cartesian"
        self.joint = 0
        self.command: np.ndarray | None = None
        self._axes = np.zeros(self.mapping.n_axes())
        self._buttons = np.zeros(self.mapping.n_buttons(), dtype=int)
        self._select = 0.0

    # --- input ------------------------------------------------------------------------------------
    def update(self, axes, buttons) -> list[str]:
        """Take a ``Joy`` reading; returns the :data:`EVENTS` its button presses (rising edges) ask for.

        Raises:
            ValueError: fewer axes or buttons than the mapping uses, or non-finite axes.
        """
        m = self.mapping
        axes = np.asarray(axes, dtype=np.float64)
        buttons = np.asarray(buttons, dtype=int)
        if axes.ndim != 1 or len(axes) < m.n_axes() or len(buttons) < m.n_buttons():
            raise ValueError(f"Joy message has {len(axes)} axes and {len(buttons)} buttons; the mapping uses "
                             f"{m.n_axes()} and {m.n_buttons()}")
        if not np.all(np.isfinite(axes)):
            raise ValueError("Joy axes hold NaN or infinite values")
        axes = np.where(np.abs(axes) < m.deadzone, 0.0, np.clip(axes, -1.0, 1.0))
        rising = (buttons[:len(self._buttons)] > 0) & (self._buttons == 0)
        events = [e for e, b in (("intervene", m.button_intervene), ("failure", m.button_failure),
                                 ("start", m.button_start), ("success", m.button_success),
                                 ("mode", m.button_mode)) if rising[b]]
        if "mode" in events:
            self.mode = "joint" if self.mode == "cartesian" else "cartesian"
        sel = axes[m.axis_select]
        if abs(sel) > 0.5 and abs(self._select) <= 0.5:
            self.joint = int(np.clip(self.joint + np.sign(sel), 0, 5))
        self._select = sel
        self._axes = axes[:m.n_axes()].copy()
        self._buttons = buttons[:m.n_buttons()].copy()
        return events

    # --- output -----------------------------------------------------------------------------------
    def take_over(self, command) -> None:
        """Start from ``command`` ``(7,)`` (the one in force), so that taking over moves nothing.

        Raises:
            ValueError: wrong length or non-finite values.
        """
        c = np.asarray(command, dtype=np.float64)
        if c.shape != (self.n,) or not np.all(np.isfinite(c)):
            raise ValueError(f"take_over needs {self.n} finite joint targets, got {np.shape(command)}")
        self.command = np.clip(c, self.lower, self.upper)

    def tool_position(self, command=None) -> np.ndarray:
        """Forward kinematics: the ``tcp`` site's position ``(3,)`` (m, world) at ``command``'s arm joints."""
        import mujoco

        c = self.command if command is None else np.asarray(command, dtype=np.float64)
        self._data.qpos[self._qadr] = c[:6]
        mujoco.mj_kinematics(self.model, self._data)
        return self._data.site("tcp").xpos.copy()

    def step(self, dt: float) -> np.ndarray:
        """Integrate the current sticks over ``dt`` seconds; returns the new command ``(7,)``.

        A Cartesian target the arm cannot reach exactly (a joint pinned at its limit) is
        approached as far as the joint ranges allow, if that moves the tool along the sticks'
        direction; otherwise the arm joints stay where they are. The tool
        is not moved below ``min_tool_z``; a tool already lower (a command taken over from a
        policy pressing into the table) is not jerked up to it, but may rise from where it is.

        Raises:
            RuntimeError: called before :meth:`take_over`.
        """
        from ws_sim.piper import solve_ik

        if self.command is None:
            raise RuntimeError("TeleopController.step before take_over: no command to start from")
        m, a = self.mapping, self._axes
        c = self.command.copy()
        if self.mode == "cartesian":
            v = np.array([a[m.axis_x], a[m.axis_y], a[m.axis_z]]) * self.linear_speed
            if np.any(v):
                here = self.tool_position(c)
                target = here + v * dt
                target[2] = max(target[2], min(self.min_tool_z, here[2]))
                q = solve_ik(self.model, target, q0=c[:6], tol=2e-4, max_iter=30, lock_at_limits=True,
                             best_effort=True)
                moved = self.tool_position(np.r_[q, c[6]]) - here
                want = target - here
                # the closest reachable pose, if it goes the asked way (else hold: out of reach)
                if want @ want > 0 and moved @ want >= 0.25 * (want @ want):
                    c[:6] = q
            c[5] += a[m.axis_yaw] * self.yaw_rate * dt
        else:
            c[self.joint] += a[m.axis_x] * self.joint_speed * dt
        grip = int(self._buttons[m.button_open] > 0) - int(self._buttons[m.button_close] > 0)
        c[6] += grip * self.grip_speed * dt
        self.command = np.clip(c, self.lower, self.upper)
        return self.command.copy()


class Handover:
    """A slew-rate limit on commands after a change of actor.

    After :meth:`start` with the command in force, each call moves at most ``max_step`` per
    joint toward the command it is given, until it has caught up (then it passes commands
    through and :attr:`active` is False).

    Args:
        max_step: largest change per call, per joint ``(n,)`` or one number (rad, or m for the
            fingers).

    Raises:
        ValueError: a non-positive step.
    """

    def __init__(self, max_step):
        self.max_step = np.asarray(max_step, dtype=np.float64)
        if np.any(self.max_step <= 0) or not np.all(np.isfinite(self.max_step)):
            raise ValueError(f"max_step must be positive, got {max_step!r}")
        self.last: np.ndarray | None = None
        self.active = False

    def start(self, command) -> None:
        """Begin limiting from ``command`` (the last one the robot received)."""
        self.last = np.asarray(command, dtype=np.float64).copy()
        self.active = True

    def __call__(self, command) -> np.ndarray:
        c = np.asarray(command, dtype=np.float64)
        if not self.active or self.last is None or self.last.shape != c.shape:
            self.active = False
            self.last = c.copy()
            return c
        out = self.last + np.clip(c - self.last, -self.max_step, self.max_step)
        self.active = not np.allclose(out, c)
        self.last = out
        return out
