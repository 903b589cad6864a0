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


def test_trot_gait_pairs_diagonals_in_antiphase():
    from ws_sim.go1 import TrotGait

    gait = TrotGait(period=0.4, stride=0.15)
    t = np.linspace(0, 0.8, 81)
    sw = gait.swing(t)
    np.testing.assert_array_equal(sw[:, 0], sw[:, 3])  # FR with RL
    np.testing.assert_array_equal(sw[:, 1], sw[:, 2])  # FL with RR
    np.testing.assert_array_equal(sw[:, 0], ~sw[:, 1])  # the pairs alternate
    ref = gait.reference(t)
    np.testing.assert_allclose(gait.reference(t + 0.4), ref, atol=1e-12)  # periodic
    lifting = ref[:, 2] < HOME_JOINTS[2] - 1e-6  # the FR knee bends further only in swing
    np.testing.assert_array_equal(lifting & ~sw[:, 0], np.zeros_like(lifting))
    assert lifting.sum() > 10
    np.testing.assert_allclose(ref[:, 0::3], 0.0)  # no abduction in a straight trot


def test_progress_reward_is_displacement_toward_the_goal():
    from ws_sim.go1 import progress_reward

    g = np.array([1.0, 0.0])
    assert progress_reward([0, 0], [0.1, 0], g) == pytest.approx(0.1)
    assert progress_reward([0, 0], [-0.1, 0], g) == pytest.approx(-0.1)
    assert progress_reward([0, 0], [0, 0.1], g) == pytest.approx(0.0)
    assert progress_reward([0.95, 0], [1.2, 0], g) == 0.0  # within eps of the goal


def test_go1_walk_env_stands_falls_and_advances_waypoints():
    import gymnasium as gym

    import ws_sim  # noqa: F401  (registers ws/Go1Walk-v0)
    from ws_sim.go1 import TrotGait
    from ws_sim.go1_env import Go1WalkEnv

    env = gym.make("ws/Go1Walk-v0")
    s, info = env.reset(seed=0)
    assert s.shape == (37,) and env.unwrapped.dt == pytest.approx(0.02) and info["gait_reference"].shape == (12,)
    env.close()
    env = Go1WalkEnv(gait=TrotGait(stride=0.0))  # trot in place on the gait reference: stays up
    s, info = env.reset(seed=1)
    for _ in range(50):  # 1 s
        s, r, term, trunc, info = env.step(info["gait_reference"])
        assert not term and abs(r) < 0.05
    assert s[2] > 0.2
    with pytest.raises(ValueError, match="12 finite joint targets"):
        env.step(np.full(12, np.nan))
    env.data.qpos[:2] = [0.9, 0.0]  # near the first waypoint
    mujoco.mj_forward(env.model, env.data)
    _, _, _, _, info = env.step(HOME_JOINTS)
    assert info["goal_index"] == 1 and info["goal"][0] == pytest.approx(2.0)
    env.data.qpos[3:7] = [0.5, 0.5, 0.5, 0.5]  # on its side
    assert env.fallen()


def test_go1_walk_cost_prefers_tracking_the_references():
    import torch

    from ws_mppi.costs import Go1WalkCost
    from ws_sim.go1 import TrotGait

    gait = TrotGait()
    cost = Go1WalkCost(gait, 0.02, lambda: np.array([5.0, 0.0]))
    m, d = load_go1()
    s0 = torch.tensor(np.concatenate([d.qpos, d.qvel]))
    good = s0.repeat(1, 5, 1).clone()
    good[..., 2] = 0.30
    good[..., 19] = cost.v_des  # walking at v_des toward the goal
    u = torch.tensor(gait.reference(np.arange(5) * 0.02)).unsqueeze(0)
    base = cost(s0, u, good).item()
    assert base == pytest.approx(0.0, abs=1e-9)
    for idx, val in ((19, 0.0), (2, 0.2), (4, 0.3), (1, 0.3)):
        worse = good.clone()
        worse[..., idx] = val
        assert cost(s0, u, worse).item() > base + 1e-3
    fallen = good.clone()
    fallen[:, 2:, 2] = 0.1
    assert cost(s0, u, fallen).item() >= 100.0


