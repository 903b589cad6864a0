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

import functools
import inspect
import logging
import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Dynamics", "OracleDynamics", "LearnedDynamics", "SequenceDynamics"]


@runtime_checkable
class Dynamics(Protocol):
    """What the planner needs of a model.

    ``rollout(state, actions)`` takes ``state`` of shape ``(nx,)`` and ``actions`` of shape
    ``(K, H, nu)`` (float32 tensors) and returns the states ``s_1 .. s_H``, shape
    ``(K, H, nx)``. A model whose predictions depend on more than the last state may also
    offer ``stepper(state)`` for closed-loop policy rollouts (see :class:`SequenceDynamics`),
    and ``last_penalty``: ``None``, or a ``(K,)`` cost the planner adds to the last rollout's
    (see :class:`LearnedDynamics`'s ``disagreement_weight``).
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


log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX, as oneDNN
    reports it; on Linux also read from ``/proc/cpuinfo``'s flags when oneDNN cannot be asked).

    Where it does not, PyTorch emulates bfloat16 matmuls: measured on an AVX2-only AMD EPYC
    (docs/control.md), a (5 x 64 x 200) @ (200 x 200) batched matmul took 20 times longer in
    bfloat16 than in float32, where on a CPU with AVX512-BF16 it took half as long.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


class LearnedDynamics:
    """A learned one-step model unrolled over the horizon as a :class:`Dynamics`.

    Args:
        model: an object with ``state_dim``, ``action_dim`` and
            ``predict(state (K, nx), action (K, nu)) -> next_state (K, nx)`` on tensors.
        fused: use the model's own ``rollout(state, actions)`` (the ``H`` steps of ``predict``
            in one call, e.g. :meth:`ws_worldmodel.mlp_ensemble.MLPEnsemble.rollout`, with the
            same result) when it has one; ``False``: call ``predict`` once per step.
        precision: ``"float32"``, or ``"bfloat16"`` for the model's matmuls (its fused
            ``rollout(..., precision=)``, e.g. the MLPEnsemble's: about twice as fast on CPUs
            with AVX512-BF16 or AMX; the states stay float32). On a CPU without them
            (:func:`native_bfloat16`), where emulated bfloat16 is many times slower, a warning is
            logged and the model runs in float32: ``precision`` says what runs,
            ``requested_precision`` what was asked.
        emulated_bfloat16: run bfloat16 even where it is emulated (benchmarks and tests of its
            numerics; never for control).
        disagreement_weight: when positive, each rollout's summed elite disagreement
            (``MLPEnsemble.rollout(..., disagreement=)``: the variance across elites of the
            normalised predicted change, per step) times this weight is left in
            :attr:`last_penalty` for the planner to add to that rollout's cost: a pessimism
            that keeps the plan where the model's data were (MOPO, Yu et al. 2020, for offline
            RL; here in the planner). 0: off, ``last_penalty`` stays None.

    Raises:
        ValueError: ``precision`` is not one of the two, or ``"bfloat16"`` for a model without
            a fused rollout that takes it (or with ``fused=False``); a negative or non-finite
            ``disagreement_weight``, or a positive one for a model whose fused rollout cannot
            report disagreement.
    """

    def __init__(self, model, fused: bool = True, precision: str = "float32", emulated_bfloat16: bool = False,
                 disagreement_weight: float = 0.0):
        self.model = model
        self.last_penalty: torch.Tensor | None = None
        self.name = getattr(model, "name", type(model).__name__)
        self.state_dim = int(model.state_dim)
        self.action_dim = int(model.action_dim)
        fn = getattr(model, "rollout", None) if fused else None
        self._fused = fn if callable(fn) else None
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        if precision != "float32" and (self._fused is None
                                       or "precision" not in inspect.signature(self._fused).parameters):
            raise ValueError(f"precision {precision!r} needs a model with a fused rollout(..., precision=) "
                             f"(the MLPEnsemble); {self.name} has none")
        self.requested_precision = precision
        if precision == "bfloat16" and not emulated_bfloat16 and not native_bfloat16():
            log.warning("model_precision bfloat16 asked, but this CPU has no bfloat16 matmul units (AVX512-BF16 or "
                        "AMX): emulated, it would be many times slower than float32; %s runs in float32", self.name)
            precision = "float32"
        self.precision = precision
        w = float(disagreement_weight)
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"disagreement_weight must be a finite number >= 0, got {disagreement_weight!r}")
        if w and (self._fused is None or "disagreement" not in inspect.signature(self._fused).parameters):
            raise ValueError(f"disagreement_weight needs a model whose fused rollout reports its members' "
                             f"disagreement (the MLPEnsemble); {self.name} has none")
        self.disagreement_weight = w

    @torch.inference_mode()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            kw = {} if self.precision == "float32" else {"precision": self.precision}
            if self.disagreement_weight:
                d = torch.empty(actions.shape[:2], dtype=torch.float32, device=actions.device)
                out = self._fused(state.to(actions.dtype), actions, disagreement=d, **kw)
                self.last_penalty = d.sum(1).mul_(self.disagreement_weight)
                return out
            return self._fused(state.to(actions.dtype), actions, **kw)
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
    for all ``K`` action sequences in one call of the model. A policy acting on each predicted
    state (the planner's expert sample) imagines through :meth:`stepper`, one call per step:
    WestWorld continues its one pass (the same predictions as :meth:`rollout` for the actions taken),
    other models read the states imagined before as history. A model exported for a fixed horizon
    (``fixed_horizon``, an ONNX export) also serves shorter horizons: their actions are
    padded with the last one, which the causal model never reads for the steps returned.

    Args:
        model: a ``ws_worldmodel.pretrain.TrajectoryWorldModel`` or a
            ``ws_worldmodel.onnx_model.OnnxSequenceModel``.
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

    def _window(self, s_now: np.ndarray, first_action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's input history ending in ``s_now``: ``(Th, nx)`` states and ``(Th - 1, nu)`` actions."""
        th = self.history
        states = (self._states[-(th - 1):] if th > 1 else []) + [s_now]
        acts = list(self._actions[-(th - 1):]) if th > 1 else []
        while len(states) < th:  # early in an episode: repeat the oldest known state and action
            states.insert(0, states[0])
            acts.insert(0, acts[0] if acts else first_action)
        return np.stack(states), np.stack(acts).reshape(th - 1, self.action_dim) if th > 1 else \
            np.zeros((0, self.action_dim))

    def _predict(self, hist_s: np.ndarray, hist_a: np.ndarray, fut: np.ndarray) -> np.ndarray:
        """``(K, H, nx)`` from one history (``(Th, nx)``, ``(Th - 1, nu)``) and ``(K, H, nu)`` futures.

        A model exported for a fixed horizon (``fixed_horizon``, e.g. an ONNX export) gets shorter futures
        padded with their last action and returns only the steps asked for (its predictions are causal in
        the actions)."""
        k, h, nu = fut.shape
        fixed = getattr(self.model, "fixed_horizon", None)
        if fixed is not None and h < fixed:
            fut = np.concatenate([fut, np.repeat(fut[:, -1:], fixed - h, axis=1)], axis=1)
        th = len(hist_s)
        all_a = np.concatenate([np.broadcast_to(hist_a, (k, th - 1, nu)), fut, fut[:, -1:]], axis=1)  # last unread
        return self.model.predict(self.system, np.broadcast_to(hist_s, (k, th, self.state_dim)), all_a)[:, :h]

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        fut = actions.detach().cpu().double().numpy()
        hist_s, hist_a = self._window(state.detach().cpu().double().numpy(), fut[0, 0])
        return torch.as_tensor(self._predict(hist_s, hist_a, fut), dtype=actions.dtype)  # (K, H, nx)

    def stepper(self, state: torch.Tensor):
        """A closed-loop imagination from ``state`` for a policy that acts on each predicted state.

        Returns a callable ``step(action (nu,)) -> next state (nx,)``. A model that can continue its one-pass
        prediction (``can_imagine``: WestWorld) predicts step ``j`` exactly as :meth:`rollout` would for the
        actions stepped so far, at the cost of one step a call. Otherwise each call predicts one step from the
        executed history followed by the states predicted so far and the actions taken in them, as the
        model would see them had they been executed (the executed history itself is not changed).
        """
        s_now = state.detach().cpu().double().numpy()
        if getattr(self.model, "can_imagine", False):  # WestWorld: its one pass, continued one query step a call
            imagined: list = []

            def step_one_pass(action: torch.Tensor) -> torch.Tensor:
                a = np.asarray(action.detach().cpu().double().numpy(), dtype=np.float64).reshape(self.action_dim)
                if not imagined:
                    imagined.append(self.model.imagine(self.system, *self._window(s_now, a)))
                return torch.as_tensor(imagined[0](a), dtype=torch.float32)

            return step_one_pass
        base: list = []  # the executed window, made at the first step (its padding uses the first action)
        imagined_s: list[np.ndarray] = []
        imagined_a: list[np.ndarray] = []
        th = self.history

        def step(action: torch.Tensor) -> torch.Tensor:
            a = np.asarray(action.detach().cpu().double().numpy(), dtype=np.float64).reshape(self.action_dim)
            if not base:
                base.extend(self._window(s_now, a))
            hist_s, hist_a = base
            if imagined_s:  # the newest Th states: executed ones, then the imagined ones
                hist_s = np.concatenate([hist_s, np.stack(imagined_s)])[-th:]
                hist_a = np.concatenate([hist_a, np.stack(imagined_a)])[-(th - 1):] if th > 1 else hist_a
            nxt = self._predict(hist_s, hist_a, a.reshape(1, 1, -1))[0, 0]
            imagined_s.append(np.asarray(nxt, dtype=np.float64))
            imagined_a.append(a)
            del imagined_s[:-th], imagined_a[:-th]
            return torch.as_tensor(nxt, dtype=torch.float32)

        return step
