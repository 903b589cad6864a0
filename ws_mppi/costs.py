"""MPPI trajectory costs for Hopper and Walker2d (seed 003, Appendices D.3.1-D.3.2).

The per-step cost is the negative Gymnasium reward (eqs. 17-20, 24-27): forward velocity of
the root, a healthy bonus while the torso height and pitch (and, for Hopper, every other
state entry) stay in Gymnasium's ranges, and a quadratic control cost. As in the
environment, nothing accrues after the first unhealthy state (the episode would have
ended); ``termination_penalty`` adds a fixed cost to a rollout that falls. The optional
expert-reference tracking term is eq. (21)/(28): ``w_ref * sum_i W_i (s_t,i - s^ref_t,i)^2``
over ``[qpos, qvel]`` with the root x weight zero. Summed over the horizon they give the
MPPI objective of eqs. (22)/(29).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["LocomotionCost", "ReferenceTracking"]


@dataclasses.dataclass
class ReferenceTracking:
    """Expert-reference tracking term (seed 003, eqs. 21 and 28).

    Attributes:
        reference: ``(T, nx)`` reference states ``[qpos, qvel]`` indexed by episode step.
        weights: ``(nx,)`` diagonal weights ``W`` (root x weight should be 0).
        scale: the overall weight ``w_ref``.
    """

    reference: np.ndarray
    weights: np.ndarray
    scale: float = 0.1

    def __post_init__(self):
        self.reference = np.asarray(self.reference, dtype=np.float32)
        self.weights = np.asarray(self.weights, dtype=np.float32)
        if self.reference.ndim != 2 or self.weights.shape != (self.reference.shape[1],):
            raise ValueError(f"reference {self.reference.shape} and weights {self.weights.shape} "
                             "must be (T, nx) and (nx,)")


class LocomotionCost:
    """Batched negative-reward cost of K predicted trajectories.

    Args:
        task: a ``ws_sim.envs.LocomotionTask`` (Gymnasium's reward numbers).
        termination_penalty: cost added once to a rollout that becomes unhealthy.
        reference: optional :class:`ReferenceTracking` term.

    Call with ``state (nx,)``, ``actions (K, H, nu)``, ``states (K, H, nx)`` (``s_1..s_H``)
    and the episode step ``t0`` of ``state`` (for the reference); returns costs ``(K,)``.
    """

    def __init__(self, task, termination_penalty: float = 0.0,
                 reference: ReferenceTracking | None = None):
        self.task = task
        self.termination_penalty = float(termination_penalty)
        self.reference = reference

    def healthy(self, states: torch.Tensor) -> torch.Tensor:
        """Gymnasium's health check, batched: ``(..., nx) -> (...)`` bool."""
        t = self.task
        z = states[..., t.z_index]
        ang = states[..., t.angle_index]
        ok = (z > t.healthy_z_range[0]) & (z < t.healthy_z_range[1])
        ok &= (ang > t.healthy_angle_range[0]) & (ang < t.healthy_angle_range[1])
        if t.healthy_state_range is not None:
            rest = states[..., 2:]
            ok &= ((rest > t.healthy_state_range[0]) & (rest < t.healthy_state_range[1])).all(-1)
        return ok

    def step_rewards(self, state: torch.Tensor, actions: torch.Tensor,
                     states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step Gymnasium rewards and the alive mask.

        Returns:
            ``(rewards (K, H), alive (K, H))`` where ``alive[:, t]`` is true while no state
            before step ``t`` was unhealthy (the reward of step ``t`` counts).
        """
        t = self.task
        k, h, _ = states.shape
        x = states[..., t.x_index]
        x_prev = torch.cat([state[t.x_index].expand(k, 1).to(x.dtype), x[:, :-1]], dim=1)
        healthy = self.healthy(states)
        rewards = (t.forward_reward_weight * (x - x_prev) / t.dt
                   + t.healthy_reward * healthy.to(x.dtype)
                   - t.ctrl_cost_weight * actions.square().sum(-1))
        alive = torch.ones_like(healthy)
        alive[:, 1:] = torch.cumprod(healthy[:, :-1].to(torch.int8), dim=1).bool()
        return rewards, alive

    def __call__(self, state: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                 t0: int = 0) -> torch.Tensor:
        rewards, alive = self.step_rewards(state, actions, states)
        cost = -(rewards * alive.to(rewards.dtype)).sum(1)
        if self.termination_penalty:
            fell = ~(self.healthy(states).all(1))
            cost = cost + self.termination_penalty * fell.to(cost.dtype)
        if self.reference is not None:
            ref = self.reference
            h = states.shape[1]
            idx = np.clip(np.arange(t0 + 1, t0 + 1 + h), 0, len(ref.reference) - 1)
            r = torch.as_tensor(ref.reference[idx], dtype=states.dtype)
            w = torch.as_tensor(ref.weights, dtype=states.dtype)
            track = ((states - r).square() * w).sum(-1) * alive.to(states.dtype)
            cost = cost + ref.scale * track.sum(1)
        return cost
