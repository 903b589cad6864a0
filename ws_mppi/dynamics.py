"""Dynamics models the MPPI planner rolls action sequences through.

A dynamics model maps one start state and ``K`` action sequences to ``K`` predicted state
trajectories (seed 003, Appendix D.3, eq. 12: ``s_{t+1} = f(s_t, a_t)``). Two kinds exist:

* :class:`OracleDynamics`, MuJoCo itself (``ws_sim.oracle.MuJoCoOracle``): the upper bound;
* :class:`LearnedDynamics`, any one-step model from ``ws_worldmodel`` with a
  ``predict(state, action) -> next_state`` method on torch tensors;
* :class:`SequenceDynamics`, a trajectory world model (WestWorld, TrajWorld, TDM) that
  reads a history of states and actions and predicts the whole horizon at once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Dynamics", "OracleDynamics", "LearnedDynamics", "SequenceDynamics"]


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
        fused: use the model's own ``rollout(state, actions)`` (the ``H`` steps of ``predict``
            in one call, e.g. :meth:`ws_worldmodel.mlp_ensemble.MLPEnsemble.rollout`, with the
            same result) when it has one; ``False``: call ``predict`` once per step.
    """

    def __init__(self, model, fused: bool = True):
        self.model = model
        self.name = getattr(model, "name", type(model).__name__)
        self.state_dim = int(model.state_dim)
        self.action_dim = int(model.action_dim)
        fn = getattr(model, "rollout", None) if fused else None
        self._fused = fn if callable(fn) else None

    @torch.inference_mode()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            return self._fused(state.to(actions.dtype), actions)
        k, h, _ = actions.shape
        s = state.to(actions.dtype).expand(k, -1)
        out = actions.new_empty(k, h, self.state_dim)
        for t in range(h):
            s = self.model.predict(s, actions[:, t])
            out[:, t] = s
        return out


class SequenceDynamics:
    """A history-conditioned trajectory world model as a :class:`Dynamics`.

    The controller reports every executed transition through :meth:`observe`; a rollout
    then conditions on the last ``history`` states and actions (the first state repeated,
    with the first action, while fewer have been seen) and predicts ``s_{t+1} .. s_{t+H}``
    for all ``K`` action sequences in one call of the model.

    Args:
        model: a ``ws_worldmodel.pretrain.TrajectoryWorldModel``.
        system: the name under which the model knows the controlled system.

    Raises:
        KeyError: the model was not trained on ``system``.
    """

    def __init__(self, model, system: str):
        if system not in model.systems:
            raise KeyError(f"the {model.kind} checkpoint knows no system {system!r} (it knows {sorted(model.systems)}); "
                           "fine-tune it on this system's data first")
        self.model = model
        self.system = system
        self.name = model.kind
        meta = model.systems[system]
        self.state_dim = len(meta["state_channels"])
        self.action_dim = len(meta["action_channels"])
        self.history = model.history
        self.reset()

    def reset(self) -> None:
        """Forget the history (new episode)."""
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []

    def observe(self, state: np.ndarray, action: np.ndarray) -> None:
        """Record that ``action`` was executed in ``state``."""
        self._states.append(np.asarray(state, dtype=np.float64))
        self._actions.append(np.asarray(action, dtype=np.float64))
        del self._states[:-self.history], self._actions[:-self.history]

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        k, h, nu = actions.shape
        th = self.history
        past_s = self._states[-(th - 1):] if th > 1 else []
        past_a = self._actions[-(th - 1):] if th > 1 else []
        s_now = state.detach().cpu().double().numpy()
        states = past_s + [s_now]
        acts = list(past_a)
        while len(states) < th:  # early in an episode: repeat the oldest known state and action
            states.insert(0, states[0])
            acts.insert(0, acts[0] if acts else actions[0, 0].detach().cpu().double().numpy())
        hist_s = np.broadcast_to(np.stack(states), (k, th, self.state_dim))
        hist_a = np.broadcast_to(np.stack(acts).reshape(th - 1, nu), (k, th - 1, nu)) if th > 1 else np.zeros((k, 0, nu))
        fut = actions.detach().cpu().double().numpy()
        all_a = np.concatenate([hist_a, fut, fut[:, -1:]], axis=1)  # the last action is never read
        pred = self.model.predict(self.system, hist_s, all_a)  # (K, H, nx)
        return torch.as_tensor(pred, dtype=actions.dtype)
