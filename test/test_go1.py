"""The Go1 MJCF (issue 4): figures, standing, torque limits, state layout, structure."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from ws_sim.channels import channels_from_model
from ws_sim.go1 import HOME_JOINTS, JOINTS, TORQUE_LIMITS, load_go1
from ws_sim.oracle import MuJoCoOracle
from ws_worldmodel.structure import structure_from_model


def test_figures_match_the_published_robot():
    m, _ = load_go1()
    assert m.opt.timestep == 0.002
    assert (m.nq, m.nv, m.nu) == (19, 18, 12)
    assert [m.joint(i).name for i in range(1, m.njnt)] == list(JOINTS)
    np.testing.assert_allclose(m.actuator_forcerange[:, 1], TORQUE_LIMITS)
    np.testing.assert_allclose(m.actuator_forcerange[:, 0], -TORQUE_LIMITS)
    # every actuator's control range is its joint's range
    for a in range(m.nu):
        np.testing.assert_allclose(m.actuator_ctrlrange[a], m.jnt_range[m.actuator_trnid[a, 0]])
    np.testing.assert_allclose(m.jnt_range[m.joint("FR_calf_joint").id], [-2.818, -0.888])
    assert m.body_subtreemass[m.body("trunk").id] == pytest.approx(12.74, abs=0.01)
    thigh, calf = m.body("FR_calf").pos, m.geom("FR_foot").pos
    assert thigh[2] == pytest.approx(-0.213) and calf[2] == pytest.approx(-0.213)


def test_stands_on_four_feet_under_pd_hold():
    m, d = load_go1()
    feet = {m.geom(f"{leg}_foot").id for leg in ("FR", "FL", "RR", "RL")}
    for _ in range(1500):  # 3 s
        d.ctrl[:] = HOME_JOINTS
        mujoco.mj_step(m, d)
    assert 0.28 < d.qpos[2] < 0.33 and d.qpos[3] > 0.999  # upright at standing height
    touching = {g for c in d.contact[:d.ncon] for g in (c.geom1, c.geom2)} & feet
    assert touching == feet
    assert np.all(np.abs(d.actuator_force) <= TORQUE_LIMITS + 1e-9)
    # a PD servo sags by torque / kp under the body weight: about 0.065 rad at the knees (5.2 N·m / 80)
    np.testing.assert_allclose(d.qpos[7:], HOME_JOINTS, atol=0.08)


def test_torque_limits_are_enforced():
    m, d = load_go1()
    d.ctrl[:] = m.actuator_ctrlrange[:, 0]  # every joint to the far end of its range
    forces = []
    for _ in range(50):
        mujoco.mj_step(m, d)
        forces.append(np.abs(d.actuator_force).copy())
    forces = np.array(forces)
    assert np.all(forces <= TORQUE_LIMITS + 1e-9)
    assert np.any(np.isclose(forces.max(0), TORQUE_LIMITS))  # some joint hits its limit


def test_state_channels_and_structure():
    m, _ = load_go1()
    states, actions = channels_from_model(m)
    names = [c.name for c in states]
    assert names[:7] == ["qpos/root/x", "qpos/root/y", "qpos/root/z", "qpos/root/qw", "qpos/root/qx", "qpos/root/qy",
                         "qpos/root/qz"]
    assert names[19:25] == ["qvel/root/vx", "qvel/root/vy", "qvel/root/vz", "qvel/root/wx", "qvel/root/wy",
                            "qvel/root/wz"]
    assert [a.joint for a in actions] == list(JOINTS) and actions[2].body == "FR_calf"
    s = structure_from_model(m)
    assert s.objects == [["trunk", "FR_hip", "FR_thigh", "FR_calf", "FL_hip", "FL_thigh", "FL_calf",
                          "RR_hip", "RR_thigh", "RR_calf", "RL_hip", "RL_thigh", "RL_calf"]]


def test_oracle_rollouts_of_go1_match_stepping():
    m, d = load_go1()
    oracle = MuJoCoOracle(m, frame_skip=5, nthread=2)
    s0 = np.concatenate([d.qpos, d.qvel])
    acts = HOME_JOINTS + np.random.default_rng(0).normal(0, 0.1, (3, 10, 12))
    pred = oracle.rollout(s0, acts)
    for t in range(10):
        d.ctrl[:] = np.clip(acts[1, t], m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1])
        for _ in range(5):
            mujoco.mj_step(m, d)
        np.testing.assert_allclose(pred[1, t], np.concatenate([d.qpos, d.qvel]), atol=1e-8)
    oracle.close()
