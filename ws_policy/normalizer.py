"""Affine maps of the PiPER's joint targets and joint states to [-1, 1], shared by every policy."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Normalizer"]


@dataclasses.dataclass
class Normalizer:
    """Affine maps of joint targets and joint states to [-1, 1] (from the actuators' and joints' ranges)."""

    action_low: np.ndarray
    action_high: np.ndarray
    state_low: np.ndarray
    state_high: np.ndarray

    @classmethod
    def from_episodes(cls, episodes, margin: float = 0.05) -> "Normalizer":
        """Per-dimension ranges of the demonstrations' actions and joint positions, widened by
        ``margin`` of each span (as diffusion policies normalise). The demonstrations cover a
        small part of each joint's range, so this gives the flow several times the precision
        of the actuators' full ranges; actions are still clipped to the actuators at the end."""
        a = np.concatenate([e.actions for e in episodes]).astype(np.float64)
        q = np.concatenate([e.qpos for e in episodes]).astype(np.float64)

        def widen(x):
            lo, hi = x.min(0), x.max(0)
            pad = np.maximum((hi - lo) * margin, 1e-3)
            return lo - pad, hi + pad

        (alo, ahi), (qlo, qhi) = widen(a), widen(q)
        return cls(alo, ahi, qlo, qhi)

    @classmethod
    def for_piper(cls) -> "Normalizer":
        from ws_sim.piper import load_piper

        model, _ = load_piper()
        lo, hi = model.actuator_ctrlrange.T
        return cls(lo.copy(), hi.copy(), model.jnt_range[:8, 0].copy(), model.jnt_range[:8, 1].copy())

    @staticmethod
    def _to(x, lo, hi):
        return 2 * (x - lo) / (hi - lo) - 1

    def actions(self, a):
        return self._to(a, self.action_low, self.action_high)

    def actions_back(self, a):
        return (np.asarray(a) + 1) / 2 * (self.action_high - self.action_low) + self.action_low

    def state(self, q):
        return self._to(q, self.state_low, self.state_high)

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(**{k: np.asarray(v, dtype=np.float64) for k, v in d.items()})
