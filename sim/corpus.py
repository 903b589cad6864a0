"""The multi-system pretraining corpus (``ws corpus build``; seed 003, sec. 5 and App. C.1).

The seed pretrains on UniTraj and Open X-Embodiment, which cannot be downloaded here, so
the corpus is generated from the simulators on this machine: dm_control suite domains and
Gymnasium MuJoCo environments, with a behaviour mix per episode:

* ``random``: i.i.d. uniform actions over the action bounds;
* ``pink`` / ``red``: coloured (1/f^beta, beta = 1 or 2) Gaussian noise over time, scaled to
  the bounds: temporally correlated exploration (Eberhard et al., ICLR 2023);
* ``mppi``: oracle MPPI on MuJoCo itself, for the systems that have an MPPI cost here
  (supplied by the caller as a factory, so this core module imports no planner).

Every episode stores the full state ``[qpos, qvel]`` at each control step, as one segment
of a :class:`~ws_sim.dataset.TrajectoryDataset`. The work is cut into shards (a few
episodes of one system); each shard is written atomically as ``<out>/<system>/shard_NNN.hdf5``,
so an interrupted build resumes by skipping the shards that exist. Shards run in parallel
worker processes. Hopper-v5 and Walker2d-v5 (zero-shot) and Pusher-v5 (few-shot, an arm
unlike the pretraining systems) are held out of pretraining.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np

from .channels import channels_from_model
from .dataset import TrajectoryDataset, read_dataset, write_dataset
from .errors import SimError

__all__ = ["SYSTEMS", "HELD_OUT_ZERO_SHOT", "HELD_OUT_FEW_SHOT", "SystemSpec", "make_system", "coloured_noise",
           "build_corpus", "load_system", "load_datasets", "CorpusError"]

log = logging.getLogger(__name__)


class CorpusError(SimError):
    """Raised for an unknown system or an unreadable corpus directory."""


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """Where a system comes from: ``"dmc:walker/walk"`` or ``"gym:HalfCheetah-v5"``."""

    name: str
    source: str
    episode_steps: int = 500


def _dmc(domain: str, task: str, steps: int = 500) -> SystemSpec:
    return SystemSpec(f"dmc-{domain}-{task}", f"dmc:{domain}/{task}", steps)


def _gym(env_id: str, steps: int = 500) -> SystemSpec:
    return SystemSpec(f"gym-{env_id.split('-')[0].lower()}", f"gym:{env_id}", steps)


#: every system the corpus knows, in build order
SYSTEMS: dict[str, SystemSpec] = {s.name: s for s in [
    _dmc("walker", "walk"), _dmc("cheetah", "run"), _dmc("hopper", "hop"), _dmc("cartpole", "swingup"),
    _dmc("acrobot", "swingup"), _dmc("pendulum", "swingup"), _dmc("reacher", "easy"), _dmc("finger", "spin"),
    _dmc("fish", "swim"), _dmc("swimmer", "swimmer6"), _dmc("humanoid", "walk"), _dmc("quadruped", "walk"),
    _dmc("manipulator", "bring_ball"), _dmc("ball_in_cup", "catch"), _dmc("point_mass", "easy"),
    _gym("HalfCheetah-v5"), _gym("Ant-v5"), _gym("Swimmer-v5"), _gym("Reacher-v5"), _gym("InvertedDoublePendulum-v5"),
    _gym("Hopper-v5", 1000), _gym("Walker2d-v5", 1000), _gym("Pusher-v5"),
]}
HELD_OUT_ZERO_SHOT = ("gym-hopper", "gym-walker2d")
HELD_OUT_FEW_SHOT = ("gym-pusher",)
BEHAVIOURS = ("random", "pink", "red", "mppi")


class _System:
    """A uniform face over dm_control and Gymnasium: reset, step, full state, bounds."""

    def __init__(self, spec: SystemSpec, seed: int):
        self.spec = spec
        kind, ident = spec.source.split(":", 1)
        self.kind = kind
        if kind == "dmc":
            from dm_control import suite

            domain, task = ident.split("/")
            self.env = suite.load(domain, task, task_kwargs={"random": seed})
            self.model = self.env.physics.model._model
            self.data = self.env.physics.data._data
            aspec = self.env.action_spec()
            self.low, self.high = aspec.minimum.astype(np.float64), aspec.maximum.astype(np.float64)
            self.dt = float(self.env.control_timestep())
        elif kind == "gym":
            import gymnasium as gym

            self.env = gym.make(ident)
            self.model, self.data = self.env.unwrapped.model, self.env.unwrapped.data
            self.low = self.env.action_space.low.astype(np.float64)
            self.high = self.env.action_space.high.astype(np.float64)
            self.dt = float(self.env.unwrapped.dt)
            self._seed = seed
        else:
            raise CorpusError(f"unknown system source {spec.source!r}")
        self.state_channels, self.action_channels = channels_from_model(self.model)

    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def reset(self, seed: int) -> np.ndarray:
        if self.kind == "dmc":
            self.env.task.random.seed(seed)
            self.env.reset()
        else:
            self.env.reset(seed=seed)
        return self.state()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        if self.kind == "dmc":
            ts = self.env.step(action)
            return self.state(), float(ts.reward or 0.0), bool(ts.last())
        _, r, term, trunc, _ = self.env.step(action)
        return self.state(), float(r), bool(term)


def make_system(name: str, seed: int = 0) -> _System:
    """Instantiate a corpus system by name (see :data:`SYSTEMS`).

    Raises:
        CorpusError: unknown name.
    """
    if name not in SYSTEMS:
        raise CorpusError(f"unknown corpus system {name!r}; known: {sorted(SYSTEMS)}")
    return _System(SYSTEMS[name], seed)


def coloured_noise(beta: float, steps: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^beta, unit variance per dimension: ``(steps, dim)``.

    beta = 0 is white, 1 pink, 2 red (Brownian-like). Made by shaping white noise in the
    frequency domain (Timmer & Koenig 1995 style, without random amplitudes).
    """
    freqs = np.fft.rfftfreq(steps)
    freqs[0] = freqs[1] if steps > 1 else 1.0
    scale = freqs ** (-beta / 2.0)
    spec = (rng.standard_normal((dim, len(freqs))) + 1j * rng.standard_normal((dim, len(freqs)))) * scale
    x = np.fft.irfft(spec, n=steps, axis=-1).T
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)


