"""Expert training (real stable-baselines3 TD3, real MuJoCo Hopper-v5): resume, export, SB3-free reload.

A tiny run (200 then 400 steps, learning from step 100) checks that a second call on the same
directory continues the first one, and that the exported files rebuild SB3's deterministic
policy in plain PyTorch and hold the real ``[qpos, qvel]`` states of the episodes.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from ws_cli.main import main
from ws_mppi.expert import ExpertError, export_reference, load_expert, load_run, train_expert

SMALL = {"learning_starts": 100, "buffer_size": 5_000}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("expert") / "run"
    first = train_expert("hopper", out, 200, algo="td3", seed=3, chunk_steps=200, eval_episodes=1,
                         overrides=SMALL, progress=False)
    first = json.loads(json.dumps(first))  # a snapshot: the second call extends the same run
    second = train_expert("hopper", out, 400, algo="td3", seed=3, chunk_steps=200, eval_episodes=1, progress=False)
    return out, first, second


def test_resume_continues_the_run(run):
    out, first, second = run
    assert first["num_timesteps"] == 200 and [c["steps"] for c in first["curve"]] == [200]
    assert second["num_timesteps"] == 400 and [c["steps"] for c in second["curve"]] == [200, 400]
    assert second["curve"][0] == first["curve"][0]
    assert second["hyperparams"] == {**first["hyperparams"], **SMALL}  # the run keeps its own settings
    assert len(second["commands"]) == 2
    # gradient steps from 101 to 400: the second session counted on from the first one's 100
    assert first["n_updates"] == 100 and second["n_updates"] == 300
    assert second["wall_s"] > first["wall_s"]
    # one checkpoint kept, readable without pickled code
    assert sorted(p.name for p in out.glob("params_*.pt")) == ["params_400.pt"]
    with np.load(out / "buffer_400.npz", allow_pickle=False) as f:
        assert f["observations"].shape == (400, 1, 11) and int(f["pos"]) == 400 and not bool(f["full"])
    ck = torch.load(out / "params_400.pt", weights_only=True)
    assert {"policy", "actor.optimizer", "critic.optimizer"} <= set(ck["params"])
    model, state = load_run(out)
    assert model.num_timesteps == 400 and model.replay_buffer.size() == 400 and model._n_updates == 300
    for k, v in model.policy.state_dict().items():
        torch.testing.assert_close(v, ck["params"]["policy"][k], rtol=0, atol=0)
    assert (out / "curve.csv").read_text().count("\n") == 3 and (out / "curve.png").stat().st_size > 0


def test_resume_refuses_another_seed(run, capsys):
    out, _, _ = run
    with pytest.raises(ExpertError, match="--seed 3"):
        train_expert("hopper", out, 900, seed=4, progress=False)
    assert main(["expert", "train", "--env", "walker2d", "--out", str(out), "--steps", "900", "--seed", "3",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--env hopper" in err


def test_export_matches_sb3_and_real_states(run, tmp_path, capsys):
    out, _, _ = run
    files = export_reference(out, tmp_path / "hopper", n_episodes=1, seed=7, which="last", max_steps=40)
    assert sum(f.stat().st_size for f in files) < 20e6
    actor = load_expert(tmp_path / "hopper")  # plain PyTorch, weights_only
    model, _ = load_run(out)
    env = gym.make("Hopper-v5")
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)] + [env.observation_space.sample() for _ in range(4)])
    sb3_action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actor.act(obs), sb3_action, rtol=0, atol=1e-5)

    with np.load(tmp_path / "hopper" / "episodes.npz", allow_pickle=False) as f:
        states, actions, rewards = f["states_0"], f["actions_0"], f["rewards_0"]
        assert states.dtype == np.float32 and f["seeds"].tolist() == [7]
        assert f["action_mean"].shape == (3,) and f["action_var"].shape == (3,)
        np.testing.assert_allclose(f["action_mean"], actions.mean(0), atol=1e-6)
    u = env.unwrapped
    assert states.shape == (len(actions) + 1, u.model.nq + u.model.nv) and rewards.shape == (len(actions),)
    # the states are MuJoCo's [qpos, qvel]: replaying the actions from the saved initial state reproduces them
    obs0, _ = env.reset(seed=7)
    np.testing.assert_allclose(states[0], np.r_[u.data.qpos, u.data.qvel], atol=1e-6)
    np.testing.assert_allclose(actor.observation(states[0]), obs0, atol=1e-6)  # observation = state minus root x
    u.set_state(states[0, :u.model.nq].astype(np.float64), states[0, u.model.nq:].astype(np.float64))
    for t, a in enumerate(actions):
        _, r, terminated, _, _ = env.step(a)
        np.testing.assert_allclose(np.r_[u.data.qpos, u.data.qvel], states[t + 1], atol=1e-4, err_msg=f"step {t}")
        assert r == pytest.approx(rewards[t], abs=1e-3)
    with np.load(tmp_path / "hopper" / "reference.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["states"], states)
        np.testing.assert_array_equal(np.c_[f["qpos"], f["qvel"]], states)
    meta = json.loads((tmp_path / "hopper" / "expert.json").read_text())
    assert meta["steps_trained"] == 400 and meta["eval_seeds"] == [7] and meta["machine"]["cpu_count"] >= 1
    assert meta["train_commands"][0].startswith("ws expert train --env hopper --algo td3 --steps 200")

    assert main(["expert", "eval", "--expert", str(tmp_path / "hopper"), "--episodes", "1", "--seed", "7",
                 "--max-steps", "40"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["returns"][0] == pytest.approx(meta["returns"][0], abs=1e-2)


def test_load_expert_refuses_foreign_files(tmp_path):
    torch.save({"format": "something-else"}, tmp_path / "actor.pt")
    with pytest.raises(ExpertError, match="not a WorldScape expert"):
        load_expert(tmp_path)
    with pytest.raises(ExpertError, match="does not exist"):
        load_expert(tmp_path / "missing.pt")


def test_reference_accepts_d4rl_format_episodes(tmp_path, hopper_env, small_controller_config):
    import dataclasses

    import h5py

    from ws_mppi.config import ConfigError
    from ws_mppi.runner import load_reference

    rng = np.random.default_rng(0)
    qpos, qvel = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    term, tout = np.zeros(50, bool), np.zeros(50, bool)
    term[19], tout[49] = True, True  # two episodes: rows 0-19 and 20-49
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"] = np.c_[qpos[:, 1:], qvel]
        f["terminals"], f["timeouts"] = term, tout
        f["infos/qpos"], f["infos/qvel"] = qpos, qvel
    np.savez(tmp_path / "qpos_qvel.npz", qpos=qpos, qvel=qvel)
    np.savez(tmp_path / "episodes.npz", states_0=np.c_[qpos, qvel], states_1=np.c_[qpos, qvel][:3])
    cfg = lambda name: dataclasses.replace(small_controller_config, reference=str(tmp_path / name))  # noqa: E731
    first = np.c_[qpos, qvel][:20]  # the first episode only
    np.testing.assert_allclose(load_reference(hopper_env, cfg("d4rl.hdf5")).reference, first, rtol=1e-6)
    for name in ("qpos_qvel.npz", "episodes.npz"):
        np.testing.assert_allclose(load_reference(hopper_env, cfg(name)).reference, np.c_[qpos, qvel], rtol=1e-6)
    np.save(tmp_path / "bare.npy", qpos)
    with pytest.raises(ConfigError, match="D4RL-format HDF5"):
        load_reference(hopper_env, cfg("bare.npy"))


def test_exported_critic_is_sb3s_first_q_network(run, tmp_path):
    """``critic.pt`` (written when the exported actor is the run's last checkpoint) rebuilds SB3's ``critic.qf0``
    in plain PyTorch: ``V(s) = Q(obs(s), pi(obs(s)))`` equals SB3's Q of its own deterministic action."""
    from ws_mppi.expert import load_expert_critic

    out, _, _ = run
    export_reference(out, tmp_path / "hopper", n_episodes=1, seed=7, which="last", max_steps=20)
    critic = load_expert_critic(tmp_path / "hopper")
    model, _ = load_run(out)
    with np.load(tmp_path / "hopper" / "episodes.npz", allow_pickle=False) as f:
        states = torch.as_tensor(f["states_0"], dtype=torch.float64)
    obs = torch.as_tensor(critic.actor.observation(states.numpy()), dtype=torch.float32)
    with torch.no_grad():
        a = model.actor(obs)  # TD3's actor: the scaled action in [-1, 1]
        q_sb3 = model.critic(obs, a)[0][:, 0]
    np.testing.assert_allclose(critic.value_state(states).numpy(), q_sb3.double().numpy(), rtol=1e-5, atol=1e-5)
    assert critic.gamma == pytest.approx(0.99)
    (tmp_path / "hopper" / "critic.pt").unlink()
    with pytest.raises(ExpertError, match="no critic.pt"):
        load_expert_critic(tmp_path / "hopper")
