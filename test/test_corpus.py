"""The pretraining corpus: behaviours, shards, resumption, parallel workers."""

from __future__ import annotations

import numpy as np
import pytest

from ws_cli.main import main
from ws_sim.corpus import (HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT, SYSTEMS, CorpusError, build_corpus, coloured_noise,
                           load_system, make_system)

FACTORY = "ws_mppi.collect:corpus_mppi_policy"


def test_coloured_noise_concentrates_power_at_low_frequencies():
    rng = np.random.default_rng(0)
    for beta, lo_share in ((0.0, (0.05, 0.2)), (1.0, (0.3, 1.0)), (2.0, (0.8, 1.0))):
        x = coloured_noise(beta, 1024, 200, rng)
        np.testing.assert_allclose(x.std(0), 1.0, rtol=1e-6)
        p = np.abs(np.fft.rfft(x, axis=0)) ** 2
        share = p[1:52].sum() / p[1:].sum()  # power in the lowest 10% of frequencies
        assert lo_share[0] < share < lo_share[1], (beta, share)


def test_every_system_builds_and_exposes_its_full_state():
    for name in SYSTEMS:
        sys_ = make_system(name, seed=0)
        s = sys_.reset(0)
        assert s.shape == (sys_.model.nq + sys_.model.nv,) == (len(sys_.state_channels),)
        s2, _, _ = sys_.step((sys_.low + sys_.high) / 2)
        assert np.all(np.isfinite(s2))
    assert set(HELD_OUT_ZERO_SHOT + HELD_OUT_FEW_SHOT) <= set(SYSTEMS)
    with pytest.raises(CorpusError, match="unknown corpus system 'nope'"):
        make_system("nope")


def test_build_is_resumable_and_parallel_builds_match(tmp_path):
    systems = ["dmc-cartpole-swingup", "gym-hopper"]
    kw = dict(episodes=3, episodes_per_shard=2, steps=30, seed=4, progress=False, mppi_factory=FACTORY)
    manifest = build_corpus(tmp_path / "a", systems, workers=1, **kw)
    assert manifest["systems"]["gym-hopper"]["shards"] == ["shard_000.hdf5", "shard_001.hdf5"]
    a = load_system(tmp_path / "a", "dmc-cartpole-swingup")
    assert a.num_segments == 3 and len(a) == 90  # cartpole never terminates: 3 x 30 steps
    # resume: delete one shard, build again, get the same bytes back and leave the others alone
    shard = tmp_path / "a" / "dmc-cartpole-swingup" / "shard_001.hdf5"
    other = tmp_path / "a" / "gym-hopper" / "shard_000.hdf5"
    mtime = other.stat().st_mtime_ns
    shard.unlink()
    build_corpus(tmp_path / "a", systems, workers=1, **kw)
    np.testing.assert_array_equal(load_system(tmp_path / "a", "dmc-cartpole-swingup").observations, a.observations)
    assert other.stat().st_mtime_ns == mtime
    # two worker processes produce the same corpus
    build_corpus(tmp_path / "b", systems, workers=2, **kw)
    for name in systems:
        np.testing.assert_array_equal(load_system(tmp_path / "b", name).observations,
                                      load_system(tmp_path / "a", name).observations)


def test_behaviour_mix_includes_oracle_mppi_where_a_cost_exists(tmp_path):
    build_corpus(tmp_path, ["gym-hopper"], episodes=2, episodes_per_shard=2, steps=15, behaviours=("mppi",),
                 progress=False, mppi_factory=FACTORY)
    ds = load_system(tmp_path, "gym-hopper")
    assert ds.attrs["behaviours"] == ["mppi", "mppi"]
    assert ds.rewards.mean() > 1.0  # MPPI hops forward: more than the healthy bonus alone
    with pytest.raises(CorpusError, match="unknown behaviours"):
        build_corpus(tmp_path, ["gym-hopper"], episodes=1, behaviours=("dance",), progress=False)


def test_cli_builds_and_rejects_unknown_systems(tmp_path, capsys):
    assert main(["corpus", "build", "--out", str(tmp_path), "--systems", "dmc-pendulum-swingup", "--episodes", "1",
                 "--steps", "10", "--workers", "1"]) == 0
    assert (tmp_path / "dmc-pendulum-swingup" / "shard_000.hdf5").is_file()
    assert (tmp_path / "manifest.json").is_file()
    assert main(["corpus", "build", "--out", str(tmp_path), "--systems", "nope", "--workers", "1"]) == 2
    assert "unknown corpus systems ['nope']" in capsys.readouterr().err
