"""Checkpoints cannot run code: every loader reads tensors and plain data only (``weights_only=True``).

A checkpoint whose unpickling would call a function (here ``open``, which creates a marker
file, or ``os.system``, which touches one) must be refused by each loader with its package's
error naming the file, before the call runs; legitimate checkpoints, including the shipped
ones, still round-trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ws_policy.model import PolicyConfig, build_policy
from ws_policy.train import PolicyCheckpointError, load_policy, save_policy
from ws_worldmodel.checkpoint import (DEFAULT_CHECKPOINTS, FORMAT_TAG, CheckpointError, atomic_torch_save,
                                      load_checkpoint, plain_payload, save_checkpoint)
from ws_worldmodel.pretrain import load_pretrained
from ws_worldmodel.video import experts, revisit
from ws_worldmodel.video.dit import VideoDiT, VideoDiTConfig

SHIPPED = sorted((Path(DEFAULT_CHECKPOINTS["hopper"]).parent).glob("*.pt"))
VIDEO = VideoDiTConfig(image_size=16, patch=8, d_model=32, layers=1, heads=2, chunk=2)


class _OpensMarker:
    """Unpickling calls ``open(marker, "w")``: the marker file appears if the code runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemTouchesMarker:
    """Unpickling calls ``os.system("touch marker")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _hostile_payload(evil) -> dict:
    """What each loader expects to find, with the code-running object inside."""
    return {"format": FORMAT_TAG, "model_type": "mlp_ensemble", "kind": "single",
            "config": {"d_model": 32}, "state_dict": {"w": torch.zeros(2)}, "info": {"note": evil}, "extra": evil}


LOADERS = {
    "policy": (load_policy, PolicyCheckpointError),
    "video_experts": (experts.load, CheckpointError),
    "video_revisit": (revisit.load, CheckpointError),
    "load_checkpoint": (load_checkpoint, CheckpointError),
    "pretrain": (load_pretrained, CheckpointError),
}


@pytest.mark.parametrize("evil", [_OpensMarker, _SystemTouchesMarker], ids=["open", "os.system"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path, loader, evil):
    load, error = LOADERS[loader]
    marker = tmp_path / "code_ran"
    path = tmp_path / "hostile.pt"
    torch.save(_hostile_payload(evil(marker)), path)
    with pytest.raises(Exception) as info:
        load(path)
    assert not marker.exists(), f"{loader} ran code stored in a checkpoint"
    assert info.type is error, info.value
    assert f"{path} is not a safe checkpoint" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_missing_or_junk_file_is_named(tmp_path, loader):
    load, error = LOADERS[loader]
    with pytest.raises(error, match="missing.pt"):
        load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(error, match="junk.pt is corrupt"):
        load(tmp_path / "junk.pt")


def test_payloads_are_saved_as_plain_data():
    @dataclasses.dataclass
    class Cfg:
        lr: float = 1e-3
        kinds: tuple = ("camera",)

    out = plain_payload({"cfg": Cfg(), "where": Path("/tmp/a"), "x": np.float32(0.5), "n": np.int64(3),
                         "arr": np.arange(3), "name": np.str_("go1"), "w": torch.ones(2)})
    assert out["cfg"] == {"lr": 1e-3, "kinds": ("camera",)} and out["where"] == "/tmp/a"
    assert type(out["x"]) is float and type(out["n"]) is int and out["arr"] == [0, 1, 2] and type(out["name"]) is str
    with pytest.raises(TypeError, match=r"payload\['info'\]\['fn'\]"):
        plain_payload({"info": {"fn": object()}})


def test_policy_checkpoint_round_trips_with_numpy_and_path_extras(tmp_path):
    torch.manual_seed(0)
    cfg = PolicyConfig(image_size=32, future_size=16, patch=8, frames=2, stride=4, chunk=4, d_model=32, heads=4,
                       layers=1, vocab=("pick", "red"))
    model = build_policy(cfg).eval()
    extra = {"demos": Path("data/demos.hdf5"), "loss_last": np.float64(0.25), "curve": np.array([0.5, 0.75])}
    path = save_policy(model, tmp_path / "p.pt", extra=extra)
    assert torch.load(path, weights_only=True)["format"] == "worldscape-policy"
    back, payload = load_policy(path)
    assert back.cfg == cfg
    assert payload["extra"] == {"demos": "data/demos.hdf5", "loss_last": 0.25, "curve": [0.5, 0.75]}
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def _video_outputs(model: VideoDiT) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 16, 16, generator=g)
    tt = torch.rand(1, 4, generator=g)
    c = torch.randn(1, 4, max(model.cfg.control_dims), generator=g)
    with torch.no_grad():
        return model(x, tt, c, torch.zeros(1, dtype=torch.long), context=2)


def test_video_experts_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = VideoDiT(VIDEO).eval()
    experts.save_checkpoint(tmp_path / "v.pt", {"config": dataclasses.asdict(VIDEO), "state_dict": model.state_dict(),
                                                "context": 2, "summary": {"init": Path("a.pt"), "loss": np.float32(1)}})
    back, ck = experts.load(tmp_path / "v.pt")
    assert back.cfg == VIDEO and ck["summary"] == {"init": "a.pt", "loss": 1.0}
    assert torch.equal(_video_outputs(back), _video_outputs(model))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt is not a video world model checkpoint"):
        experts.load(tmp_path / "foreign.pt")


def test_revisit_training_writes_a_checkpoint_that_loads_safely(tmp_path):
    args = argparse.Namespace(seed=0, world=128, world_seed=0, d_model=32, layers=1, heads=2, chunk=2, device="cpu",
                              lr=1e-3, batch=1, out=str(tmp_path / "r.pt"), steps=1, frames=4, context=2,
                              max_minutes=None)
    revisit.train(args)
    assert torch.load(tmp_path / "r.pt", weights_only=True)["world"] == {"size": 128, "seed": 0}
    model, ck = revisit.load(tmp_path / "r.pt")
    assert model.cfg.d_model == 32 and ck["context"] == 2 and len(ck["losses"]) == 1


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoints_load_as_plain_data_and_round_trip(tmp_path, path):
    assert isinstance(torch.load(path, map_location="cpu", weights_only=True), dict)
    model, payload = load_checkpoint(path, with_payload=True)
    if payload["model_type"] == "mlp_ensemble":
        again = load_checkpoint(save_checkpoint(model, tmp_path / "again.pt", payload["info"]))
        for k, v in model.state_dict().items():
            assert torch.equal(v, again.state_dict()[k]), k
    else:
        again = load_pretrained(atomic_torch_save(model.payload(payload["info"]), tmp_path / "again.pt"))
        system = next(iter(model.systems))
        cs, ca = len(model.systems[system]["state_channels"]), len(model.systems[system]["action_channels"])
        rng = np.random.default_rng(0)
        states = rng.standard_normal((2, model.history, cs))
        actions = rng.standard_normal((2, model.history + model.horizon, ca))
        np.testing.assert_array_equal(again.predict(system, states, actions), model.predict(system, states, actions))
