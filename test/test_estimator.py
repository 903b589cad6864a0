"""The Go1's base state estimator (IMU + leg kinematics Kalman filter) on the real MuJoCo Go1."""

from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest

from ws_mppi.estimation import FEET, walk
from ws_sim.envs import make_env
from ws_sim.estimator import BaseStateEstimator, LegKinematics, quat_to_rot


@pytest.fixture(scope="module")
def go1():
    return make_env("go1")


class _Trot:
    """The open-loop trot reference as a controller (walks about 0.17 m/s without a planner)."""

    def __init__(self, env):
        self.env = env

    def plan(self, state, t):
        return self.env.gait.reference((t + 1) * self.env.dt)


def test_leg_kinematics_give_the_simulators_foot_contact_points_and_their_velocities(go1):
    """r(q) is each foot sphere's lowest point relative to the base in the base frame (MuJoCo's own geom
    positions after mj_forward), and r_dot equals its finite difference along a joint motion."""
    kin = LegKinematics(go1.model, FEET)
    data = mujoco.MjData(go1.model)
    rng = np.random.default_rng(0)
    data.qpos[:3] = (0.3, -0.2, 0.31)
    quat = rng.normal(size=4)
    data.qpos[3:7] = quat / np.linalg.norm(quat)
    data.qpos[7:] = np.tile([0.0, 0.8, -1.6], 4) + rng.uniform(-0.2, 0.2, 12)
    mujoco.mj_forward(go1.model, data)
    rot = quat_to_rot(data.qpos[3:7])
    dq = rng.normal(size=12)
    r, r_dot = kin(data.qpos[7:], dq, rot)
    feet = np.array([data.geom_xpos[go1.model.geom(f).id] for f in FEET]) - np.array([0, 0, 0.02])
    np.testing.assert_allclose(data.qpos[:3] + r @ rot.T, feet, atol=1e-9)
    # r_dot: the velocity of the calf's material point now at the contact point (a standing ball foot rolls
    # about it), against that point's finite difference along the joint motion
    eps = 1e-6
    q = data.qpos[7:].copy()
    kin(q, dq, rot)
    local = [kin.data.xmat[b].reshape(3, 3).T @ (r[k] - kin.data.xpos[b]) for k, b in enumerate(kin.bodies)]
    kin(q + eps * dq, dq, rot)
    moved = np.array([kin.data.xpos[b] + kin.data.xmat[b].reshape(3, 3) @ local[k] for k, b in enumerate(kin.bodies)])
    np.testing.assert_allclose((moved - r) / eps, r_dot, atol=1e-4)


def test_joint_efforts_of_a_standing_robot_hold_its_weight_on_its_feet(go1):
    """Standing still in the home pose, the ground forces computed from the joint torques add up to the
    robot's weight (the legs' own weight neglected), shared by all four feet."""
    state, _ = go1.reset(seed=0)
    for _ in range(50):
        state, *_ = go1.step(go1.neutral_action)
    kin = LegKinematics(go1.model, FEET)
    forces = kin.foot_forces(state[7:19], go1.data.actuator_force.copy()) @ quat_to_rot(state[3:7]).T
    weight = float(np.sum(go1.model.body_mass)) * 9.81
    assert forces[:, 2].sum() == pytest.approx(weight, rel=0.15)
    assert np.all(forces[:, 2] > 0.1 * weight)


@pytest.mark.parametrize("ideal", [True, False])
def test_the_estimator_follows_a_trotting_robot_from_its_own_sensors(go1, ideal):
    """2 s of trotting: with ideal or noisy IMU and encoders (biases, heading drift), the estimated base
    velocity stays within 0.1 m/s RMS of the truth and the height within 2 cm, as the hardware goal asks."""
    res = walk(go1, _Trot(go1), seed=0, steps=100, closed_loop=False, ideal=ideal)
    assert not res["fell"] and res["progress_m"] > 0.2
    assert res["velocity_rmse"] < 0.1 and res["height_error_max"] < 0.02
    assert abs(res["yaw_drift_rad"]) < 0.05


def test_bad_readings_are_refused_and_leave_the_estimate_as_it_was(go1):
    state, _ = go1.reset(seed=1)
    est = BaseStateEstimator(LegKinematics(go1.model, FEET))
    est.reset(state[:3], state[3:7], state[7:19])
    before = (est.position, est.velocity, est.covariance)
    q, dq, contact = state[7:19], state[25:37], np.ones(4, dtype=bool)
    for bad in ({"gyro": np.array([np.nan, 0, 0])}, {"accel": np.array([0, np.inf, 9.8])}, {"dt": 0.0},
                {"contact": np.ones(3, dtype=bool)}):
        args = {"dt": 0.02, "quat": state[3:7], "gyro": np.zeros(3), "accel": np.array([0, 0, 9.81]), "q": q,
                "dq": dq, "contact": contact, **bad}
        with pytest.raises(ValueError):
            est.step(**args)
        for a, b in zip(before, (est.position, est.velocity, est.covariance)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="finite"):
        est.reset(np.array([0, 0, np.nan]), state[3:7], q)


