"""Trajectory datasets: D4RL-style HDF5 files and Minari datasets through one reader.

A :class:`TrajectoryDataset` is a set of segments (episodes) of full-state transitions
``(s_t, a_t, r_t, s_{t+1})``. It travels with its per-channel metadata
(:class:`~ws_sim.channels.Channel`: body, joint, kind, unit, min, max) and the name of the
environment that made it.

On disk (:func:`write_dataset`, :func:`read_dataset`):

* **HDF5** (``*.hdf5``/``*.h5``), D4RL's layout: ``observations (N, nx)``, ``actions (N, nu)``,
  ``rewards (N,)``, ``terminals (N,)``, ``timeouts (N,)``, plus ``next_observations`` and
  ``infos/qpos``, ``infos/qvel``; metadata as JSON in the root attribute ``worldscape``.
  Plain D4RL-format files (no metadata, with or without ``next_observations``) load too
  when the caller names their environment (or supplies its channels); see
  :func:`read_dataset` for how their rows become transitions.
* **Minari** (a directory), written with ``minari``'s own storage; the metadata is kept in
  the dataset's ``metadata.json`` under ``worldscape``.

Writes are atomic: the data goes to a temporary sibling first and is renamed into place,
so an interrupted write never leaves a half dataset behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from .channels import Channel, channels_from_records, channels_to_records, check_channels_match
from .errors import SimError

__all__ = ["TrajectoryDataset", "DatasetError", "write_dataset", "read_dataset"]

FORMAT_TAG = "worldscape-trajectories"
FORMAT_VERSION = 1


class DatasetError(SimError):
    """Raised for a missing, corrupt or inconsistent dataset (the message names the path)."""


@dataclasses.dataclass
class TrajectoryDataset:
    """Full-state transitions grouped into segments.

    Attributes:
        observations: ``(N, nx)`` states ``s_t = [qpos, qvel]``.
        actions: ``(N, nu)`` actions ``a_t``.
        rewards: ``(N,)`` rewards ``r_t``.
        next_observations: ``(N, nx)`` states ``s_{t+1}``.
        terminals: ``(N,)`` bool, the segment ended by termination after this step.
        timeouts: ``(N,)`` bool, the segment ended by truncation after this step.
        state_channels, action_channels: per-channel metadata (``nx`` and ``nu`` entries).
        env: environment short name (``"hopper"``).
        attrs: free-form provenance (collection settings, seed, code version).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    state_channels: list[Channel]
    action_channels: list[Channel]
    env: str
    attrs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.observations)
        nx, nu = len(self.state_channels), len(self.action_channels)
        shapes = {"observations": (n, nx), "actions": (n, nu), "rewards": (n,),
                  "next_observations": (n, nx), "terminals": (n,), "timeouts": (n,)}
        for key, shape in shapes.items():
            arr = np.asarray(getattr(self, key))
            if arr.shape != shape:
                raise DatasetError(f"{key} has shape {arr.shape}, expected {shape} "
                                   f"({nx} state and {nu} action channels)")
        self.terminals = np.asarray(self.terminals, bool)
        self.timeouts = np.asarray(self.timeouts, bool)
        if n and not (self.terminals[-1] or self.timeouts[-1]):
            raise DatasetError("the last transition must end its segment (terminal or timeout)")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def num_segments(self) -> int:
        return int(np.count_nonzero(self.terminals | self.timeouts))

    def segment_bounds(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` index ranges of the segments."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        starts = np.concatenate([[0], ends[:-1]])
        return list(zip(starts.tolist(), ends.tolist()))

    def segments(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield each segment as a dict of arrays (``observations`` has ``T + 1`` rows)."""
        for a, b in self.segment_bounds():
            yield {"observations": np.concatenate([self.observations[a:b], self.next_observations[b - 1:b]]),
                   "actions": self.actions[a:b], "rewards": self.rewards[a:b],
                   "terminations": self.terminals[a:b], "truncations": self.timeouts[a:b]}

    def check_matches(self, state_channels: Sequence[Channel], action_channels: Sequence[Channel],
                      what: str = "dataset") -> None:
        """Raise :class:`~ws_sim.channels.ChannelMismatchError` unless the channels match."""
        check_channels_match(state_channels, self.state_channels, f"{what} state")
        check_channels_match(action_channels, self.action_channels, f"{what} action")

    @staticmethod
    def concatenate(parts: Sequence["TrajectoryDataset"]) -> "TrajectoryDataset":
        """Join datasets of the same channels into one."""
        if not parts:
            raise DatasetError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            p.check_matches(first.state_channels, first.action_channels)
        cat = lambda k: np.concatenate([getattr(p, k) for p in parts])  # noqa: E731
        return TrajectoryDataset(cat("observations"), cat("actions"), cat("rewards"),
                                 cat("next_observations"), cat("terminals"), cat("timeouts"),
                                 list(first.state_channels), list(first.action_channels),
                                 first.env, dict(first.attrs))

    def metadata(self) -> dict:
        return {"format": FORMAT_TAG, "version": FORMAT_VERSION, "env": self.env,
                "state_channels": channels_to_records(self.state_channels),
                "action_channels": channels_to_records(self.action_channels),
                "attrs": self.attrs}


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_dataset(ds: TrajectoryDataset, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write a dataset atomically.

    Args:
        ds: the dataset.
        path: ``*.hdf5``/``*.h5`` for D4RL-style HDF5; anything else is a Minari directory.
        fmt: ``"hdf5"`` or ``"minari"`` to override the guess from the suffix.

    Returns:
        the written path.
    """
    path = Path(path)
    fmt = fmt or ("hdf5" if path.suffix in (".hdf5", ".h5") else "minari")
    if fmt not in ("hdf5", "minari"):
        raise DatasetError(f"unknown dataset format {fmt!r}; use 'hdf5' or 'minari'")
    tmpdir = _atomic_target(path)
    try:
        if fmt == "hdf5":
            tmp = tmpdir / path.name
            _write_hdf5(ds, tmp)
            os.replace(tmp, path)
            shutil.rmtree(tmpdir)
        else:
            _write_minari(ds, tmpdir / "data")
            _replace(tmpdir / "data", path)
            shutil.rmtree(tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return path


def _write_hdf5(ds: TrajectoryDataset, path: Path) -> None:
    nq = sum(c.kind == "qpos" for c in ds.state_channels)
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=ds.observations.astype(np.float32))
        f.create_dataset("actions", data=ds.actions.astype(np.float32))
        f.create_dataset("rewards", data=ds.rewards.astype(np.float32))
        f.create_dataset("next_observations", data=ds.next_observations.astype(np.float32))
        f.create_dataset("terminals", data=ds.terminals)
        f.create_dataset("timeouts", data=ds.timeouts)
        f.create_dataset("infos/qpos", data=ds.observations[:, :nq].astype(np.float32))
        f.create_dataset("infos/qvel", data=ds.observations[:, nq:].astype(np.float32))
        f.attrs["worldscape"] = json.dumps(ds.metadata())


def _write_minari(ds: TrajectoryDataset, path: Path) -> None:
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    nx, nu = len(ds.state_channels), len(ds.action_channels)
    lo = np.array([c.min for c in ds.action_channels], np.float32)
    hi = np.array([c.max for c in ds.action_channels], np.float32)
    storage = MinariStorage.new(path, observation_space=gym.spaces.Box(-np.inf, np.inf, (nx,), np.float32),
                                action_space=gym.spaces.Box(lo, hi, (nu,), np.float32))
    buffers = [EpisodeBuffer(id=i, observations=seg["observations"].astype(np.float32),
                             actions=seg["actions"].astype(np.float32),
                             rewards=seg["rewards"].astype(np.float64).tolist(),
                             terminations=seg["terminations"].tolist(),
                             truncations=seg["truncations"].tolist())
               for i, seg in enumerate(ds.segments())]
    storage.update_episodes(buffers)
    storage.update_metadata({"dataset_id": f"worldscape/{ds.env}-v0", "worldscape": json.dumps(ds.metadata())})


def read_dataset(path: str | os.PathLike, state_channels: Sequence[Channel] | None = None,
                 action_channels: Sequence[Channel] | None = None, env: str | None = None) -> TrajectoryDataset:
    """Load a D4RL-style HDF5 file or a Minari dataset directory.

    A file with WorldScape metadata (``ws collect``, ``ws corpus build``) is read as written.
    A plain D4RL-format file (no metadata) is read by D4RL's convention: row ``t`` holds
    ``(o_t, a_t, r_t, terminals[t], timeouts[t])``; ``terminals[t]`` means the environment
    terminated in ``s_{t+1}``, ``timeouts[t]`` that the episode was truncated after step
    ``t``; the next row of the same episode holds ``s_{t+1}``. Every row becomes one
    transition, flags kept (``len(result) ==`` the file's rows):

    * the state is ``infos/qpos ‖ infos/qvel`` where the file has them with ``nq + nv``
      columns (D4RL's ``observations`` omit the root x of Hopper and clip velocities), else
      ``observations`` if those have ``nq + nv`` columns;
    * the successor ``s_{t+1}`` is ``next_observations[t]`` when that key holds full states;
      otherwise the next row's state within an episode, and at an episode's last row (whose
      successor D4RL does not store) one step of the environment's own MuJoCo model from
      ``s_t`` with ``a_t`` (:class:`~ws_sim.oracle.MuJoCoOracle`; equal to the recorded
      physics up to float32 rounding of the stored state). ``attrs["simulated_successors"]``
      counts those steps;
    * a last row with neither flag (a file cut mid-episode) ends with a timeout;
    * the channels' ``min``/``max`` become the file's own data ranges (states and
      successors; actions), as ``ws collect`` writes them for its datasets.

    Args:
        path: the file or directory.
        state_channels, action_channels: the channels of files without WorldScape metadata
            (default: the environment's); checked against the metadata when both exist.
        env: environment short name (:func:`ws_sim.envs.make_env`: ``"hopper"``, ...) of a
            file without metadata: its channels, and the model that simulates missing
            successors. Ignored for files with metadata.

    Raises:
        DatasetError: missing path, unreadable or corrupt file, missing keys, a plain file
            without its environment (or channels), an unknown ``env``, states whose width is
            not the environment's ``nq + nv``.
        ChannelMismatchError: the metadata disagrees with the given channels.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist (expected a .hdf5/.h5 file or a Minari directory)")
    try:
        ds = _read_minari(path) if path.is_dir() else _read_hdf5(path, state_channels, action_channels, env)
    except (DatasetError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"dataset {path} is not readable: {e}") from e
    except (OSError, KeyError) as e:
        raise DatasetError(f"dataset {path} is corrupt or not a trajectory dataset: {e}") from e
    if state_channels is not None and action_channels is not None:
        ds.check_matches(state_channels, action_channels, f"dataset {path}")
    return ds


def _metadata_from_json(text: str, path: Path) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"dataset {path} has unreadable WorldScape metadata: {e}") from e
    if meta.get("format") != FORMAT_TAG:
        raise DatasetError(f"dataset {path} metadata is not {FORMAT_TAG!r}")
    return meta


def _read_hdf5(path: Path, state_channels, action_channels, env) -> TrajectoryDataset:
    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals", "timeouts") if k not in f]
        if missing:
            raise DatasetError(f"dataset {path} lacks the D4RL keys {missing}")
        obs = f["observations"][()]
        acts = f["actions"][()]
        rew = f["rewards"][()].reshape(-1)
        term = f["terminals"][()].astype(bool).reshape(-1)
        tout = f["timeouts"][()].astype(bool).reshape(-1)
        full = (np.concatenate([f["infos/qpos"][()], f["infos/qvel"][()]], axis=1)
                if "infos/qpos" in f and "infos/qvel" in f else None)
        nxt = f["next_observations"][()] if "next_observations" in f else None
        meta = _metadata_from_json(f.attrs["worldscape"], path) if "worldscape" in f.attrs else None
    if meta is not None:  # written by WorldScape: observations and next_observations are full states
        sc = channels_from_records(meta["state_channels"])
        ac = channels_from_records(meta["action_channels"])
        if nxt is None:
            raise DatasetError(f"dataset {path} has WorldScape metadata but no next_observations")
        return TrajectoryDataset(obs, acts, rew, nxt, term, tout, sc, ac, meta.get("env", env or "unknown"),
                                 meta.get("attrs", {}))
    return _read_plain_d4rl(path, obs, acts, rew, term, tout, full, nxt, state_channels, action_channels, env)


def _read_plain_d4rl(path, obs, acts, rew, term, tout, full, nxt, state_channels, action_channels,
                     env) -> TrajectoryDataset:
    """A D4RL-format file without metadata: every row one transition (see :func:`read_dataset`)."""
    from .channels import data_ranges

    senv = None
    if state_channels is None or action_channels is None:
        if env is None:
            raise DatasetError(f"dataset {path} carries no channel metadata; name its environment "
                               f"(read_dataset(..., env=NAME), ws ... --env NAME)")
        senv = _make_env(env, path)
        state_channels = state_channels if state_channels is not None else senv.state_channels
        action_channels = action_channels if action_channels is not None else senv.action_channels
    sc, ac = list(state_channels), list(action_channels)
    nx, n = len(sc), len(obs)
    what = f"environment {env!r}" if env else "the given channels"
    if full is not None and full.shape[1] == nx:
        states = full
    elif obs.ndim == 2 and obs.shape[1] == nx:
        states = obs
    else:
        got = f"infos/qpos + infos/qvel have {full.shape[1]} columns" if full is not None else (
            f"observations have {obs.shape[-1]} columns and there is no infos/qpos, infos/qvel")
        raise DatasetError(f"dataset {path}: {got}, but the state of {what} is qpos + qvel with {nx}")
    if len(states) != n:
        raise DatasetError(f"dataset {path}: infos/qpos has {len(states)} rows but observations {n}")
    tout = tout.copy()
    if n and not (term[-1] or tout[-1]):
        tout[-1] = True  # the file ends mid-episode: truncated there
    ends = term | tout
    simulated = 0
    if nxt is not None and nxt.ndim == 2 and nxt.shape[1] == nx:
        succ = nxt
    else:
        succ = np.empty_like(states, dtype=np.float64)
        succ[:-1] = states[1:]
        last = np.flatnonzero(ends)
        if len(last):
            if env is None:
                raise DatasetError(f"dataset {path} does not store the successors of its {len(last)} episode "
                                   f"ends (no full-state next_observations); name its environment to simulate them")
            if senv is None:
                senv = _make_env(env, path)
            succ[last] = _simulate_steps(senv, states[last], acts[last])
            simulated = len(last)
    if senv is not None:
        senv.close()
    if n:
        sc = data_ranges(sc, np.concatenate([states, succ]))
        ac = data_ranges(ac, acts)
    attrs = {"source": "d4rl-format file without WorldScape metadata", "file": str(path),
             "simulated_successors": simulated}
    return TrajectoryDataset(states, acts, rew, succ, term, tout, sc, ac, env or "unknown", attrs)


def _make_env(env: str, path: Path):
    from .envs import UnknownEnvironmentError, make_env

    try:
        return make_env(env)
    except UnknownEnvironmentError as e:
        raise DatasetError(f"dataset {path}: {e}") from e


def _simulate_steps(env, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """``(E, nx)`` states after one control step of ``env``'s MuJoCo model from each ``(state, action)``."""
    from .oracle import MuJoCoOracle

    oracle = MuJoCoOracle(env.model, env.frame_skip, nthread=1)
    try:
        return np.stack([oracle.rollout(np.asarray(s, np.float64), np.asarray(a, np.float64)[None, None])[0, 0]
                         for s, a in zip(states, actions)])
    finally:
        oracle.close()


def _read_minari(path: Path) -> TrajectoryDataset:
    from minari.dataset.minari_storage import MinariStorage

    try:
        raw = MinariStorage.read_raw_metadata(path)
    except ValueError as e:
        raise DatasetError(f"{path} is not a Minari dataset: {e}") from e
    if "worldscape" not in raw:
        raise DatasetError(f"Minari dataset {path} carries no WorldScape channel metadata")
    meta = _metadata_from_json(raw["worldscape"], path)
    storage = MinariStorage.read(path)
    obs, acts, rew, nxt, term, tout = [], [], [], [], [], []
    for ep in storage.get_episodes(range(storage.total_episodes)):
        o = np.asarray(ep["observations"])
        obs.append(o[:-1])
        nxt.append(o[1:])
        acts.append(np.asarray(ep["actions"]))
        rew.append(np.asarray(ep["rewards"]))
        t = np.asarray(ep["terminations"], bool)
        tr = np.asarray(ep["truncations"], bool)
        if not (t[-1] or tr[-1]):
            tr = tr.copy()
            tr[-1] = True
        term.append(t)
        tout.append(tr)
    sc = channels_from_records(meta["state_channels"])
    ac = channels_from_records(meta["action_channels"])
    if not obs:
        empty = np.zeros((0, len(sc)))
        return TrajectoryDataset(empty, np.zeros((0, len(ac))), np.zeros(0), empty, np.zeros(0, bool),
                                 np.zeros(0, bool), sc, ac, meta.get("env", "unknown"), meta.get("attrs", {}))
    return TrajectoryDataset(np.concatenate(obs), np.concatenate(acts), np.concatenate(rew),
                             np.concatenate(nxt), np.concatenate(term), np.concatenate(tout),
                             sc, ac, meta.get("env", "unknown"), meta.get("attrs", {}))
