"""Plain D4RL-format HDF5 files (no WorldScape metadata) through the reader and the command line.

The file is written here the way D4RL writes its MuJoCo datasets, from real Gymnasium
Hopper-v5 rollouts: row ``t`` holds ``(o_t, a_t, r_t, terminals[t], timeouts[t])`` with
Gymnasium's 11-d observation (no root x), the full state in ``infos/qpos`` and
``infos/qvel``, and no successor of an episode's last step.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from ws_cli.main import main
from ws_sim.dataset import DatasetError, read_dataset
from ws_sim.envs import make_env

# the shipped pretrained WestWorld (history 10, horizon 20; Hopper unseen in its pretraining)
CHECKPOINT = str(Path(__file__).resolve().parents[1] / "ws_worldmodel" / "checkpoints" / "westworld_pretrained.pt")
TIMEOUT = 40  # steps after which the gentle episodes are truncated


def _rollouts():
    """Four episodes of full-scale random actions (Hopper falls: terminal) and two of small
    ones truncated after TIMEOUT steps. Returns per-episode dicts including the true final state."""
    env = gym.make("Hopper-v5")
    u = env.unwrapped
    episodes = []
    for seed, scale in [(1, 1.0), (2, 1.0), (4, 1.0), (6, 1.0), (0, 0.1), (5, 0.1)]:
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        ep = {k: [] for k in ("obs", "act", "rew", "qpos", "qvel", "term", "tout")}
        for t in range(TIMEOUT):
            a = scale * rng.uniform(-1.0, 1.0, 3)
            ep["qpos"].append(u.data.qpos.copy())
            ep["qvel"].append(u.data.qvel.copy())
            ep["obs"].append(obs)
            obs, r, term, _, _ = env.step(a)
            ep["act"].append(a)
            ep["rew"].append(r)
            ep["term"].append(term)
            ep["tout"].append(not term and t == TIMEOUT - 1)
            if term:
                break
        ep["final"] = np.concatenate([u.data.qpos, u.data.qvel])
        episodes.append({k: (np.asarray(v) if k != "final" else v) for k, v in ep.items()})
    env.close()
    return episodes


@pytest.fixture(scope="module")
def episodes():
    eps = _rollouts()
    assert sum(bool(e["term"][-1]) for e in eps) >= 3 and sum(bool(e["tout"][-1]) for e in eps) >= 1
    return eps


def write_d4rl(path, episodes, next_observations: bool = False):
    """A D4RL-format file: float32 like D4RL, no ``worldscape`` attribute."""
    cat = lambda k: np.concatenate([e[k] for e in episodes])  # noqa: E731
    with h5py.File(path, "w") as f:
        f["observations"] = cat("obs").astype(np.float32)
        f["actions"] = cat("act").astype(np.float32)
        f["rewards"] = cat("rew").astype(np.float32)
        f["terminals"] = cat("term")
        f["timeouts"] = cat("tout")
        f["infos/qpos"] = cat("qpos").astype(np.float32)
        f["infos/qvel"] = cat("qvel").astype(np.float32)
        if next_observations:  # D4RL's v2 files: the Gymnasium observation of s_{t+1}
            nxt = [np.concatenate([e["obs"][1:], [np.concatenate([e["final"][1:6], np.clip(e["final"][6:], -10, 10)])]])
                   for e in episodes]
            f["next_observations"] = np.concatenate(nxt).astype(np.float32)
    return path


@pytest.fixture(scope="module")
def d4rl_file(tmp_path_factory, episodes):
    folder = tmp_path_factory.mktemp("d4rl")
    return write_d4rl(folder / "hopper-random.hdf5", episodes)


@pytest.mark.parametrize("next_observations", [False, True])
def test_reader_keeps_every_row_and_the_episode_end_flags(tmp_path, episodes, next_observations):
    path = write_d4rl(tmp_path / "d.hdf5", episodes, next_observations)
    rows = sum(len(e["act"]) for e in episodes)
    ds = read_dataset(path, env="hopper")
    env = make_env("hopper")
    assert len(ds) == rows and ds.env == "hopper"
    ds.check_matches(env.state_channels, env.action_channels)
    np.testing.assert_array_equal(ds.terminals, np.concatenate([e["term"] for e in episodes]))
    np.testing.assert_array_equal(ds.timeouts, np.concatenate([e["tout"] for e in episodes]))
    assert ds.num_segments == len(episodes)
    # the state is qpos || qvel (root x included), not D4RL's 11-d observation
    np.testing.assert_allclose(ds.observations, np.concatenate([np.c_[e["qpos"], e["qvel"]] for e in episodes]),
                               atol=1e-6)
    for (a, b), e in zip(ds.segment_bounds(), episodes):
        assert b - a == len(e["act"])
        # within an episode the successor is the next row's state
        np.testing.assert_allclose(ds.next_observations[a:b - 1], ds.observations[a + 1:b])
        # the last transition is kept; its successor (not in the file) is simulated from the stored state
        np.testing.assert_allclose(ds.next_observations[b - 1], e["final"], atol=1e-4)
        assert env.task.is_healthy(ds.next_observations[b - 1]) == (not e["term"][-1])
    assert ds.attrs["simulated_successors"] == len(episodes)
    # ranges are the file's own data ranges
    z = ds.state_channels[1]
    both = np.concatenate([ds.observations[:, 1], ds.next_observations[:, 1]])
    assert z.name == "qpos/rootz" and (z.min, z.max) == (pytest.approx(both.min()), pytest.approx(both.max()))


def test_reader_needs_the_environment_of_a_plain_file(d4rl_file):
    with pytest.raises(DatasetError, match="carries no channel metadata; name its environment"):
        read_dataset(d4rl_file)
    with pytest.raises(DatasetError, match="unknown environment 'cheetah'"):
        read_dataset(d4rl_file, env="cheetah")
    with pytest.raises(DatasetError, match="state of environment 'walker2d' is qpos \\+ qvel with 18"):
        read_dataset(d4rl_file, env="walker2d")


def test_ws_train_on_a_plain_d4rl_file(tmp_path, d4rl_file, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--env", "hopper", "--train", str(d4rl_file), "--val", str(d4rl_file), "--out", str(ckpt),
                 "--ensemble-size", "2", "--elites", "1", "--hidden", "16", "--layers", "2", "--epochs", "2",
                 "--steps-per-epoch", "5", "--threads", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["checkpoint"] == str(ckpt) and ckpt.is_file()
    from ws_worldmodel.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    assert [c.name for c in model.state_channels] == [c.name for c in make_env("hopper").state_channels]


@pytest.mark.parametrize("where", ["file", "folder"])
def test_ws_eval_zero_shot_on_a_plain_d4rl_file_or_folder(tmp_path, d4rl_file, where, capsys):
    target = d4rl_file if where == "file" else d4rl_file.parent
    out = tmp_path / "zs"
    assert main(["eval", "zero-shot", "--env", "hopper", "--corpus", str(target), "--checkpoints",
                 f"ww={CHECKPOINT}", "--history", "5", "--horizon", "5", "--stride", "10", "--max-windows", "8",
                 "--threads", "1", "--out", str(out)]) == 0
    res = json.loads((out / "zero_shot.json").read_text())["results"]
    assert set(res) == {"ww", "hold-last-state"}
    r = res["ww"]["hopper-random"]
    assert r["segments"] > 0 and np.isfinite(r["mae"]) and np.isfinite(r["mse"])
    assert (out / "zero_shot_hopper-random.png").is_file()
    assert "hopper-random" in capsys.readouterr().out


def test_zero_shot_names_what_it_expects(tmp_path, d4rl_file, capsys):
    base = ["eval", "zero-shot", "--checkpoints", CHECKPOINT, "--out", str(tmp_path / "zs")]
    assert main(base + ["--corpus", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "a folder of .hdf5/.h5 trajectory files, or one such file" in err
    assert main(base + ["--corpus", str(d4rl_file)]) == 2  # no --env for a file without metadata
    assert "name its environment" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(base + ["--corpus", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds neither corpus systems" in err and "Traceback" not in err
    from ws_sim.corpus import CorpusError, load_datasets, load_system

    with pytest.raises(CorpusError, match="is a file, not a folder"):
        load_system(d4rl_file, "gym-hopper")
    assert list(load_datasets(d4rl_file.parent, env="hopper")) == ["hopper-random"]
