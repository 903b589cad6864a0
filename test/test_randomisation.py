"""The Go1 across the sim-to-real gap: randomised evaluation physics (real MuJoCo)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ws_sim.go1 import HOME_JOINTS
from ws_sim.randomisation import Go1Randomisation, RandomisedGo1Env


def _nominal_draw(latency_s: float = 0.0) -> dict:
    """The MJCF's own values as a draw (joint damping 0.5, no friction, floor friction 0.9)."""
    ones = np.ones(12)
    return {"latency_s": latency_s, "kp_scale": ones, "kv_scale": ones, "joint_damping": 0.5 * ones,
            "joint_friction": 0 * ones, "trunk_mass_kg": 0.0, "trunk_com_m": np.zeros(3), "ground_friction": 0.9}


def test_a_draw_changes_the_evaluated_physics_and_keeps_the_nominal_model():
    draw = Go1Randomisation().sample(np.random.default_rng(3))
    env = RandomisedGo1Env(draw)
    nom, m = env.nominal_model, env.model
    np.testing.assert_allclose(m.actuator_gainprm[:, 0], nom.actuator_gainprm[:, 0] * draw["kp_scale"])
    np.testing.assert_allclose(m.actuator_biasprm[:, 2], nom.actuator_biasprm[:, 2] * draw["kv_scale"])
    trunk = m.body("trunk").id
    assert m.body_mass[trunk] == pytest.approx(nom.body_mass[trunk] + draw["trunk_mass_kg"])
    assert m.geom_friction[m.geom("floor").id, 0] == pytest.approx(draw["ground_friction"])
    assert 0.8 <= draw["kp_scale"].min() and draw["kp_scale"].max() <= 1.2 and 0 <= draw["latency_s"] <= 0.02
    with pytest.raises(ValueError, match="longer than a control step"):
        RandomisedGo1Env(_nominal_draw(latency_s=0.05))


def test_latency_delays_each_command_by_whole_physics_steps():
    """With the nominal physics and a latency of one control step, every step runs the previous command:
    the states equal the nominal robot's one command behind."""
    late = RandomisedGo1Env(_nominal_draw(latency_s=0.02))
    ref = RandomisedGo1Env(None)
    s1, _ = late.reset(seed=0)
    s2, _ = ref.reset(seed=0)
    np.testing.assert_array_equal(s1, s2)
    commands = [HOME_JOINTS + 0.1 * np.sin(k) for k in range(5)]
    previous = HOME_JOINTS.copy()
    for cmd in commands:
        s1, *_ = late.step(cmd)
        s2, *_ = ref.step(previous)
        previous = cmd
        np.testing.assert_allclose(s1, s2, atol=1e-12)


def test_ws_mppi_randomised_reports_nominal_and_randomised_walks(tmp_path, capsys):
    from ws_cli.main import main

    assert main(["mppi", "randomised", "--dynamics", "default,oracle", "--seeds", "0", "--seconds", "0.1",
                 "--samples", "8", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "randomised.json").read_text())
    for label in ("default", "oracle"):
        rows = report["controllers"][label]
        assert rows["randomised"]["per_seed"][0]["draw"]["latency_s"] >= 0
        assert rows["nominal"]["per_seed"][0]["draw"] is None and rows["nominal"]["walks"] == 1
    assert main(["mppi", "randomised", "--dynamics", "default", "--seeds", "1", "--seconds", "0.2", "--on-estimate",
                 "--threads", "1", "--out", str(tmp_path / "e")]) == 0
    on_est = json.loads((tmp_path / "e" / "randomised.json").read_text())
    assert on_est["on_estimate"] and "velocity_rmse" in on_est["controllers"]["default"]["randomised"]["per_seed"][0]
    capsys.readouterr()
    assert main(["mppi", "randomised", "--env", "hopper", "--out", str(tmp_path / "h")]) == 2


def test_randomised_collection_plans_each_episode_on_its_own_physics():
    """``ws collect --randomise``: every episode gets its own draw, and its kept rollouts are that draw's
    MuJoCo trajectories (the nominal model does not reproduce them); no draw repeats an evaluation seed's."""
    from ws_mppi.collect import CollectConfig, collect, randomised_go1_episodes
    from ws_mppi.config import ControllerConfig
    from ws_mppi.mppi import MPPIConfig
    from ws_sim.oracle import MuJoCoOracle

    make = randomised_go1_episodes(max_episode_steps=3)
    envs = {}

    def env_for_seed(seed):
        envs[seed] = make(seed)
        return envs[seed]

    env_for_seed.describe = make.describe

    cfg = ControllerConfig(mppi=MPPIConfig(horizon=4, samples=8, temperature=1.0, noise_sigma=0.1))
    base = RandomisedGo1Env(None)
    _, val, _ = collect(base, CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=3, seed=7),
                        cfg, nthread=1, env_for_seed=env_for_seed)
    assert sorted(envs) == [7, 8]
    assert envs[7].draw["ground_friction"] != envs[8].draw["ground_friction"]
    eval_draw = Go1Randomisation().sample(np.random.default_rng(8))  # what 'ws mppi randomised --seeds 8' walks on
    assert eval_draw["ground_friction"] != envs[8].draw["ground_friction"]
    seg = next(iter(val.segments()))
    own = MuJoCoOracle(envs[8].model, envs[8].frame_skip, nthread=1)
    nominal = MuJoCoOracle(base.nominal_model, base.frame_skip, nthread=1)
    pred_own = own.rollout(seg["observations"][0], seg["actions"][None])[0]
    pred_nominal = nominal.rollout(seg["observations"][0], seg["actions"][None])[0]
    np.testing.assert_allclose(pred_own, seg["observations"][1:], atol=1e-4)
    assert np.abs(pred_nominal - seg["observations"][1:]).max() > 1e-3
    assert val.attrs["episode_envs"]["draw_stream"] == "numpy.random.default_rng([seed, 1])"