def test_oracle_mppi_walks_go1_forward_on_the_gait_prior():
    """MPPI on MuJoCo itself, started from the trot reference, walks toward the waypoint."""
    import torch

    from ws_mppi.costs import Go1WalkCost
    from ws_mppi.dynamics import OracleDynamics
    from ws_mppi.mppi import MPPI, MPPIConfig
    from ws_sim.go1_env import Go1WalkEnv

    env = Go1WalkEnv()
    oracle = MuJoCoOracle(env.model, env.frame_skip, nthread=2)
    prior = lambda t0, n: env.gait.reference((t0 + np.arange(n)) * env.dt)  # noqa: E731
    mppi = MPPI(OracleDynamics(oracle), Go1WalkCost(env.gait, env.dt, lambda: env.goal), env.action_space.low,
                env.action_space.high, MPPIConfig(horizon=15, samples=32, temperature=1.0, noise_sigma=0.1),
                seed=0, prior=prior)
    torch.testing.assert_close(mppi.nominal, torch.tensor(prior(0, 15), dtype=torch.float32))
    s, _ = env.reset(seed=0)
    progress = 0.0
    for t in range(100):  # 2 s
        s, r, term, _, _ = env.step(mppi.plan(s, t).action)
        progress += r
        assert not term
    oracle.close()
    assert progress > 0.4 and abs(s[1]) < 0.2 and s[2] > 0.22, (progress, s[:3])


def test_ws_mppi_run_walks_go1_with_oracle_and_films_it(tmp_path, capsys):
    import json

    from ws_cli.main import main

    out = tmp_path / "run"
    assert main(["mppi", "run", "--env", "go1", "--dynamics", "oracle", "--compare", "zero", "--episodes", "1",
                 "--max-steps", "60", "--out", str(out), "--threads", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    oracle, zero = report["controllers"]["oracle"], report["controllers"]["zero"]
    assert oracle["episodes_detail"][0]["forward_distance_m"] > 0.25 > abs(zero["episodes_detail"][0]["forward_distance_m"])
    assert oracle["reward_mean"] > zero["reward_mean"] + 0.2  # eq. 36 progress, metres
    assert report["video"].endswith(".mp4") and (out / report["video"].split("/")[-1]).stat().st_size > 1000


def test_collect_go1_segments_are_labelled_with_progress(tmp_path):
    from ws_cli.main import main
    from ws_sim.dataset import read_dataset

    assert main(["collect", "--env", "go1", "--out", str(tmp_path), "--train-episodes", "1", "--full-episodes", "0",
                 "--val-episodes", "1", "--max-steps", "8", "--horizon", "5", "--samples", "10", "--threads", "2"]) == 0
    ds = read_dataset(tmp_path / "train.hdf5")
    assert ds.env == "go1" and ds.observations.shape[1] == 37 and len(ds) > 0
    progress = ds.next_observations[:, 0] - ds.observations[:, 0]  # goal ahead along +x
    np.testing.assert_allclose(ds.rewards, progress, atol=1e-4)


def test_ws_films_go1_without_mujoco_gl_in_the_environment(tmp_path):
    """Regression: mujoco picks its GL backend at import; `ws` must set osmesa before that."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "ws_cli.main", "mppi", "run", "--env", "go1", "--compare", "",
                           "--episodes", "1", "--max-steps", "20", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert "video" in report, proc.stderr[-2000:]
    # the default Go1 dynamics is the shipped learned model, and it walks forward
    (name, ctrl), = report["controllers"].items()
    assert name == "learned (go1_mlp_ensemble.pt)" and ctrl["episodes_detail"][0]["forward_distance_m"] > 0.05
