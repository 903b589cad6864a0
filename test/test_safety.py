"""The safety layer (issue 5): validation, watchdog, latched e-stop, clamping; on the Go1 MJCF."""

from __future__ import annotations

import numpy as np
import pytest

from ws_sim.go1 import HOME_JOINTS, JOINTS, TORQUE_LIMITS, load_go1
from ws_sim.safety import CommandLimiter, InvalidState, JointLimits, Mode, SafetySupervisor, StateValidator


@pytest.fixture(scope="module")
def limits():
    model, _ = load_go1()
    return JointLimits.from_model(model, JOINTS)


def test_the_old_ws_mppi_safety_path_is_the_same_layer():
    import ws_mppi.safety
    import ws_sim.safety

    assert ws_mppi.safety.__all__ == ws_sim.safety.__all__
    assert all(getattr(ws_mppi.safety, n) is getattr(ws_sim.safety, n) for n in ws_sim.safety.__all__)


def test_limits_come_from_the_mjcf(limits):
    assert limits.names == JOINTS
    np.testing.assert_allclose(limits.torque_max, TORQUE_LIMITS)
    np.testing.assert_allclose(limits.position_min[:3], [-0.863, -0.686, -2.818])
    np.testing.assert_allclose(limits.kp, 80.0)
    np.testing.assert_allclose(limits.kd, 2.0)
    assert limits.command == "position"
    model, _ = load_go1()
    with pytest.raises(ValueError, match="do not exist"):
        JointLimits.from_model(model, ["FR_hip_joint", "tail_joint"])


def test_effort_robot_limits_and_hold(hopper_env):
    """Hopper: motors (effort commands in [-1, 1]); its root joints are validated, not commanded."""
    model = hopper_env.model
    cmd = JointLimits.from_model(model)
    assert cmd.command == "effort" and cmd.names == ("thigh_joint", "leg_joint", "foot_joint")
    with pytest.raises(ValueError, match="no actuator"):
        JointLimits.from_model(model, ["rootz", "thigh_joint"])
    state_names = ("rootx", "rootz", "rooty", "thigh_joint", "leg_joint", "foot_joint")
    every = JointLimits.from_model(model, state_names, require_actuator=False)
    assert np.isinf(every.position_min[0]) and every.kp[0] == 0
    sup = SafetySupervisor(cmd, validator=StateValidator(every))
    q = np.array([0.0, 1.25, 0.0, 0.0, 0.0, 0.0])
    assert sup.update_state(state_names, q, np.zeros(6), 0.0, 0.0)
    d = sup.decide(0.0, np.array([3.0, -0.5, 0.2]))
    assert d.mode == Mode.RUN
    np.testing.assert_allclose(d.command, [1.0, -0.5, 0.2])  # clipped to ctrlrange
    np.testing.assert_allclose(sup.decide(1.0, None).command, 0.0)  # stale: zero effort
    with pytest.raises(ValueError, match="not validated"):
        SafetySupervisor(cmd, validator=StateValidator(JointLimits.from_model(model, ["thigh_joint"])))


@pytest.mark.parametrize("case, reason", [
    ("nan", "non_finite"), ("inf_vel", "non_finite"), ("short", "length_mismatch"), ("unknown", "unknown_joint"),
    ("missing", "missing_joint"), ("duplicate", "duplicate_joint"), ("range", "out_of_range"),
    ("future", "future_stamp"), ("old", "stale")])
def test_bad_readings_are_rejected_and_counted(limits, case, reason):
    v = StateValidator(limits, max_age_s=0.05, max_future_s=0.01)
    names, q, qd, stamp = list(JOINTS), HOME_JOINTS.copy(), np.zeros(12), 10.0
    if case == "nan":
        q[3] = np.nan
    elif case == "inf_vel":
        qd[0] = np.inf
    elif case == "short":
        q = q[:11]
    elif case == "unknown":
        names[0] = "FR_wheel_joint"
    elif case == "missing":
        names, q, qd = names[:11], q[:11], qd[:11]
    elif case == "duplicate":
        names[1] = names[0]
    elif case == "range":
        q[2] = -0.2  # knee beyond -0.888 + margin
    elif case == "future":
        stamp = 10.5
    elif case == "old":
        stamp = 9.9
    with pytest.raises(InvalidState) as e:
        v.check(names, q, qd, stamp, now_s=10.0)
    assert e.value.reason == reason
    assert v.rejected[reason] == 1 and sum(v.rejected.values()) == 1 and v.accepted == 0


def test_valid_reading_is_reordered_to_the_model_order(limits):
    v = StateValidator(limits)
    rev = list(reversed(JOINTS))
    q, qd = v.check(rev, HOME_JOINTS[::-1], np.arange(12.0)[::-1], 1.0, 1.0)
    np.testing.assert_allclose(q, HOME_JOINTS)
    np.testing.assert_allclose(qd, np.arange(12.0))
    assert v.accepted == 1


def test_commands_are_clamped_to_range_and_torque(limits):
    lim = CommandLimiter(limits)
    q = HOME_JOINTS.copy()
    cmd = lim(q + 10.0, q, np.zeros(12))
    tau = limits.kp * (cmd - q)
    assert np.all(np.abs(tau) <= limits.torque_max + 1e-9)
    assert np.all(cmd <= limits.position_max) and np.all(cmd >= limits.position_min)
    np.testing.assert_allclose(lim(q), q)  # inside everything: unchanged
    with pytest.raises(ValueError, match="non-finite"):
        lim(np.full(12, np.nan))
    with pytest.raises(ValueError, match="shape"):
        lim(np.zeros(3))


