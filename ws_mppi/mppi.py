"""Model Predictive Path Integral control (seed 003, Appendix D.3, eqs. 12-16).

At each control cycle, with nominal action sequence ``U = (u_0 .. u_{H-1})``:

* eq. (13): sample ``K`` perturbed sequences ``V_k = U + eps_k``, ``eps_k ~ N(0, sigma^2 I)``
  (clipped to the action bounds);
* eq. (12): roll them out through the dynamics, ``s_{t+1} = f(s_t, v_{k,t})``;
* eq. (14): trajectory cost ``S_k = sum_t c(s_t, v_{k,t})``;
* eq. (15): importance weights ``w_k = exp(-(S_k - min S) / lambda) / eta`` with
  temperature ``lambda``;
* eq. (16): ``U <- U + sum_k w_k eps_k``.

The first action is executed, ``U`` is shifted one step (warm start) and the cycle repeats
(receding horizon). Everything is batched over the ``K`` samples in PyTorch.
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
        shift_fill: how the warm start fills the freed last step: ``"zero"`` or ``"last"``.
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
        nominal: ``(H, nu)`` the updated nominal sequence (before the warm-start shift).
        actions: ``(K, H, nu)`` the sampled sequences of the last iteration.
        states: ``(K, H, nx)`` their predicted states.
        costs: ``(K,)`` their costs.
        weights: ``(K,)`` their importance weights.
    """

    action: np.ndarray
    nominal: np.ndarray
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
        self._t = 0
        self.nominal = torch.zeros(self.config.horizon, self.nu)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start (new episode); optionally reseed the noise."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._t = 0
        self.nominal = self._prior(0, self.config.horizon)

    def _prior(self, t0: int, n: int) -> torch.Tensor:
        if self.prior is None:
            return ((self.low + self.high) / 2).expand(n, -1).clone()
        p = torch.as_tensor(np.asarray(self.prior(t0, n)), dtype=torch.float32).reshape(n, self.nu)
        return torch.clamp(p, self.low, self.high)

    @torch.inference_mode()
    def plan(self, state, t0: int = 0) -> PlanResult:
        """Run one MPPI cycle from ``state`` and return the action to execute.

        Args:
            state: ``(nx,)`` current state (validated by the caller).
            t0: the episode step of ``state`` (used by time-indexed cost terms).

        Returns:
            a :class:`PlanResult`; the nominal is then shifted for the next cycle.
        """
        cfg = self.config
        if self.prior is not None and t0 != self._t:  # the episode clock jumped: restart from the prior
            self.nominal = self._prior(t0, cfg.horizon)
        self._t = t0 + 1
        s = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        for _ in range(cfg.iterations):
            eps = torch.randn(cfg.samples, cfg.horizon, self.nu, generator=self.generator) * cfg.noise_sigma
            if cfg.include_nominal:
                eps[0] = 0.0
            v = torch.clamp(self.nominal + eps, self.low, self.high)
            eps = v - self.nominal  # the perturbation actually applied after clipping
            states = self.dynamics.rollout(s, v)
            costs = self.cost(s, v, states, t0)
            costs = torch.nan_to_num(costs, nan=float("inf"), posinf=float("inf"))
            finite = torch.isfinite(costs)
            if not bool(finite.any()):
                raise FloatingPointError("every MPPI rollout has a non-finite cost")
            beta = costs[finite].min()
            weights = torch.where(finite, torch.exp(-(costs - beta) / cfg.temperature), torch.zeros_like(costs))
            weights = weights / weights.sum()
            self.nominal = self.nominal + (weights[:, None, None] * eps).sum(0)
        result = PlanResult(action=self.nominal[0].numpy().copy(), nominal=self.nominal.numpy().copy(),
                            actions=v, states=states, costs=costs, weights=weights)
        self._shift()
        return result

    def _shift(self) -> None:
        if self.prior is not None:
            fill = self._prior(self._t + self.config.horizon - 1, 1)[0]
        elif self.config.shift_fill == "last":
            fill = self.nominal[-1].clone()
        else:
            fill = (self.low + self.high) / 2
        self.nominal = torch.cat([self.nominal[1:], fill[None]], dim=0)