def _resolve(factory: str) -> Callable:
    import importlib

    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def _episode_actions(behaviour: str, steps: int, low: np.ndarray, high: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray | None:
    mid, half = (high + low) / 2, (high - low) / 2
    if behaviour == "random":
        return rng.uniform(low, high, (steps, len(low)))
    if behaviour in ("pink", "red"):
        noise = coloured_noise(1.0 if behaviour == "pink" else 2.0, steps, len(low), rng)
        return np.clip(mid + half * 0.5 * noise, low, high)
    return None  # mppi: decided online


def _run_shard(name: str, shard: int, episodes: int, seed: int, behaviours: tuple[str, ...],
               out: str, steps: int | None, mppi_factory: str | None) -> tuple[str, int, int]:
    """Worker: roll out one shard and write it atomically. Returns (name, shard, transitions)."""
    import torch

    torch.set_num_threads(1)
    spec = SYSTEMS[name]
    steps = steps or spec.episode_steps
    base = seed * 1_000_003 + shard * 1009 + sum(map(ord, name))
    system = _System(spec, base)
    mppi = _resolve(mppi_factory)(system) if ("mppi" in behaviours and mppi_factory) else None
    choices = [b for b in behaviours if b != "mppi" or mppi is not None]
    rng = np.random.default_rng(base)
    obs, act, rew, nxt, term, tout, used = [], [], [], [], [], [], []
    for e in range(episodes):
        behaviour = choices[int(rng.integers(len(choices)))]
        used.append(behaviour)
        s = system.reset(int(base + e))
        plan = _episode_actions(behaviour, steps, system.low, system.high, rng)
        for t in range(steps):
            a = plan[t] if plan is not None else np.clip(mppi(s, t), system.low, system.high)
            s2, r, done = system.step(a)
            obs.append(s)
            act.append(a)
            rew.append(r)
            nxt.append(s2)
            last = done or t == steps - 1
            term.append(bool(done))
            tout.append(bool(last and not done))
            s = s2
            if last:
                break
    from .channels import data_ranges

    states = np.asarray(obs, np.float32)
    ds = TrajectoryDataset(states, np.asarray(act, np.float32), np.asarray(rew, np.float32),
                           np.asarray(nxt, np.float32), np.asarray(term), np.asarray(tout),
                           data_ranges(system.state_channels, np.concatenate([states, np.asarray(nxt)])),
                           data_ranges(system.action_channels, np.asarray(act)), name,
                           {"source": spec.source, "shard": shard, "seed": seed, "behaviours": used,
                            "control_dt": system.dt})
    write_dataset(ds, Path(out) / name / f"shard_{shard:03d}.hdf5")
    return name, shard, len(ds)


def build_corpus(out: str | os.PathLike, systems: list[str], episodes: int, seed: int = 0,
                 episodes_per_shard: int = 5, workers: int = 1, behaviours: tuple[str, ...] = BEHAVIOURS,
                 steps: int | None = None, progress: bool = True, mppi_factory: str | None = None) -> dict:
    """Generate (or finish) a corpus.

    Args:
        out: corpus directory.
        systems: names from :data:`SYSTEMS`.
        episodes: episodes per system.
        seed: corpus seed (shards derive theirs from it, the system and the shard number).
        episodes_per_shard: episodes in one shard (the unit of resumption and of parallelism).
        workers: worker processes (1 runs in this process).
        behaviours: the mix to draw each episode's behaviour from.
        steps: episode length override (default: each system's own).
        progress: tqdm bar over shards.
        mppi_factory: ``"module:function"`` of a callable ``f(system) -> policy or None`` that
            gives the ``mppi`` behaviour (a policy maps ``(state, t)`` to an action); the
            outer layer passes ``ws_mppi.collect:corpus_mppi_policy``. Without it, or where
            it returns None, episodes draw from the other behaviours.

    Returns:
        the manifest written to ``out/manifest.json`` (systems, shard counts, held-out sets).

    Raises:
        CorpusError: unknown system or behaviour.
    """
    from tqdm.auto import tqdm

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise CorpusError(f"unknown corpus systems {unknown}; known: {sorted(SYSTEMS)}")
    bad = [b for b in behaviours if b not in BEHAVIOURS]
    if bad:
        raise CorpusError(f"unknown behaviours {bad}; choose from {BEHAVIOURS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name in systems:
        n_shards = -(-episodes // episodes_per_shard)
        for k in range(n_shards):
            n = min(episodes_per_shard, episodes - k * episodes_per_shard)
            if not (out / name / f"shard_{k:03d}.hdf5").exists():
                jobs.append((name, k, n, seed, tuple(behaviours), str(out), steps, mppi_factory))
    bar = tqdm(total=len(jobs), desc="corpus shards", unit="shard", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _run_shard(*job)
            bar.update(1)
    else:
        import multiprocessing

        # spawn, not fork: the parent may hold MuJoCo rollout or torch thread pools
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_run_shard, *job) for job in jobs]):
                fut.result()
                bar.update(1)
    bar.close()
    manifest = {"seed": seed, "episodes_per_system": episodes, "behaviours": list(behaviours),
                "held_out_zero_shot": list(HELD_OUT_ZERO_SHOT), "held_out_few_shot": list(HELD_OUT_FEW_SHOT),
                "systems": {name: {"source": SYSTEMS[name].source,
                                   "shards": sorted(p.name for p in (out / name).glob("shard_*.hdf5"))}
                            for name in systems}}
    old = out / "manifest.json"
    if old.exists():
        prev = json.loads(old.read_text())
        for k, v in prev.get("systems", {}).items():
            manifest["systems"].setdefault(k, v)
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, old)
    return manifest