def test_watchdog_holds_with_error_and_recovers(limits):
    sup = SafetySupervisor(limits, state_timeout_s=0.1)
    d = sup.decide(0.0, HOME_JOINTS)
    assert d.mode == Mode.HOLD and d.command is None and d.level == 2  # never had a state: send nothing
    assert sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 0.0, 0.0)
    plan = HOME_JOINTS + 0.05
    d = sup.decide(0.05, plan)
    assert d.mode == Mode.RUN and d.level == 0
    np.testing.assert_allclose(d.command, plan)
    d = sup.decide(0.2, plan)  # 0.2 s without a valid state
    assert d.mode == Mode.HOLD and d.level == 2 and "no valid state" in d.message
    np.testing.assert_allclose(d.command, HOME_JOINTS)  # hold the last valid position
    bad = HOME_JOINTS.copy()
    bad[0] = np.nan
    assert not sup.update_state(JOINTS, bad, np.zeros(12), 0.25, 0.25)  # NaN never becomes the state
    assert sup.decide(0.25, plan).mode == Mode.HOLD and "non_finite" in sup.decide(0.25, plan).message
    assert sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 0.3, 0.3)
    assert sup.decide(0.3, plan).mode == Mode.RUN
    d = sup.decide(0.3, np.full(12, np.nan))  # a NaN plan is never sent
    assert d.mode == Mode.HOLD and np.all(np.isfinite(d.command))


def test_estop_is_latched_until_released(limits):
    sup = SafetySupervisor(limits)
    sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 0.0, 0.0)
    sup.engage_estop("operator")
    for t in (0.01, 0.02):
        sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), t, t)  # fresh states do not clear it
        d = sup.decide(t, HOME_JOINTS + 0.1)
        assert d.mode == Mode.ESTOP and d.level == 2
        np.testing.assert_allclose(d.command, HOME_JOINTS)
    sup.release_estop()
    assert sup.decide(0.02, HOME_JOINTS + 0.1).mode == Mode.RUN


def test_floating_base_needs_fresh_valid_odometry(limits):
    sup = SafetySupervisor(limits, base_dim=13)
    base = np.r_[0, 0, 0.3, 1, 0, 0, 0, np.zeros(6)]
    assert not sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 0.0, 0.0)  # no odometry yet
    assert sup.validator.rejected["missing_base"] == 1
    bad = base.copy()
    bad[3:7] = [2.0, 0, 0, 0]
    assert not sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 0.0, 0.0, bad, 0.0)
    assert not sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 1.0, 1.0, base, 0.5)  # stale odometry
    assert sup.update_state(JOINTS, HOME_JOINTS, np.zeros(12), 1.0, 1.0, base, 0.99)
    q, qd, b = sup.state(1.0)
    np.testing.assert_allclose(b, base)


def test_plan_points_are_clamped_against_the_state_predicted_for_them(limits):
    """A joint moving at qd != 0: point j of the plan must satisfy the torque bound at the state predicted for
    its start, not at the state measured now (which lets a far-ahead point through, or cuts a near one)."""
    sup = SafetySupervisor(limits)
    n = len(JOINTS)
    q0 = np.array(HOME_JOINTS, dtype=np.float64)
    qd0 = np.full(n, 3.0)  # every joint moving at 3 rad/s
    assert sup.update_state(JOINTS, q0, qd0, 10.0, 10.0)
    steps = 4
    pq = q0 + np.outer(np.arange(1, steps + 1) * 0.02, qd0)  # where the joints will be at each point's start
    pqd = np.tile(qd0, (steps, 1))
    span = (limits.torque_max + limits.kd * qd0) / np.maximum(limits.kp, 1e-9)  # the servo's reach beyond q
    plan = pq + 0.9 * span  # each point just inside the bound at its own predicted state
    plan = np.clip(plan, limits.position_min, limits.position_max)
    out = sup.limit_plan(plan, pq, pqd)
    np.testing.assert_allclose(out, np.stack([CommandLimiter(limits)(u, q, qd) for u, q, qd in zip(plan, pq, pqd)]))
    inside = (plan > limits.position_min + 1e-9) & (plan < limits.position_max - 1e-9)
    np.testing.assert_allclose(out[inside], plan[inside])  # nothing cut that the servo can reach then
    # against the measured state (what was done before) the far points would have been cut
    measured = np.stack([CommandLimiter(limits)(u, q0, qd0) for u in plan])
    assert not np.allclose(measured, out)
    # no prediction, or a non-finite one: only the command for now goes out
    assert sup.limit_plan(plan) is None
    bad = pq.copy()
    bad[2, 1] = np.nan
    assert sup.limit_plan(plan, bad, pqd) is None


def test_a_chunk_without_a_model_prediction_is_bounded_at_the_tracked_states(limits):
    """A policy's action chunk carries no predicted states: a position servo tracking its targets is expected
    at the previous point, moving at the previous point's rate; each later point is clamped there."""
    sup = SafetySupervisor(limits)
    q0 = np.array(HOME_JOINTS, dtype=np.float64)
    assert sup.update_state(JOINTS, q0, np.zeros(len(JOINTS)), 1.0, 1.0)
    dt = 0.05
    cmd = q0 + 0.01
    steps = np.stack([q0 + 0.02 * (j + 2) for j in range(3)])
    pq, pqd = sup.tracking_prediction(cmd, steps, dt)
    np.testing.assert_allclose(pq, np.stack([cmd, steps[0], steps[1]]))
    np.testing.assert_allclose(pqd, np.stack([(cmd - q0) / dt, (steps[0] - cmd) / dt, (steps[1] - steps[0]) / dt]))
    out = sup.limit_plan(steps, pq, pqd)
    np.testing.assert_allclose(out, np.stack([CommandLimiter(limits)(u, q, qd) for u, q, qd in zip(steps, pq, pqd)]))