def test_ws_mppi_estimate_walks_on_the_truth_and_on_the_estimate(tmp_path, capsys):
    """`ws mppi estimate` (one short seed): its report has both walks, the estimator's errors and a plot;
    another robot is refused in one line."""
    from ws_cli.main import main

    assert main(["mppi", "estimate", "--seeds", "0", "--seconds", "1", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "estimation.json").read_text())
    assert set(report["per_seed"]["0"]) == {"on_true_state", "on_estimate"}
    assert report["summary"]["estimator_on_true_state_walk"]["velocity_rmse"][0] < 0.2
    assert (tmp_path / "estimation.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["mppi", "estimate", "--env", "hopper", "--out", str(tmp_path / "h")]) == 2
    assert "go1" in capsys.readouterr().err


def test_the_gate_keeps_feet_misread_as_standing_from_dragging_the_velocity(go1):
    """Every foot reported standing, the swinging ones too (a contact misread from the efforts): the chi-square
    gate on each foot's velocity measurement keeps the estimate within 0.15 m/s RMS over 2 s of trotting, where
    the same filter without the gate is more than twice as far off."""
    from ws_sim.estimator import EstimatorNoise, ImuModel

    rmse = {}
    for gate in (EstimatorNoise().gate_chi2, np.inf):
        state, _ = go1.reset(seed=0)
        est = BaseStateEstimator(LegKinematics(go1.model, FEET), EstimatorNoise(gate_chi2=gate))
        est.reset(state[:3], state[3:7], state[7:19])
        imu = ImuModel(np.random.default_rng(0), ideal=True)
        errors = []
        for t in range(100):
            v_before = go1.data.qvel[:3].copy()
            state, *_ = go1.step(go1.gait.reference((t + 1) * go1.dt))
            reading = imu.measure(state[3:7], state[22:25], (state[19:22] - v_before) / go1.dt, go1.dt)
            est.step(go1.dt, reading.quat, reading.gyro, reading.accel, state[7:19], state[25:37], np.ones(4, bool))
            errors.append(est.velocity - state[19:22])
        rmse[gate] = float(np.sqrt(np.mean(np.sum(np.square(errors), axis=1))))
    gated, ungated = rmse.values()
    assert gated < 0.15 and ungated > 2 * gated, rmse


def test_the_height_test_keeps_late_commanded_swing_legs_off_the_ground():
    """A command that arrives 18 ms into a 20 ms step leaves the servos mid-transient when the efforts are read:
    swinging legs then hold torques that look like ground forces. Against MuJoCo's own foot contacts over 2 s of
    trotting, the efforts alone call many swinging feet standing; with the height test (a standing foot is within
    2 cm of the lowest) nearly every foot called standing is on the ground, and no more standing feet are missed."""
    from ws_sim.randomisation import RandomisedGo1Env

    ones = np.ones(12)
    late = {"latency_s": 0.018, "kp_scale": ones, "kv_scale": ones, "joint_damping": 0.5 * ones,
            "joint_friction": 0 * ones, "trunk_mass_kg": 0.0, "trunk_com_m": np.zeros(3), "ground_friction": 0.9}
    env = RandomisedGo1Env(late)
    kin = LegKinematics(env.model, FEET)
    geoms = [env.model.geom(f).id for f in FEET]
    counts = {m: np.zeros(3, int) for m in (None, 0.02)}  # called standing & on the ground, called standing, missed
    state, _ = env.reset(seed=0)
    for t in range(100):
        state, *_ = env.step(env.gait.reference((t + 1) * env.dt))
        touching = np.array([any(g in (c.geom1, c.geom2) for c in env.data.contact[:env.data.ncon]) for g in geoms])
        for margin, n in counts.items():
            called = kin.contact(state[7:19], env.data.actuator_force.copy(), quat_to_rot(state[3:7]), 20.0, margin)
            n += [np.sum(called & touching), np.sum(called), np.sum(~called & touching)]
    precision = {m: n[0] / n[1] for m, n in counts.items()}
    assert precision[0.02] > 0.9 > precision[None] + 0.1, (precision, counts)
    assert counts[0.02][2] == counts[None][2]
