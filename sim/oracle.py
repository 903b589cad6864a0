"""Ground-truth dynamics: batched open-loop rollouts in MuJoCo itself.

:class:`MuJoCoOracle` rolls K action sequences out of one state with ``mujoco.rollout`` on
a persistent thread pool. It is the MPPI planner's upper bound (perfect model) and the
data collector of ``ws collect`` (seed 003, Appendix C.5).
"""

from __future__ import annotations

import os

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

__all__ = ["MuJoCoOracle", "perturb_actions"]

_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


def perturb_actions(model: mujoco.MjModel, actions: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``actions (..., nu)`` plus Gaussian noise of standard deviation ``noise`` half control ranges, clipped
    to the actuators' control range (a new array). The perturbation of ``ws perturbed-replays`` and of
    ``ws eval open-loop --action-noise``.

    Raises:
        ValueError: ``noise`` not a positive finite number, or ``actions`` whose last axis is not ``nu``.
    """
    if not (noise > 0 and np.isfinite(noise)):
        raise ValueError(f"noise must be a positive number of half control ranges, got {noise}")
    a = np.asarray(actions, dtype=np.float64)
    if a.shape[-1:] != (model.nu,):
        raise ValueError(f"actions have shape {a.shape}, expected (..., {model.nu})")
    lo, hi = model.actuator_ctrlrange.T
    return np.clip(a + rng.normal(0.0, noise, a.shape) * (hi - lo) / 2, lo, hi)


class MuJoCoOracle:
    """Roll out action sequences with MuJoCo's own physics.

    Each action is held for ``frame_skip`` physics steps, like Gymnasium's ``step``.

    Args:
        model: the environment's ``MjModel`` (copied; the caller's model is never touched).
        frame_skip: physics steps per control step.
        nthread: worker threads (default: the number of CPUs, at most 8).

    The state is ``[qpos, qvel]`` (``nq + nv``); actuator activations, if any, start at 0
    unless a full physics state is given.
    """

    def __init__(self, model: mujoco.MjModel, frame_skip: int, nthread: int | None = None):
        self.model = model.__copy__() if hasattr(model, "__copy__") else model
        self.frame_skip = int(frame_skip)
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.nthread = int(nthread or min(8, os.cpu_count() or 1))
        self._datas = [mujoco.MjData(self.model) for _ in range(self.nthread)]
        self._pool = mj_rollout.Rollout(nthread=self.nthread) if self.nthread > 1 else None
        self._nphys = mujoco.mj_stateSize(self.model, _SPEC)
        limited = self.model.actuator_ctrllimited.astype(bool)
        self._ctrl_lo = np.where(limited, self.model.actuator_ctrlrange[:, 0], -np.inf)
        self._ctrl_hi = np.where(limited, self.model.actuator_ctrlrange[:, 1], np.inf)

    @property
    def state_dim(self) -> int:
        return self.nq + self.nv

    @property
    def action_dim(self) -> int:
        return self.nu

    def physics_from_state(self, state: np.ndarray) -> np.ndarray:
        """A ``mjSTATE_FULLPHYSICS`` vector with time 0 and the given ``[qpos, qvel]``."""
        phys = np.zeros(self._nphys)
        phys[1:1 + self.nq + self.nv] = state
        if self.model.nmocap:
            d = self._datas[0]
            mujoco.mj_resetData(self.model, d)
            tmp = np.empty(self._nphys)
            mujoco.mj_getState(self.model, d, tmp, _SPEC)
            phys[1 + self.nq + self.nv:] = tmp[1 + self.nq + self.nv:]
        return phys

    def rollout(self, state: np.ndarray, actions: np.ndarray,
                physics_state: np.ndarray | None = None) -> np.ndarray:
        """Roll out ``K`` action sequences from one state, or each from its own.

        Args:
            state: ``(nq + nv,)`` start state, or ``(K, nq + nv)``: one start per sequence.
            actions: ``(K, H, nu)`` controls; clipped to the actuator control range.
            physics_state: optional exact ``mjSTATE_FULLPHYSICS`` start (overrides ``state``).

        Returns:
            ``(K, H, nq + nv)`` states after each control step (``s_1 .. s_H``).

        Raises:
            ValueError: wrong shapes.
        """
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 3 or a.shape[2] != self.nu:
            raise ValueError(f"actions have shape {a.shape}, expected (K, H, {self.nu})")
        k, h, _ = a.shape
        if physics_state is None:
            s = np.asarray(state, dtype=np.float64)
            if s.shape == (k, self.nq + self.nv):
                physics_state = np.stack([self.physics_from_state(x) for x in s])
            elif s.shape == (self.nq + self.nv,):
                physics_state = self.physics_from_state(s)
            else:
                raise ValueError(f"state has shape {s.shape}, expected ({self.nq + self.nv},) or ({k}, {self.nq + self.nv})")
        a = np.clip(a, self._ctrl_lo, self._ctrl_hi)
        ctrl = np.repeat(a, self.frame_skip, axis=1)
        init = np.broadcast_to(physics_state, (k, self._nphys))
        if self._pool is not None:
            out, _ = self._pool.rollout(self.model, self._datas, init, ctrl)
        else:
            out, _ = mj_rollout.rollout(self.model, self._datas[0], init, ctrl)
        idx = np.arange(self.frame_skip - 1, h * self.frame_skip, self.frame_skip)
        return out[:, idx, 1:1 + self.nq + self.nv]

    def close(self) -> None:
        """Stop the thread pool."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
