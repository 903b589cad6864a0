"""Model Predictive Path Integral control (seed 003, Appendix D.3, eqs. 12-16).

At each control cycle, with nominal action sequence ``U = (u_0 .. u_{H-1})``:

* eq. (13): sample ``K`` perturbed sequences ``V_k = U + eps_k``, ``eps_k ~ N(0, sigma^2 I)``
  (clipped to the action bounds), white or time-correlated: an autoregressive filter
  ``e_t = b0 w_t + b1 e_{t-1} + b2 e_{t-2}`` over white ``w_t`` (the seed's code uses AR(2)
  noise with ``[0.5, 0.5, 0]`` on Hopper and ``[0.4, 0.6, 0]`` on Walker2d);
* eq. (12): roll them out through the dynamics, ``s_{t+1} = f(s_t, v_{k,t})``;
* eq. (14): trajectory cost ``S_k = sum_t c(s_t, v_{k,t})``;
* eq. (15): importance weights ``w_k = exp(-(S_k - min S) / lambda) / eta`` with
  temperature ``lambda``;
* eq. (16): ``U <- U + alpha sum_k w_k eps_k``, ``alpha`` the step size of a smoothed update
  (1: the classic update; the seed's code uses 0.4).

With a policy (e.g. the expert that made the reference), ``policy_samples`` of the ``K``
sequences are the policy's own: its closed-loop rollout through the same dynamics (the
first exactly, the others with the same noise added), as TD-MPC (Hansen et al. 2022) mixes
policy trajectories into its MPPI samples. The update is unchanged; the policy is one more
candidate, so the planner is never limited to what the noise finds around the nominal.

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
        noise_sigma: standard deviation of the white Gaussian innovations ``w_t``, in action
            units (Gymnasium Hopper/Walker2d actions lie in [-1, 1]); a number or one per
            action dimension.
        noise: ``"white"`` (independent per step) or ``"ar"`` (the filter of ``ar_coeffs``).
        ar_coeffs: ``[b0, b1, b2]`` of ``e_t = b0 w_t + b1 e_{t-1} + b2 e_{t-2}`` (zero initial
            conditions). Stationary lag-1 autocorrelation ``b1 / (1 - b2)``, variance
            ``b0^2 sigma^2 (1 - b2) / ((1 + b2) ((1 - b2)^2 - b1^2))``.
        step_size: ``alpha`` of the smoothed update ``U <- U + alpha sum_k w_k eps_k`` (0, 1].
        iterations: MPPI updates per control cycle (1 = classic MPPI).
        include_nominal: keep the unperturbed nominal as sample 0, so the update never
            discards a good plan only because all perturbations were worse.
        shift_fill: how the warm start fills the freed last steps when no prior is given:
            ``"zero"`` (the middle of the action bounds) or ``"last"`` (repeat the plan's last step).
        policy_samples: how many of the ``samples`` follow the planner's policy (0: none; the
            first is the policy's closed-loop rollout, the rest that plus noise). Needs a
            ``policy`` given to :class:`MPPI`.
    """

    horizon: int = 32
    samples: int = 128
    temperature: float = 0.1
    noise_sigma: float | list[float] = 0.3
    iterations: int = 1
    include_nominal: bool = True
    shift_fill: str = "zero"
    noise: str = "white"
    ar_coeffs: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.0, 0.0])
    step_size: float = 1.0
    policy_samples: int = 0

    def __post_init__(self):
        if self.horizon < 1 or self.samples < 2:
            raise ValueError(f"need horizon >= 1 and samples >= 2, got H={self.horizon}, K={self.samples}")
        sigma = np.atleast_1d(np.asarray(self.noise_sigma, dtype=np.float64))
        if not (self.temperature > 0) or sigma.ndim != 1 or not np.all(sigma > 0) or not np.all(np.isfinite(sigma)):
            raise ValueError(f"temperature lambda and noise_sigma must be positive, got {self.temperature} and "
                             f"{self.noise_sigma}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.shift_fill not in ("zero", "last"):
            raise ValueError(f"shift_fill must be 'zero' or 'last', got {self.shift_fill!r}")
        if self.noise not in ("white", "ar"):
            raise ValueError(f"noise must be 'white' or 'ar', got {self.noise!r}")
        b = np.asarray(self.ar_coeffs, dtype=np.float64)
        if b.shape != (3,) or not np.all(np.isfinite(b)) or b[0] == 0:
            raise ValueError(f"ar_coeffs must be [b0, b1, b2] with b0 != 0, got {self.ar_coeffs}")
        if self.noise == "ar" and not (abs(b[2]) < 1 and abs(b[1]) < 1 - b[2]):
            raise ValueError(f"ar_coeffs {self.ar_coeffs} give an unstable filter (need |b2| < 1, |b1| < 1 - b2)")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size}")
        if not 0 <= int(self.policy_samples) <= self.samples - 1 - int(self.include_nominal):
            raise ValueError(f"policy_samples must be in [0, samples - 1 - include_nominal] = "
                             f"[0, {self.samples - 1 - int(self.include_nominal)}], got {self.policy_samples}")


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
        policy: optional callable ``policy(state (nx,) ndarray) -> (nu,)`` whose closed-loop
            rollouts are ``config.policy_samples`` of the samples (e.g. the expert's actor).

    Raises:
        ValueError: ``config.policy_samples > 0`` without a policy.
    """

    def __init__(self, dynamics, cost: CostFn, action_low, action_high,
                 config: MPPIConfig | None = None, seed: int = 0, prior=None, policy=None):
        self.dynamics = dynamics
        self.cost = cost
        self.config = config or MPPIConfig()
        self.low = torch.as_tensor(np.asarray(action_low), dtype=torch.float32)
        self.high = torch.as_tensor(np.asarray(action_high), dtype=torch.float32)
        self.nu = int(self.low.numel())
        self.generator = torch.Generator().manual_seed(int(seed))
        self.prior = prior
        self.policy = policy
        if self.config.policy_samples and policy is None:
            raise ValueError(f"policy_samples = {self.config.policy_samples} needs a policy (e.g. an expert)")
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

    def sample_noise(self, samples: int) -> torch.Tensor:
        """``(samples, H, nu)`` perturbations: white Gaussian innovations of std
        ``noise_sigma``, filtered by the AR filter when ``noise == "ar"``."""
        cfg = self.config
        sigma = torch.as_tensor(np.broadcast_to(np.asarray(cfg.noise_sigma, dtype=np.float32), (self.nu,)).copy())
        w = torch.randn(samples, cfg.horizon, self.nu, generator=self.generator) * sigma
        if cfg.noise == "white":
            return w
        from scipy.signal import lfilter

        b0, b1, b2 = (float(c) for c in cfg.ar_coeffs)
        e = lfilter([b0], [1.0, -b1, -b2], w.numpy(), axis=1)  # e_t = b0 w_t + b1 e_{t-1} + b2 e_{t-2}
        return torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32))

    @torch.inference_mode()
    def policy_rollout(self, state: torch.Tensor) -> torch.Tensor:
        """``(H, nu)`` the actions of the policy run closed loop for ``H`` steps from ``state``
        through the planner's dynamics (one step at a time), clipped to the bounds. A dynamics with a
        ``stepper(state)`` (a sequence model) imagines the steps itself, each one reading the states
        predicted before it."""
        h = self.config.horizon
        s = state.to(torch.float32)
        acts = torch.empty(h, self.nu)
        make_stepper = getattr(self.dynamics, "stepper", None)
        stepper = make_stepper(s) if callable(make_stepper) else None  # a sequence model imagines itself
        for t in range(h):
            a = torch.as_tensor(np.asarray(self.policy(s.numpy()), dtype=np.float32)).reshape(self.nu)
            acts[t] = torch.clamp(a, self.low, self.high)
            if t + 1 < h:
                nxt = stepper(acts[t]) if stepper is not None else \
                    self.dynamics.rollout(s, acts[t].reshape(1, 1, self.nu))[0, 0]
                s = nxt.to(torch.float32)
                if not bool(torch.isfinite(s).all()):  # a diverged model: hold the last action
                    acts[t + 1:] = acts[t]
                    break
        return acts

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
        n_pol = int(cfg.policy_samples)
        policy_seq = self.policy_rollout(s) if n_pol else None
        for _ in range(cfg.iterations):
            eps = self.sample_noise(cfg.samples)
            if cfg.include_nominal:
                eps[0] = 0.0
            if n_pol:  # samples i0 .. i0 + n_pol - 1: the policy's rollout, then it plus noise
                i0 = int(cfg.include_nominal)
                eps[i0] = 0.0
                eps[i0:i0 + n_pol] += policy_seq - nominal
            v = torch.clamp(nominal + eps, self.low, self.high)
            eps = v - nominal  # the perturbation actually applied after clipping
            states = self.dynamics.rollout(s, v)
            costs = self.cost(s, v, states, t0)
            penalty = getattr(self.dynamics, "last_penalty", None)  # e.g. the ensemble's disagreement
            if penalty is not None:
                costs = costs + penalty.to(costs.dtype)
            finite = torch.isfinite(costs)  # NaN, +inf and -inf alike get zero weight
            if not bool(finite.any()):
                raise FloatingPointError(f"every one of the {cfg.samples} MPPI rollouts has a non-finite cost "
                                         "(diverged dynamics?)")
            costs = torch.where(finite, costs, torch.full_like(costs, float("inf")))
            beta = costs[finite].min()
            weights = torch.where(finite, torch.exp(-(costs - beta) / cfg.temperature), torch.zeros_like(costs))
            weights = weights / weights.sum()
            nominal = nominal + cfg.step_size * (weights[:, None, None] * eps).sum(0)
        self._plan, self._t_plan = nominal, t0
        predicted = (weights[:, None, None].to(states.dtype) * torch.nan_to_num(states)).sum(0)
        return PlanResult(action=nominal[0].numpy().copy(), nominal=nominal.numpy().copy(), t0=t0,
                          predicted_states=predicted.double().numpy(), actions=v, states=states, costs=costs, weights=weights)
