"""MuJoCo's full physics state, the start state of exact oracle rollouts.

Every environment (:mod:`.envs`, :mod:`.go1_env`, :mod:`.piper_env`) hands the oracle this
vector, so it lives in a module of its own that they all import (and that imports none of them).
"""

from __future__ import annotations

import mujoco
import numpy as np

__all__ = ["full_physics_state"]


def full_physics_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """MuJoCo's full physics state (``mjSTATE_FULLPHYSICS``, ``(mj_stateSize,)``) for exact oracle rollouts."""
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    out = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, out, spec)
    return out
