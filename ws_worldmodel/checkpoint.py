"""Checkpoints that load without the training script.

A checkpoint is one ``torch.save`` file holding a plain dict: the format tag, the model
type, its config, the state and action channel metadata, the weights (normalisation
statistics are buffers among them), the code version and free-form training info. It is
written to a temporary sibling and renamed, so a crash never leaves half a checkpoint.

Checkpoints never run code when loaded: every payload is reduced to tensors and plain data
(:func:`plain_payload`) before it is written, and every loader reads with
``torch.load(..., weights_only=True)`` (:func:`safe_torch_load`), which refuses a file whose
unpickling would build anything else, before building it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ws_sim.channels import channels_from_records, channels_to_records

from .checkpoint_io import (FORMAT_TAG, FORMAT_VERSION, CheckpointError, atomic_torch_save, code_version, plain_payload,
                            read_payload, safe_torch_load)
from .mlp_ensemble import MLPEnsemble, MLPEnsembleConfig

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "code_version", "DEFAULT_CHECKPOINTS",
           "atomic_torch_save", "read_payload", "safe_torch_load", "plain_payload"]

_MODELS = {"mlp_ensemble": (MLPEnsemble, MLPEnsembleConfig)}

#: checkpoints shipped with the package (made by ``ws collect`` + ``ws train``, see README)
DEFAULT_CHECKPOINTS = {
    "hopper": Path(__file__).parent / "checkpoints" / "hopper_mlp_ensemble.pt",
    "walker2d": Path(__file__).parent / "checkpoints" / "walker2d_mlp_ensemble.pt",
    "go1": Path(__file__).parent / "checkpoints" / "go1_mlp_ensemble.pt",
}


def save_checkpoint(model: MLPEnsemble, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write an MLPEnsemble atomically to ``path``; returns the path."""
    payload = {
        "format": FORMAT_TAG, "version": FORMAT_VERSION, "model_type": model.name,
        "config": dataclasses.asdict(model.config),
        "state_channels": channels_to_records(model.state_channels),
        "action_channels": channels_to_records(model.action_channels),
        "state_dict": model.state_dict(), "code_version": code_version(), "info": info or {},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, with_payload: bool = False):
    """Load a model checkpoint.

    Args:
        path: the ``.pt`` file.
        with_payload: also return the raw dict (info, code version).

    Returns:
        the model in eval mode (and the payload when asked): an ``MLPEnsemble``, or a
        ``ws_worldmodel.pretrain.TrajectoryWorldModel`` for WestWorld, TrajWorld and TDM.

    Raises:
        CheckpointError: missing file, not a safe checkpoint (its unpickling would run code;
            it is refused unrun), not a torch file, not a WorldScape checkpoint, an
            unknown model type, or weights that do not fit the stored config.
    """
    path = Path(path)
    payload = read_payload(path)
    kind = payload.get("model_type")
    if kind in ("westworld", "trajworld", "tdm", "padded_mlp_ensemble"):
        from .pretrain import TrajectoryWorldModel

        try:
            model = TrajectoryWorldModel.from_payload(payload)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit its own config: {e}") from e
        return (model, payload) if with_payload else model
    if kind not in _MODELS:
        raise CheckpointError(f"checkpoint {path} holds an unknown model type {kind!r}")
    cls, cfg_cls = _MODELS[kind]
    try:
        cfg = cfg_cls(**payload["config"])
        model = cls(channels_from_records(payload["state_channels"]),
                    channels_from_records(payload["action_channels"]), cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {e}") from e
    model.eval()
    return (model, payload) if with_payload else model