def load_system(corpus: str | os.PathLike, name: str) -> TrajectoryDataset:
    """All shards of one system as one dataset (channel ranges: the union over shards).

    Raises:
        CorpusError: ``corpus`` is not a folder, or holds no ``<name>/shard_NNN.hdf5``.
    """
    corpus = Path(corpus)
    expected = f"expected a corpus folder with {name}/shard_NNN.hdf5 from ws corpus build"
    if not corpus.exists():
        raise CorpusError(f"corpus {corpus} does not exist ({expected})")
    if not corpus.is_dir():
        raise CorpusError(f"corpus {corpus} is a file, not a folder ({expected}; a trajectory file is read "
                          f"with load_datasets)")
    shards = sorted((corpus / name).glob("shard_*.hdf5"))
    if not shards:
        raise CorpusError(f"corpus {corpus} has no shard of {name!r} ({expected})")
    parts = [read_dataset(p) for p in shards]
    ds = TrajectoryDataset.concatenate(parts)
    lo = np.min([[c.min for c in p.state_channels] for p in parts], axis=0)
    hi = np.max([[c.max for c in p.state_channels] for p in parts], axis=0)
    alo = np.min([[c.min for c in p.action_channels] for p in parts], axis=0)
    ahi = np.max([[c.max for c in p.action_channels] for p in parts], axis=0)
    ds.state_channels = [dataclasses.replace(c, min=float(a), max=float(b)) for c, a, b in zip(ds.state_channels, lo, hi)]
    ds.action_channels = [dataclasses.replace(c, min=float(a), max=float(b)) for c, a, b in zip(ds.action_channels, alo, ahi)]
    return ds


