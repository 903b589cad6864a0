"""Checkpoint files, below every model: the format tag, safe reading and atomic writing.

The loaders (:func:`ws_worldmodel.checkpoint.load_checkpoint`, ``TrajectoryWorldModel.load``)
and the writers of every model type use these, so they live apart from the module that knows the
model types (which would otherwise import the trajectory models that import it back).
:mod:`ws_worldmodel.checkpoint` re-exports them all; the file format is described there.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

from ws_sim.atomic import atomic_write

from .errors import WorldModelError

__all__ = ["FORMAT_TAG", "FORMAT_VERSION", "CheckpointError", "code_version", "plain_payload", "atomic_torch_save",
           "safe_torch_load", "read_payload"]

FORMAT_TAG = "worldscape-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(WorldModelError):
    """Raised for a missing, corrupt or foreign checkpoint file (the message names the path)."""


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("worldscape")
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        v = "0+unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            v += "+g" + rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return v


_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def plain_payload(obj, where: str = "payload"):
    """A copy of ``obj`` that ``torch.load(..., weights_only=True)`` reads back: tensors, dicts
    (``OrderedDict`` state dicts keep their ``_metadata``), lists, tuples, sets, str, bytes,
    bool, int, float, complex, None, torch dtypes, devices and sizes, as they are; numpy scalars
    become Python numbers, numpy arrays nested lists, paths str, dataclasses dicts (rebuild
    them with their class on load).

    Raises:
        TypeError: any other object (its place in ``obj`` is named), which could only be
            stored as code to run on load.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, str):  # subclasses (str enums...) as their plain value
        return str.__str__(obj)
    if isinstance(obj, (int, float)):
        return int(obj) if isinstance(obj, int) else float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain_payload(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[plain_payload(k, f"{where} key")] = plain_payload(v, f"{where}[{k!r}]")
        if isinstance(getattr(obj, "_metadata", None), dict):  # a module state dict's versions
            out._metadata = plain_payload(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [plain_payload(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else set(items) if isinstance(obj, (set, frozenset)) else items
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} at {where} in a checkpoint: "
                    "only tensors and plain data load without running code")


def atomic_torch_save(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` of :func:`plain_payload` ``(payload)`` through a temporary sibling and a
    rename (never a half-written file); returns ``path``.

    Raises:
        TypeError: ``payload`` holds an object that is not a tensor or plain data.
    """
    payload = plain_payload(payload)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def safe_torch_load(path: str | os.PathLike, map_location="cpu", error: type[Exception] = CheckpointError,
                    what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)``: tensors and plain data only; no code in the file runs.

    Args:
        map_location: as ``torch.load``'s.
        error: the exception class to raise (a package's own checkpoint error).
        what: how messages name the file (``"checkpoint"``, ``"policy checkpoint"``...).

    Returns:
        the object the file holds (for WorldScape files a dict).

    Raises:
        error: the file is missing; it is not a safe checkpoint (unpickling it would build
            something other than tensors and plain data, for instance call a function; it is
            refused before anything runs); it is corrupt or not a torch file. The message names
            the path.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler stopped before building anything else
        glob = re.search(r"GLOBAL ([\w.]+)", str(e))
        if glob:
            raise error(f"{what} {path} is not a safe checkpoint: unpickling it would call {glob.group(1)}, "
                        "which could run code; refused unrun (only tensors and plain data load)") from e
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        raise error(f"{what} {path} is corrupt or not a safe checkpoint (only tensors and plain data load): "
                    f"{detail.group(1) if detail else str(e).strip().splitlines()[0]}") from e
    except Exception as e:  # torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise error(f"{what} {path} is corrupt or not a torch file: {type(e).__name__}: {first}") from e


def read_payload(path: str | os.PathLike) -> dict:
    """Read and check a checkpoint's dict.

    Raises:
        CheckpointError: missing file, not a safe checkpoint (:func:`safe_torch_load`), not a
            torch file, not a WorldScape checkpoint.
    """
    path = Path(path)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise CheckpointError(f"checkpoint {path} is not a WorldScape checkpoint")
    return payload
