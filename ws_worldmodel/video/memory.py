"""Memory-aware KV cache for long chunked video generation (seed 001, "Memory-aware KV Cache
Optimization"; issue 9).

Seed 001 names the parts and leaves every formula and size open; this module fills them in as
follows (each a choice made here, not a figure from the seed):

**Three levels.** Every generated frame's keys and values enter a *local sliding window* of the
last ``window`` frames. The first ``anchors`` frames of a rollout are *permanent anchors*: they
are never evicted. A frame that leaves the window is offered to the *global memory pool* of at
most ``pool`` frames. What a new chunk attends to is the anchors, the ``retrieve`` pool frames
whose camera poses are most similar to the chunk's, and the window: at most ``anchors +
retrieve + window`` frames however long the rollout, and the cache itself holds at most
``anchors + pool + window`` (the seed's bounded, "sublinear" memory).

**Pose distance and similarity.** For camera poses ``(t, R)`` (world-from-camera, metres):
``d(i, j) = |t_i - t_j| + rot_scale_m * angle(R_i^T R_j)``, the rotation angle in radians
scaled to metres; the similarity is ``S(i, j) = exp(-d(i, j) / sigma_m)`` (seed 001's
``S(i, j)``, ranked to retrieve).

**Gated deduplication.** A frame leaving the window carries a descriptor (its clean latent,
flattened). It is reconstructed from the descriptors already in memory (anchors and pool) by
ridge-regularised least squares over the ``retrieve`` entries nearest in pose; its *surprise*
is the relative residual ``|f - F^T w| / |f|``. A frame the memory already explains (surprise
below ``dedup_threshold``) is dropped; seed 001 describes this as keeping what is "difficult to
reconstruct from existing memories" (minimum description length).

**Full pool.** When an admitted frame overfills the pool, farthest-point sampling over pose
distance picks the ``pool`` frames to keep: it starts from the frame farthest from the anchors
and repeatedly adds the frame farthest from those chosen, so the frames evicted are those
whose viewpoints the kept ones already cover (seed 001: "based on translation and rotation,
the most representative key viewpoints").

The cache stores opaque per-frame payloads (for :class:`ws_worldmodel.video.dit.VideoDiT`,
one ``(keys, values)`` pair per layer) and never looks inside them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class MemoryConfig:
    """Sizes and thresholds of :class:`MemoryKVCache` (see the module docstring).

    Attributes:
        anchors: first frames kept for the whole rollout.
        window: most recent frames always attended (local sliding window).
        pool: capacity of the global memory pool, frames.
        retrieve: pool frames attended per chunk, the most pose-similar.
        dedup_threshold: surprise (relative reconstruction error) below which a frame leaving
            the window is not admitted to the pool; 0 admits everything.
        rot_scale_m: metres per radian of camera rotation in the pose distance.
        sigma_m: length scale of the similarity ``exp(-d / sigma_m)``, m.
        ridge: regularisation of the reconstruction's least squares.
    """

    anchors: int = 1
    window: int = 8
    pool: int = 16
    retrieve: int = 4
    dedup_threshold: float = 0.05
    rot_scale_m: float = 0.5
    sigma_m: float = 1.0
    ridge: float = 1e-3

    def __post_init__(self):
        if self.anchors < 0 or self.window < 1 or self.pool < 0 or self.retrieve < 0:
            raise ValueError(f"need anchors >= 0, window >= 1, pool >= 0, retrieve >= 0; got {self}")
        if self.retrieve > self.pool:
            raise ValueError(f"retrieve ({self.retrieve}) cannot exceed the pool ({self.pool})")
        if self.dedup_threshold < 0 or self.rot_scale_m < 0 or self.sigma_m <= 0 or self.ridge <= 0:
            raise ValueError(f"need dedup_threshold >= 0, rot_scale_m >= 0, sigma_m > 0, ridge > 0; got {self}")

    @property
    def max_attended(self) -> int:
        """Frames a chunk attends to at most."""
        return self.anchors + self.retrieve + self.window

    @property
    def max_stored(self) -> int:
        """Frames the cache holds at most."""
        return self.anchors + self.pool + self.window


@dataclasses.dataclass
class MemoryEntry:
    """One frame in the cache: its index in the rollout, camera pose (``position`` (3,) m,
    ``rotation`` (3, 3)), dedup descriptor ``(D,)`` and opaque payload (keys and values)."""

    index: int
    position: np.ndarray
    rotation: np.ndarray
    descriptor: np.ndarray
    payload: Any


def pose_distance(p1: np.ndarray, r1: np.ndarray, p2: np.ndarray, r2: np.ndarray, rot_scale_m: float) -> np.ndarray:
    """``|t1 - t2| + rot_scale_m * angle(R1^T R2)``, broadcast over leading axes.

    Args:
        p1, p2: positions ``(..., 3)``, m.
        r1, r2: rotation matrices ``(..., 3, 3)``.

    Returns:
        distances ``(...)``, m.
    """
    trans = np.linalg.norm(np.asarray(p1, float) - np.asarray(p2, float), axis=-1)
    rel = np.einsum("...ji,...jk->...ik", np.asarray(r1, float), np.asarray(r2, float))
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return trans + rot_scale_m * np.arccos(cos)


def farthest_point_order(dist: np.ndarray, start: int) -> list[int]:
    """Greedy farthest-point sampling: indices of ``dist`` ``(n, n)`` in the order chosen,
    beginning at ``start``; each next index maximises its distance to those already chosen
    (ties: the lowest index)."""
    n = len(dist)
    chosen = [int(start)]
    nearest = dist[start].astype(float).copy()
    for _ in range(n - 1):
        nearest[chosen] = -np.inf
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, dist[nxt])
    return chosen


class MemoryKVCache:
    """Anchors, global pool and local window over a rollout's frames (module docstring).

    Usage: :meth:`add` each generated frame (in order), then :meth:`context` for the next chunk's
    camera pose returns the entries to attend to, oldest first.

    Raises:
        ValueError: a pose or descriptor of the wrong shape, or non-finite.
    """

    def __init__(self, cfg: MemoryConfig | None = None):
        self.cfg = cfg or MemoryConfig()
        self.anchors: list[MemoryEntry] = []
        self.pool: list[MemoryEntry] = []
        self.window: list[MemoryEntry] = []
        self.stats = {"added": 0, "admitted": 0, "deduplicated": 0, "evicted": 0}
        self.evicted: list[int] = []  # frame indices evicted from the pool, in order
        self._next = 0

    def __len__(self) -> int:
        return len(self.anchors) + len(self.pool) + len(self.window)

    def reset(self) -> None:
        self.__init__(self.cfg)

    # --- adding frames --------------------------------------------------------------------------
    def add(self, payload: Any, position, rotation=None, descriptor=None) -> MemoryEntry:
        """Add the next frame of the rollout.

        Args:
            payload: what attention needs of the frame (opaque here).
            position: camera position ``(3,)``, m.
            rotation: camera rotation ``(3, 3)`` (default identity).
            descriptor: ``(D,)`` features for deduplication (default: none; such a frame is
                always admitted to the pool).

        Returns:
            the new entry.
        """
        p = np.asarray(position, dtype=np.float64).reshape(-1)
        r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        if p.shape != (3,) or r.shape != (3, 3) or not (np.isfinite(p).all() and np.isfinite(r).all()):
            raise ValueError(f"a camera pose is a finite position (3,) and rotation (3, 3); got {p.shape}, {r.shape}")
        f = None if descriptor is None else np.asarray(descriptor, dtype=np.float64).reshape(-1)
        if f is not None and not np.isfinite(f).all():
            raise ValueError("the frame's descriptor has non-finite values")
        e = MemoryEntry(self._next, p, r, f, payload)
        self._next += 1
        self.stats["added"] += 1
        if len(self.anchors) < self.cfg.anchors:
            self.anchors.append(e)
            return e
        self.window.append(e)
        if len(self.window) > self.cfg.window:
            self._offer(self.window.pop(0))
        return e

    def surprise(self, entry: MemoryEntry) -> float:
        """Relative error of reconstructing ``entry``'s descriptor from the ``retrieve`` most
        pose-similar remembered frames (anchors and pool) with ridge least squares; 1 when
        nothing can be compared (empty memory, or no descriptor)."""
        known = [m for m in self.anchors + self.pool if m.descriptor is not None]
        f = entry.descriptor
        if f is None or not known or np.linalg.norm(f) == 0:
            return 1.0
        k = max(1, self.cfg.retrieve)
        d = self._distances(entry, known)
        near = [known[i] for i in np.argsort(d, kind="stable")[:k]]
        F = np.stack([m.descriptor for m in near])  # (k, D)
        w = np.linalg.solve(F @ F.T + self.cfg.ridge * np.eye(len(F)), F @ f)
        return float(np.linalg.norm(f - F.T @ w) / np.linalg.norm(f))

    def _offer(self, e: MemoryEntry) -> None:
        if self.cfg.pool == 0:
            return
        if self.cfg.dedup_threshold > 0 and self.surprise(e) < self.cfg.dedup_threshold:
            self.stats["deduplicated"] += 1
            return
        self.pool.append(e)
        self.stats["admitted"] += 1
        if len(self.pool) > self.cfg.pool:
            self._prune()

    def _prune(self) -> None:
        """Keep ``pool`` frames by farthest-point sampling over pose distance (module docstring)."""
        n = len(self.pool)
        pos = np.stack([m.position for m in self.pool])
        rot = np.stack([m.rotation for m in self.pool])
        dist = pose_distance(pos[:, None], rot[:, None], pos[None], rot[None], self.cfg.rot_scale_m)
        if self.anchors:
            to_anchor = np.min([self._distances(a, self.pool) for a in self.anchors], axis=0)
            start = int(np.argmax(to_anchor))
        else:
            start = 0
        keep = sorted(farthest_point_order(dist, start)[: self.cfg.pool])
        gone = [self.pool[i].index for i in range(n) if i not in keep]
        self.evicted += gone
        self.stats["evicted"] += len(gone)
        self.pool = [self.pool[i] for i in keep]

    # --- reading ----------------------------------------------------------------------------------
    def _distances(self, e: MemoryEntry, others: list[MemoryEntry]) -> np.ndarray:
        pos = np.stack([m.position for m in others])
        rot = np.stack([m.rotation for m in others])
        return pose_distance(e.position[None], e.rotation[None], pos, rot, self.cfg.rot_scale_m)

    def similarity(self, position, rotation=None) -> np.ndarray:
        """``S`` ``(len(pool),)`` of each pool frame to the pose ``(position, rotation)``."""
        if not self.pool:
            return np.zeros(0)
        q = MemoryEntry(-1, np.asarray(position, float).reshape(3),
                        np.eye(3) if rotation is None else np.asarray(rotation, float), None, None)
        return np.exp(-self._distances(q, self.pool) / self.cfg.sigma_m)

    def retrieve(self, position, rotation=None) -> list[MemoryEntry]:
        """The ``retrieve`` pool frames most similar to the pose, oldest first."""
        s = self.similarity(position, rotation)
        top = np.argsort(-s, kind="stable")[: self.cfg.retrieve]
        return [self.pool[i] for i in sorted(top)]

    def context(self, position=None, rotation=None) -> list[MemoryEntry]:
        """What the next chunk attends to: anchors, retrieved pool frames (by the chunk's camera
        pose; without a pose, the most recent pool frames) and the window, in rollout order."""
        if position is None:
            got = self.pool[-self.cfg.retrieve:] if self.cfg.retrieve else []
        else:
            got = self.retrieve(position, rotation)
        return sorted(self.anchors + got + self.window, key=lambda m: m.index)
