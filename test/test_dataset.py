"""Dataset write/read in D4RL-style HDF5 and Minari, with metadata, and its failure modes."""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np
import pytest

from ws_sim.channels import ChannelMismatchError
from ws_sim.dataset import DatasetError, TrajectoryDataset, read_dataset, write_dataset
from ws_sim.envs import make_env


def _assert_same(a: TrajectoryDataset, b: TrajectoryDataset):
    for k in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a.terminals, b.terminals)
    np.testing.assert_array_equal(a.timeouts, b.timeouts)
    assert a.state_channels == b.state_channels and a.action_channels == b.action_channels
    assert a.env == b.env == "hopper"


@pytest.mark.parametrize("name,fmt", [("train.hdf5", "hdf5"), ("train_minari", "minari")])
def test_round_trip_keeps_data_and_metadata(tmp_path, small_datasets, name, fmt):
    train, _ = small_datasets
    path = write_dataset(train, tmp_path / name)
    back = read_dataset(path)
    _assert_same(train, back)
    assert back.attrs["split"] == "train"
    assert back.num_segments == train.num_segments > 10
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_collected_segments_are_oracle_consistent(small_datasets, hopper_env):
    """Every kept segment is a real MuJoCo trajectory with Gymnasium rewards."""
    from ws_sim.oracle import MuJoCoOracle

    train, val = small_datasets
    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=1)
    seg = next(iter(val.segments()))
    pred = oracle.rollout(seg["observations"][0], seg["actions"][None])
    np.testing.assert_allclose(pred[0], seg["observations"][1:], atol=1e-4)
    task = hopper_env.task
    r = [task.reward(s, a, s2) for s, a, s2 in zip(seg["observations"][:-1], seg["actions"], seg["observations"][1:])]
    np.testing.assert_allclose(r, seg["rewards"], atol=1e-3)
    # the validation split keeps 30% of 32 samples per step, training 10% (+ all samples of one episode)
    assert val.attrs["collect"]["keep_val"] == 0.3


def test_history_prefix_segments_are_executed_history_then_rollout(hopper_env, small_controller_config):
    """With history Th, a segment is the last Th executed steps, then a sampled rollout: one
    continuous MuJoCo trajectory (what a trajectory world model plans from)."""
    from ws_mppi.collect import CollectConfig, collect
    from ws_sim.oracle import MuJoCoOracle

    th = 5
    _, val, _ = collect(hopper_env, CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=20,
                                                  seed=3, history=th), small_controller_config, nthread=2)
    h = small_controller_config.mppi.horizon
    lengths = [len(s["actions"]) for s in val.segments()]
    assert max(lengths) == th + h and min(lengths) <= h  # early steps have a shorter prefix
    seg = next(s for s in val.segments() if len(s["actions"]) == th + h)
    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=1)
    pred = oracle.rollout(seg["observations"][0], seg["actions"][None])
    np.testing.assert_allclose(pred[0], seg["observations"][1:], atol=1e-4)
    with pytest.raises(ValueError, match="history"):
        collect(hopper_env, CollectConfig(history=-1), small_controller_config)


def test_plain_d4rl_file_loads_with_given_channels(tmp_path, small_datasets):
    """A D4RL file: one row per step (o_t, a_t, r_t, flags), no next_observations, no metadata;
    the successor of an episode's last step is not stored and is simulated (test_d4rl_cli.py
    covers Gymnasium rollouts and the command line)."""
    _, val = small_datasets
    seg = [s for s in val.segments()][:3]
    obs = np.concatenate([s["observations"][:-1] for s in seg])
    n = len(obs)
    ends = np.cumsum([len(s["actions"]) for s in seg]) - 1
    terminals = np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts = np.zeros(n, bool)
    timeouts[ends[1:]] = True
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"] = obs
        f["actions"] = np.concatenate([s["actions"] for s in seg])
        f["rewards"] = np.ones(n)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
    env = make_env("hopper")
    with pytest.raises(DatasetError, match="no channel metadata"):
        read_dataset(tmp_path / "d4rl.hdf5")
    with pytest.raises(DatasetError, match="name its environment to simulate them"):
        read_dataset(tmp_path / "d4rl.hdf5", env.state_channels, env.action_channels)
    ds = read_dataset(tmp_path / "d4rl.hdf5", env.state_channels, env.action_channels, env="hopper")
    assert len(ds) == n and ds.num_segments == 3
    np.testing.assert_array_equal(ds.terminals, terminals)
    np.testing.assert_array_equal(ds.timeouts, timeouts)
    np.testing.assert_allclose(ds.next_observations[0], seg[0]["observations"][1])
    for e, s in zip(ends, seg):  # the oracle-collected data is reproduced by the simulated last step
        np.testing.assert_allclose(ds.next_observations[e], s["observations"][-1], atol=1e-4)


def test_missing_and_corrupt_datasets_are_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope.hdf5")
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(DatasetError, match="bad.hdf5"):
        read_dataset(bad)
    with h5py.File(tmp_path / "partial.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 12))
    with pytest.raises(DatasetError, match="lacks the D4RL keys"):
        read_dataset(tmp_path / "partial.hdf5")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        read_dataset(tmp_path / "emptydir")


def test_dataset_of_another_environment_is_refused(tmp_path, small_datasets):
    train, _ = small_datasets
    path = write_dataset(train, tmp_path / "hopper.hdf5")
    walker = make_env("walker2d")
    with pytest.raises(ChannelMismatchError, match="has 12 channels but the environment has 18"):
        read_dataset(path, walker.state_channels, walker.action_channels)


def test_failed_write_leaves_nothing_half_written(tmp_path, small_datasets):
    train, _ = small_datasets
    target = tmp_path / "out.hdf5"
    write_dataset(train, target)
    before = target.read_bytes()
    broken = dataclasses.replace(train, attrs={"not json": object()})
    with pytest.raises(TypeError):
        write_dataset(broken, target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["out.hdf5"]


def test_inconsistent_arrays_are_refused(small_datasets):
    train, _ = small_datasets
    with pytest.raises(DatasetError, match="actions has shape"):
        dataclasses.replace(train, actions=train.actions[:, :2])


def test_dataset_channels_carry_the_data_ranges(small_datasets):
    train, _ = small_datasets
    z = [c for c in train.state_channels if c.name == "qpos/rootz"][0]
    both = np.concatenate([train.observations[:, 1], train.next_observations[:, 1]])
    assert z.min == pytest.approx(both.min(), abs=1e-6) and z.max == pytest.approx(both.max(), abs=1e-6)
    assert all(-1.0 <= c.min <= c.max <= 1.0 for c in train.action_channels)


def test_atomic_write_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    import pytest

    from ws_sim.atomic import atomic_write

    target = tmp_path / "sub" / "file.bin"

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert list((tmp_path / "sub").iterdir()) == []  # no target, no temporary file
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"whole"))
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"whole" and (target.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's 0600