TRAJECTORY_SUFFIXES = (".hdf5", ".h5")


def load_datasets(path: str | os.PathLike, systems: list[str] | None = None,
                  env: str | None = None) -> dict[str, TrajectoryDataset]:
    """The trajectory data at ``path``, by system name, for the evaluation protocols.

    ``path`` may be:

    * a corpus folder (``<path>/<system>/shard_NNN.hdf5``, :func:`build_corpus`): the named
      ``systems`` (default :data:`HELD_OUT_ZERO_SHOT`), each its shards joined by
      :func:`load_system`;
    * a folder of trajectory files (``*.hdf5``/``*.h5`` directly in it, such as D4RL files):
      one dataset per file, named by the file's stem (``systems``, when given, picks stems);
    * one trajectory file: one dataset named by its stem.

    Files are read by :func:`~ws_sim.dataset.read_dataset`; those without WorldScape metadata
    need ``env`` (their channels, and the MuJoCo model that simulates the successors a D4RL
    file does not store). Channel ranges are each file's data ranges (union over a corpus
    system's shards); the protocols may replace them (see ``ws_worldmodel.protocols``).

    Args:
        path: corpus folder, folder of files, or file.
        systems: corpus systems, or file stems, to load.
        env: environment short name (:func:`ws_sim.envs.make_env`) of plain D4RL files.

    Returns:
        ``{name: dataset}`` in the order of ``systems`` (or of sorted file names).

    Raises:
        CorpusError: ``path`` does not exist, a folder holds neither the corpus systems nor
            trajectory files, a named system or file is missing.
        DatasetError: a file is unreadable or lacks what it needs (its environment, keys).
    """
    path = Path(path)
    expected = ("expected a corpus folder (<system>/shard_NNN.hdf5 from ws corpus build), a folder of "
                ".hdf5/.h5 trajectory files, or one such file")
    if not path.exists():
        raise CorpusError(f"{path} does not exist ({expected})")
    if path.is_file():
        return {path.stem: read_dataset(path, env=env)}
    names = list(systems) if systems else list(HELD_OUT_ZERO_SHOT)
    if any((path / n).is_dir() for n in names):
        return {n: load_system(path, n) for n in names}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TRAJECTORY_SUFFIXES)
    if not files:
        raise CorpusError(f"{path} holds neither corpus systems {names} nor trajectory files ({expected})")
    if systems:
        by_stem = {p.stem: p for p in files}
        missing = [n for n in systems if n not in by_stem]
        if missing:
            raise CorpusError(f"{path} has no trajectory file named {missing}; it holds {sorted(by_stem)}")
        files = [by_stem[n] for n in systems]
    return {p.stem: read_dataset(p, env=env) for p in files}
