"""Demonstrations for the policy: scripted-expert episodes with RGB-D video, stored in HDF5.

:func:`collect_demos` (from :mod:`ws_sim.demos`, with :class:`Episode`, :class:`DemoError` and
:data:`MAX_DEPTH`, all importable from here) runs :class:`ws_sim.piper_tasks.ScriptedExpert` on a
task (a share of the episodes with deliberate failures) and :func:`write_demos` stores them atomically (a
temporary sibling renamed into place). Layout of the file:

* root attributes: ``format`` ``"worldscape-demos"``, ``version``, ``task``, ``camera``,
  ``fovy`` (the camera's vertical field of view, degrees), ``workspace``, ``randomize``, ``image_size``, ``control_dt`` (s), ``action_low``/``action_high``;
* one group per episode ``ep_00000`` ...: ``rgb (T+1, H, W, 3) uint8``, ``depth (T+1, H, W)
  float16`` (metres, clipped to ``MAX_DEPTH``), ``qpos (T+1, 8)``, ``qvel (T+1, 8)``,
  ``objects (T+1, 17)``, ``actions (T, 7)``, optionally ``actor (T,) int8`` (who acted at each
  step, 1 a human or expert teleoperator, 0 the policy: recordings and DAgger data); attributes
  ``instruction``, ``success``, ``failure`` (``""`` for a competent expert), ``seed``;
  with ``wrist`` (root attribute, and ``wrist_fovy``) also ``wrist_rgb`` and ``wrist_depth`` like ``rgb`` and ``depth``;
  a file recorded without images (``ws policy collect --no-images``) has ``image_size`` 0 and empty
  ``(T+1, 0, 0)`` images.

:class:`DemoDataset` reads a file back and cuts training windows (:meth:`DemoDataset.window`).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ws_sim.atomic import atomic_write
from ws_sim.demos import MAX_DEPTH, DemoError, Episode, collect_demos

__all__ = ["Episode", "DemoDataset", "DemoError", "collect_demos", "write_demos", "read_demos", "MAX_DEPTH",
           "FORMAT_TAG"]

FORMAT_TAG = "worldscape-demos"
FORMAT_VERSION = 1


def write_demos(episodes: list[Episode], attrs: dict, path: str | os.PathLike) -> Path:
    """Write demonstrations atomically (see the module docstring); returns the path."""

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["version"] = FORMAT_TAG, FORMAT_VERSION
            for k, v in attrs.items():
                f.attrs[k] = v
            for i, ep in enumerate(episodes):
                g = f.create_group(f"ep_{i:05d}")
                for name in ("rgb", "depth", "qpos", "qvel", "objects", "actions"):
                    data = getattr(ep, name)
                    g.create_dataset(name, data=data, compression="gzip" if name in ("rgb", "depth") and data.size else None)
                g.attrs["instruction"], g.attrs["success"] = ep.instruction, ep.success
                g.attrs["failure"], g.attrs["seed"] = ep.failure, ep.seed
                if ep.actor is not None:
                    g.create_dataset("actor", data=np.asarray(ep.actor, dtype=np.int8))
                if ep.wrist_rgb is not None:
                    for name in ("wrist_rgb", "wrist_depth"):
                        g.create_dataset(name, data=getattr(ep, name), compression="gzip")

    return atomic_write(path, write)


def read_demos(path: str | os.PathLike) -> tuple[list[Episode], dict]:
    """Read a demonstration file.

    Raises:
        DemoError: missing file, not a WorldScape demonstration file, or inconsistent episodes.
    """
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"no demonstration file at {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT_TAG:
                raise DemoError(f"{path} is not a WorldScape demonstration file (format {f.attrs.get('format')!r})")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            eps = []
            for name in sorted(k for k in f if k.startswith("ep_")):
                g = f[name]
                eps.append(Episode(**{k: g[k][()] for k in ("rgb", "depth", "qpos", "qvel", "objects", "actions")},
                                   instruction=str(g.attrs["instruction"]), success=bool(g.attrs["success"]),
                                   failure=str(g.attrs["failure"]), seed=int(g.attrs["seed"]),
                                   actor=g["actor"][()] if "actor" in g else None,
                                   **{k: g[k][()] for k in ("wrist_rgb", "wrist_depth") if k in g}))
    except OSError as e:
        raise DemoError(f"{path} is not a readable HDF5 file: {e}") from e
    if not eps:
        raise DemoError(f"{path} holds no episodes")
    return eps, attrs


class DemoDataset:
    """Training windows over demonstrations.

    A window at step ``t`` of an episode: the current RGB ``(H, W, 3)`` and depth ``(H, W)``,
    the proprioceptive state ``qpos[t]`` ``(8,)``, the instruction, the future frames
    ``t + s, t + 2s, ..., t + F s`` (``stride`` s, ``frames`` F) and the action chunk
    ``a_t .. a_{t+L-1}`` (``chunk`` L); steps past the end repeat the last frame and the last
    action (the arm holds still after the episode). ``valid`` marks real (not padded) actions.

    Args:
        episodes: the demonstrations.
        chunk: action chunk length L.
        frames: future frames F.
        stride: steps between future frames.
        successes_only: drop failed episodes (behaviour cloning learns from successes).
        indicators: optional per-episode ``(T,)`` improvement indicators (0/1) for an
            advantage-conditioned policy (:mod:`ws_policy.hitl`); a window carries its step's
            (default 1).
        use_actions: False for episodes used as videos only (``ws policy train --videos``): every
            window's ``valid`` is all False, so its action terms carry no loss.
    """

    def __init__(self, episodes: list[Episode], chunk: int = 8, frames: int = 2, stride: int = 4,
                 successes_only: bool = True, indicators: list[np.ndarray] | None = None, use_actions: bool = True):
        if indicators is not None and len(indicators) != len(episodes):
            raise DemoError(f"{len(indicators)} indicator arrays for {len(episodes)} episodes")
        keep = [i for i, e in enumerate(episodes) if e.success or not successes_only]
        self.episodes = [episodes[i] for i in keep]
        self.indicators = None if indicators is None else [np.asarray(indicators[i]) for i in keep]
        if not self.episodes:
            raise DemoError("no episodes left (all failed and successes_only is set)")
        self.chunk, self.frames, self.stride = int(chunk), int(frames), int(stride)
        self.use_actions = bool(use_actions)
        self.index = [(i, t) for i, e in enumerate(self.episodes) for t in range(len(e.actions))]

    def __len__(self) -> int:
        return len(self.index)

    def window(self, k: int) -> dict:
        i, t = self.index[k]
        e = self.episodes[i]
        T = len(e.actions)
        steps = np.minimum(t + np.arange(self.chunk), T - 1)
        future = np.minimum(t + self.stride * np.arange(1, self.frames + 1), T)
        wrist = {} if e.wrist_rgb is None else {"wrist_rgb": e.wrist_rgb[t],
                                                "wrist_depth": e.wrist_depth[t].astype(np.float32)}
        return {**wrist, "rgb": e.rgb[t], "depth": e.depth[t].astype(np.float32), "qpos": e.qpos[t], "objects": e.objects[t],
                "instruction": e.instruction, "future_rgb": e.rgb[future],
                "future_depth": e.depth[future].astype(np.float32), "actions": e.actions[steps],
                "valid": ((t + np.arange(self.chunk)) < T) & self.use_actions,
                "indicator": 1 if self.indicators is None else int(self.indicators[i][t])}
