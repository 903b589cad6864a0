"""Model Predictive Path Integral control (seed 003, Appendix D.3, eqs. 12-16).

At each control cycle, with nominal action sequence ``U = (u_0 .. u_{H-1})``:

* eq. (13): sample ``K`` perturbed sequences ``V_k = U + eps_k``, ``eps_k ~ N(0, sigma^2 I)``
  (clipped to the action bounds);
* eq. (12): roll them out through the dynamics, ``s_{t+1} = f(s_t, v_{k,t})``;
* eq. (14): trajectory cost ``S_k = sum_t c(s_t, v_{k,t})``;
* eq. (15): importance weights ``w_k = exp(-(S_k - min S) / lambda) / eta`` with
  temperature ``lambda``;
* eq. (16): ``U <- U + sum_k w_k eps_k``.

The first action is executed and the cycle repeats (receding horizon). The next cycle starts
from the last plan shifted by the control steps elapsed since it was made (warm start; a
real-time node replans at whatever rate it reaches, so the gap is 0, 1 or many steps), the
freed tail filled from the prior. Rollouts whose cost is not finite (a diverged learned
model: NaN or either infinity) get zero weight. Everything is batched over the ``K`` samples
in PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

__all__ = ["MPPIConfig", "MPPI", "PlanResult"]


@dataclasses.dataclass
class MPPIConfig:
    """MPPI hyperparameters.

    Attributes:
        horizon: ``H``, planning steps (one step = the environment's control period).
        samples: ``K``, sampled action sequences per cycle.
        temperature: ``lambda`` of eq. (15), in cost units.
        noise_sigma: standard deviation of the Gaussian perturbations, in action units
            (Gymnasium Hopper/Walker2d actions lie in [-1, 1]).
        iterations: MPPI updates per control cycle (1 = classic MPPI).
        include_nominal: keep the unperturbed nominal as sample 0, so the update never
            discards a good plan only because all perturbations were worse.
        shift_fill: how the warm start fills the freed last steps when no prior is given:
            ``"zero"`` (the middle of the action bounds) or ``"last"`` (repeat the plan's last step).
    """

    horizon: int = 32
    samples: int = 128
    temperature: float = 0.1
    noise_sigma: float = 0.3
    iterations: int = 1
    include_nominal: bool = True
    shift_fill: str = "zero"

    def __post_init__(self):
        if self.horizon < 1 or self.samples < 2:
            raise ValueError(f"need horizon >= 1 and samples >= 2, got H={self.horizon}, K={self.samples}")
        if self.temperature <= 0 or self.noise_sigma <= 0:
            raise ValueError("temperature lambda and noise_sigma must be positive")
        if self.shift_fill not in ("zero", "last"):
            raise ValueError(f"shift_fill must be 'zero' or 'last', got {self.shift_fill!r}")


@dataclasses.dataclass
class PlanResult:
    """What one MPPI cycle produced.

    Attributes:
        action: ``(nu,)`` the action to execute now (``U[0]`` after the update).
        nominal: ``(H, nu)`` the updated nominal sequence; step ``i`` is for episode step
            ``t0 + i``.
        t0: the episode step the plan starts at.
        predicted_states: ``(H, nx)`` where the plan is expected to lead: the importance-weighted
            mean of the rollouts' predicted states (the same weights as the action update;
            row ``i`` is the state after step ``i``), used to bound the plan's later commands.
        actions: ``(K, H, nu)`` the sampled sequences of the last iteration.
        states: ``(K, H, nx)`` their predicted states.
        costs: ``(K,)`` their costs.
        weights: ``(K,)`` their importance weights.
    """

    action: np.ndarray
    nominal: np.ndarray
    t0: int
    predicted_states: np.ndarray
    actions: torch.Tensor
    states: torch.Tensor
    costs: torch.Tensor
    weights: torch.Tensor


CostFn = Callable[..., torch.Tensor]


class MPPI:
    """Sampling-based receding-horizon planner.

    Args:
        dynamics: a :class:`ws_mppi.dynamics.Dynamics`.
        cost: callable ``cost(state (nx,), actions (K,H,nu), states (K,H,nx), t0) -> (K,)``.
        action_low, action_high: ``(nu,)`` bounds.
        config: :class:`MPPIConfig`.
        seed: seed of the planner's own noise generator.
        prior: optional callable ``prior(t0, horizon) -> (horizon, nu)`` giving the action
            sequence to start from (on reset) and to append after each shift, e.g. a gait
            scheduler's joint reference; default: the middle of the action bounds.
    """

    def __init__(self, dynamics, cost: CostFn, action_low, action_high,
                 config: MPPIConfig | None = None, seed: int = 0, prior=None):
        self.dynamics = dynamics
        self.cost = cost
        self.config = config or MPPIConfig()
        self.low = torch.as_tensor(np.asarray(action_low), dtype=torch.float32)
        self.high = torch.as_tensor(np.asarray(action_high), dtype=torch.float32)
        self.nu = int(self.low.numel())
        self.generator = torch.Generator().manual_seed(int(seed))
        self.prior = prior
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start (new episode); optionally reseed the noise."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._t_plan: int | None = None  # the episode step the last plan started at
        self._plan = self._prior(0, self.config.horizon)  # the last plan (H, nu), step i for _t_plan + i

    @property
    def nominal(self) -> torch.Tensor:
        """``(H, nu)`` the warm start for the step after the last plan (the prior before any)."""
        return self.warm_start(0 if self._t_plan is None else self._t_plan + 1)

    def _prior(self, t0: int, n: int) -> torch.Tensor:
        if self.prior is None:
            return ((self.low + self.high) / 2).expand(n, -1).clone()
        p = torch.as_tensor(np.asarray(self.prior(t0, n)), dtype=torch.float32).reshape(n, self.nu)
        return torch.clamp(p, self.low, self.high)

    def warm_start(self, t0: int) -> torch.Tensor:
        """The nominal a cycle at episode step ``t0`` starts from: ``(H, nu)``.

        The last plan (made at step ``t_plan``) shifted by ``n = t0 - t_plan`` steps, so that
        its step ``n`` comes first, and its freed last ``n`` steps filled from the prior
        (``prior(t_plan + H, n)``; without a prior: ``shift_fill``). ``n = 0`` (a replan within
        the same control step) keeps the plan as it is. Before the first plan, after a gap of
        ``H`` steps or more, or when ``t0`` goes backwards (a new episode), the prior
        ``prior(t0, H)`` (without one: the middle of the bounds).
        """
        h = self.config.horizon
        t0 = int(t0)
        if self._t_plan is None:
            return self._prior(t0, h)
        n = t0 - self._t_plan
        if n < 0 or n >= h:
            return self._prior(t0, h)
        if n == 0:
            return self._plan.clone()
        if self.prior is not None:
            fill = self._prior(self._t_plan + h, n)
        elif self.config.shift_fill == "last":
            fill = self._plan[-1:].expand(n, -1)
        else:
            fill = ((self.low + self.high) / 2).expand(n, -1)
        return torch.cat([self._plan[n:], fill], dim=0)

    @torch.inference_mode()
    def plan(self, state, t0: int = 0) -> PlanResult:
        """Run one MPPI cycle from ``state`` and return the action to execute.

        Args:
            state: ``(nx,)`` current state (validated by the caller).
            t0: the episode step of ``state`` (time-indexed cost terms, the prior, and the
                warm start: see :meth:`warm_start`).

        Returns:
            a :class:`PlanResult`.

        Raises:
            FloatingPointError: no rollout has a finite cost (the dynamics diverged
                everywhere); the last plan stays the warm start, and the caller should hold.
        """
        cfg = self.config
        t0 = int(t0)
        nominal = self.warm_start(t0)
        s = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        for _ in range(cfg.iterations):
            eps = torch.randn(cfg.samples, cfg.horizon, self.nu, generator=self.generator) * cfg.noise_sigma
            if cfg.include_nominal:
                eps[0] = 0.0
            v = torch.clamp(nominal + eps, self.low, self.high)
            eps = v - nominal  # the perturbation actually applied after clipping
            states = self.dynamics.rollout(s, v)
            costs = self.cost(s, v, states, t0)
            finite = torch.isfinite(costs)  # NaN, +inf and -inf alike get zero weight
            if not bool(finite.any()):
                raise FloatingPointError(f"every one of the {cfg.samples} MPPI rollouts has a non-finite cost "
                                         "(diverged dynamics?)")
            costs = torch.where(finite, costs, torch.full_like(costs, float("inf")))
            beta = costs[finite].min()
            weights = torch.where(finite, torch.exp(-(costs - beta) / cfg.temperature), torch.zeros_like(costs))
            weights = weights / weights.sum()
            nominal = nominal + (weights[:, None, None] * eps).sum(0)
        self._plan, self._t_plan = nominal, t0
        predicted = (weights[:, None, None].to(states.dtype) * torch.nan_to_num(states)).sum(0)
        return PlanResult(action=nominal[0].numpy().copy(), nominal=nominal.numpy().copy(), t0=t0,
                          predicted_states=predicted.double().numpy(), actions=v, states=states, costs=costs, weights=weights)
