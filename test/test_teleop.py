"""Teleoperation core (issue 8), without ROS: sticks and keys to PiPER joint commands, hand-overs."""

from __future__ import annotations

import numpy as np
import pytest

from ws_policy.teleop import Handover, JoyMapping, KeyboardJoy, TeleopController
from ws_sim.piper import READY_JOINTS


def _joy(mapping: JoyMapping, **axes_buttons):
    axes, buttons = [0.0] * 8, [0] * 11
    for name, value in axes_buttons.items():
        idx = getattr(mapping, name)
        if name.startswith("axis"):
            axes[idx] = value
        else:
            buttons[idx] = value
    return axes, buttons


@pytest.fixture(scope="module")
def controller():
    return TeleopController(linear_speed=0.1)


def test_taking_over_moves_nothing_and_sticks_move_the_tool_in_cartesian_space(controller):
    c = controller
    start = np.r_[READY_JOINTS + 0.05, 0.02]
    c.update(*_joy(c.mapping))
    c.take_over(start)
    assert np.allclose(c.step(0.05), start)  # sticks at rest: the command in force, unchanged
    p0 = c.tool_position()
    c.update(*_joy(c.mapping, axis_z=1.0))
    for _ in range(10):  # 0.5 s up at 0.1 m/s
        c.step(0.05)
    p1 = c.tool_position()
    assert p1[2] - p0[2] == pytest.approx(0.05, abs=0.005)
    assert np.linalg.norm(p1[:2] - p0[:2]) < 0.005
    c.update(*_joy(c.mapping, axis_x=1.0, axis_y=-1.0))
    for _ in range(10):
        c.step(0.05)
    p2 = c.tool_position()
    assert p2[0] - p1[0] == pytest.approx(0.05, abs=0.005) and p2[1] - p1[1] == pytest.approx(-0.05, abs=0.005)
    c.update(*_joy(c.mapping, axis_z=-1.0))
    for _ in range(200):  # far below the table: stops at min_tool_z
        cmd = c.step(0.05)
    assert c.tool_position()[2] >= c.min_tool_z - 2e-3
    assert np.all(cmd >= c.lower) and np.all(cmd <= c.upper)


def test_gripper_buttons_joint_mode_and_events_on_rising_edges(controller):
    c = controller
    m = c.mapping
    c.update(*_joy(m))
    c.take_over(np.r_[READY_JOINTS, 0.01])
    c.update(*_joy(m, button_open=1))
    assert c.step(0.1)[6] == pytest.approx(0.01 + c.grip_speed * 0.1)
    assert c.update(*_joy(m, button_intervene=1)) == ["intervene"]
    assert c.update(*_joy(m, button_intervene=1)) == []  # held: one event
    assert c.update(*_joy(m)) == []
    assert c.update(*_joy(m, button_success=1, button_start=1)) == ["start", "success"]
    assert c.update(*_joy(m, button_mode=1)) == ["mode"] and c.mode == "joint"
    c.update(*_joy(m, axis_select=1.0))
    c.update(*_joy(m))
    c.update(*_joy(m, axis_select=1.0))  # two presses: joint 3 (index 2)
    assert c.joint == 2
    before = c.command.copy()
    c.update(*_joy(m, axis_x=1.0))
    after = c.step(0.1)
    moved = np.flatnonzero(np.abs(after - before) > 1e-9)
    assert moved.tolist() == [2] and after[2] - before[2] == pytest.approx(c.joint_speed * 0.1)
    c.update(*_joy(m, button_mode=1))
    c.update(*_joy(m))
    assert c.mode == "cartesian"


def test_bad_joy_messages_and_steps_before_take_over_are_refused():
    c = TeleopController()
    with pytest.raises(ValueError, match="axes"):
        c.update([0.0, 0.0], [0] * 11)
    with pytest.raises(ValueError, match="NaN"):
        c.update([float("nan")] * 8, [0] * 11)
    with pytest.raises(RuntimeError, match="take_over"):
        c.step(0.05)
    with pytest.raises(ValueError, match="7 finite"):
        c.take_over([0.0] * 6)


def test_keyboard_keys_read_as_a_pad_held_for_hold_s():
    k = KeyboardJoy(hold_s=0.3)
    m = k.mapping
    assert k.press("w", 0.0) and k.press(" ", 0.0) and not k.press("x", 0.0)
    axes, buttons = k.state(0.1)
    assert axes[m.axis_x] == 1.0 and buttons[m.button_intervene] == 1
    k.press("s", 0.2)  # w and s together cancel
    assert k.state(0.25)[0][m.axis_x] == 0.0
    axes, buttons = k.state(0.45)  # w released (0.45 s after its press), s still held
    assert axes[m.axis_x] == -1.0 and buttons[m.button_intervene] == 0
    assert k.state(1.0) == ([0.0] * m.n_axes(), [0] * m.n_buttons())
    # the keyboard's messages drive the controller like a pad's
    c = TeleopController()
    k.press("r", 2.0)
    c.update(*k.state(2.0))
    c.take_over(np.r_[READY_JOINTS, 0.0])
    z0 = c.tool_position()[2]
    c.step(0.1)
    assert c.tool_position()[2] > z0 + 0.005


def test_handover_limits_every_step_until_it_catches_up():
    h = Handover(np.r_[np.full(6, 0.02), 0.002])
    h.start(np.zeros(7))
    target = np.r_[np.full(6, 0.1), 0.01]
    out = [h(target) for _ in range(8)]
    steps = np.abs(np.diff(np.vstack([np.zeros(7), *out]), axis=0))
    assert np.all(steps[:, :6] <= 0.02 + 1e-12) and np.all(steps[:, 6] <= 0.002 + 1e-12)
    assert np.allclose(out[-1], target) and not h.active
    assert np.allclose(h(target + 1.0), target + 1.0)  # caught up: passes commands through
    with pytest.raises(ValueError):
        Handover(0.0)


def test_the_tool_rises_from_a_pose_below_the_floor_with_a_joint_at_its_limit():
    """A command taken over from a policy pressing the tool into the table (z = -0.027 m, below
    ``min_tool_z``): holding "up" raises the tool from where it is (it is not jerked to the floor height,
    which the IK could not reach), and past the pose where joint 5 reaches its limit (the other joints make
    up for it). Before, the arm stayed where it was: the failure of the keyboard hand-over test."""
    import numpy as np

    from ws_policy.teleop import TeleopController

    t = TeleopController()
    t.take_over([-0.14, 1.9328, -0.7305, 0.0009, 1.1272, 1.6156, 0.0067])
    m = t.mapping
    axes = np.zeros(m.n_axes())
    axes[m.axis_z] = 1.0
    t.update(axes, np.zeros(m.n_buttons(), dtype=int))
    z0 = t.tool_position()[2]
    zs = [t.tool_position(t.step(0.05))[2] for _ in range(40)]
    assert z0 < 0 and zs[0] > z0 and zs[-1] > z0 + 0.1, (z0, zs[::8])
    assert np.all(np.diff(zs) >= -1e-9)  # never down while "up" is held
    assert np.all(t.command >= t.lower) and np.all(t.command <= t.upper)
