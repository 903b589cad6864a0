"""Dynamics models the MPPI planner rolls action sequences through.

A dynamics model maps one start state and ``K`` action sequences to ``K`` predicted state
trajectories (seed 003, Appendix D.3, eq. 12: ``s_{t+1} = f(s_t, a_t)``). Two kinds exist:

* :class:`OracleDynamics`, MuJoCo itself (``ws_sim.oracle.MuJoCoOracle``): the upper bound;
* :class:`LearnedDynamics`, any one-step model from ``ws_worldmodel`` with a
  ``predict(state, action) -> next_state`` method on torch tensors.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Dynamics", "OracleDynamics", "LearnedDynamics"]


@runtime_checkable
class Dynamics(Protocol):
    """What the planner needs of a model.

    ``rollout(state, actions)`` takes ``state`` of shape ``(nx,)`` and ``actions`` of shape
    ``(K, H, nu)`` (float32 tensors) and returns the states ``s_1 .. s_H``, shape
    ``(K, H, nx)``.
    """

    state_dim: int
    action_dim: int

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...


class OracleDynamics:
    """MuJoCo rollouts as a :class:`Dynamics` (the ground truth).

    Args:
        oracle: a ``ws_sim.oracle.MuJoCoOracle``.
        physics_state_fn: optional callable returning the environment's exact
            ``mjSTATE_FULLPHYSICS`` vector; used instead of rebuilding it from ``state``
            when its ``[qpos, qvel]`` equal ``state`` (float32 planner states are
            rounded, so only a mismatch beyond 1e-4 falls back to ``state``).
    """

    name = "oracle"

    def __init__(self, oracle, physics_state_fn=None):
        self.oracle = oracle
        self.physics_state_fn = physics_state_fn
        self.state_dim = oracle.state_dim
        self.action_dim = oracle.action_dim

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        s = state.detach().cpu().double().numpy()
        phys = self.physics_state_fn() if self.physics_state_fn is not None else None
        if phys is not None and not np.allclose(phys[1:1 + s.size], s, rtol=1e-6, atol=1e-4):
            phys = None  # planning from another state than the environment's: rebuild from it
        out = self.oracle.rollout(s, actions.detach().cpu().double().numpy(), physics_state=phys)
        return torch.from_numpy(np.ascontiguousarray(out)).to(actions.dtype)


class LearnedDynamics:
    """A learned one-step model unrolled over the horizon as a :class:`Dynamics`.

    Args:
        model: an object with ``state_dim``, ``action_dim`` and
            ``predict(state (K, nx), action (K, nu)) -> next_state (K, nx)`` on tensors.
    """

    def __init__(self, model):
        self.model = model
        self.name = getattr(model, "name", type(model).__name__)
        self.state_dim = int(model.state_dim)
        self.action_dim = int(model.action_dim)

    @torch.inference_mode()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        k, h, _ = actions.shape
        s = state.to(actions.dtype).expand(k, -1)
        out = actions.new_empty(k, h, self.state_dim)
        for t in range(h):
            s = self.model.predict(s, actions[:, t])
            out[:, t] = s
        return out
