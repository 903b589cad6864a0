"""Training a trajectory model to answer to its actions: twins simulated in MuJoCo and the action-effect loss.

A trajectory model trained on a closed-loop planner's data can predict a window's future from its history
and ignore the actions (``ws eval open-loop --action-noise`` measures it: the action-effect error), and MPPI,
which ranks action sequences by the differences its model predicts between them, then plans on noise.
:class:`ActionEffectLoss` is a training loss (``ws_worldmodel.pretrain.pretrain``'s ``loss_fn``) that makes
those differences a target of their own. For every training window it simulates a **twin** in MuJoCo: the
same history, the future actions perturbed (Gaussian, ``noise`` half control ranges, clipped), the futures of
both action sequences from the window's last observed state. The loss is

    CE(window) + CE(twin) + weight * mean |(p' - p) - (x' - x)| / mean |x' - x|

with ``CE`` the model's own loss (WestWorld's HL-Gauss cross-entropy, eq. 11 of seed 003), ``p, p'`` the
model's decoded predictions for the window and the twin, ``x, x'`` the window's future and MuJoCo's under the
perturbed actions, over the real state channels of every future step: the action-effect error of ``ws eval
open-loop`` on the training batch. The data's futures must be what MuJoCo makes of the logged actions from
the window's last observed state (``ws collect``'s and ``ws perturbed-replays``' are, to float rounding:
tested), so that ``x' - x`` is the perturbation's effect alone. Seed 003 trains with the cross-entropy alone; the twin and the
third term are this project's. Perturbing a demonstrator's actions so that a learner sees their effects is
DART's idea (Laskey et al. 2017); pairing two futures of one past so that the loss sees their difference is
the same idea as ranking losses on pairs.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
import torch

from ws_sim.channels import Channel

from .data import denormalise, normalise
from .westworld import TrajectoryBatch

__all__ = ["ActionEffectLoss", "action_effect_error"]


def action_effect_error(pred: torch.Tensor, pred_twin: torch.Tensor, true: torch.Tensor, true_twin: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean |(p' - p) - (x' - x)| / mean |x' - x|`` (0: the model's change from the perturbation is exact;
    1: it predicts none). ``pred, pred_twin, true, true_twin (B, H, Cs)``; ``mask (B, Cs)`` bool, true for
    real channels (None: all). Differentiable in the predictions; the denominator is at least 1e-8."""
    dp, dx = pred_twin - pred, true_twin - true
    if mask is not None:
        m = mask[:, None, :].expand_as(dx)
        dp, dx = dp[m], dx[m]
    return (dp - dx).abs().mean() / dx.abs().mean().clamp_min(1e-8)


class ActionEffectLoss:
    """``loss(net, batch) -> scalar``: a model's loss on a batch and on its MuJoCo twin, plus ``weight`` times
    their action-effect error (see the module docstring).

    Args:
        mj_model: the system's ``MjModel``; its states must be the data's ``qpos, qvel``.
        frame_skip: physics steps per control step (the environment's).
        state_channels, action_channels: the channels the batches are normalised with (``SystemData``'s).
        noise: the perturbation's standard deviation in half control ranges (> 0).
        weight: the action-effect term's weight (>= 0; 0 keeps the twin's cross-entropy only).
        seed: the perturbations' random stream (each batch's draw comes from the seed and the batch's states).
        nthread: MuJoCo rollout threads.

    Raises:
        ValueError: ``noise`` or ``weight`` out of range, or channels that are not the model's ``qpos, qvel``
            and actuators. At call time: a model without ``loss_from_logits`` and ``decode`` (WestWorld has
            them), or a batch whose channels are not these.
    """

    def __init__(self, mj_model, frame_skip: int, state_channels: Sequence[Channel], action_channels: Sequence[Channel],
                 noise: float = 0.3, weight: float = 1.0, seed: int = 0, nthread: int | None = 1):
        from ws_sim.oracle import MuJoCoOracle

        if not (noise > 0 and math.isfinite(noise)):
            raise ValueError(f"the action-effect loss's noise must be a positive number of half control ranges, got {noise}")
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"the action-effect loss's weight must be a finite number >= 0, got {weight}")
        if len(state_channels) != mj_model.nq + mj_model.nv or len(action_channels) != mj_model.nu:
            raise ValueError(f"the twins are simulated in MuJoCo from the data's states, which must be qpos, qvel "
                             f"({mj_model.nq} + {mj_model.nv} channels) with {mj_model.nu} actuators; the data have "
                             f"{len(state_channels)} state and {len(action_channels)} action channels")
        self.mj_model, self.noise, self.weight = mj_model, float(noise), float(weight)
        self.state_channels, self.action_channels = list(state_channels), list(action_channels)
        self.oracle = MuJoCoOracle(mj_model, int(frame_skip), nthread=nthread)
        self.seed = int(seed)
        self.last: dict[str, float] = {}

    def twins(self, batch: TrajectoryBatch) -> TrajectoryBatch:
        """The batch's twins, normalised like ``batch``: the batch's history and its future actions perturbed,
        the future states MuJoCo's under them from each window's last observed state."""
        from ws_sim.oracle import perturb_actions

        b, t, cs = batch.states.shape
        th = batch.history
        if cs != len(self.state_channels) or batch.actions.shape[2] != len(self.action_channels):
            raise ValueError(f"a batch of {cs} state and {batch.actions.shape[2]} action channels; the action-effect "
                             f"loss was made for {len(self.state_channels)} and {len(self.action_channels)}")
        s = denormalise(batch.states.detach().double().cpu().numpy(), self.state_channels)
        a = denormalise(batch.actions.detach().double().cpu().numpy(), self.action_channels)
        fut = slice(th - 1, t - 1)  # actions[:, k] lead from s_k to s_{k+1}: these make the future states
        a_twin = a.copy()
        # drawn from the seed and the batch itself, so that a resumed training sees the perturbations an
        # uninterrupted one would (its batches are drawn from the seed and the step)
        rng = np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(s).tobytes())])
        a_twin[:, fut] = perturb_actions(self.mj_model, a[:, fut], self.noise, rng)
        x_twin = self.oracle.rollout(s[:, th - 1], a_twin[:, fut])
        states = s.copy()
        states[:, th:] = x_twin
        dev, dt = batch.states.device, batch.states.dtype
        twin = TrajectoryBatch(torch.as_tensor(normalise(states, self.state_channels), dtype=dt, device=dev),
                               torch.as_tensor(normalise(a_twin, self.action_channels), dtype=dt, device=dev),
                               batch.state_mask, batch.action_mask, batch.state_struct, batch.action_struct, th)
        return twin

    def __call__(self, net, batch: TrajectoryBatch) -> torch.Tensor:
        """The scalar loss of ``net`` (a WestWorld) on ``batch`` (``B`` windows of one system, normalised,
        ``history`` observed steps) and its ``B`` twins: the mean cross-entropy over the ``2B`` windows (eq. 11 of
        seed 003) plus ``weight`` times :func:`action_effect_error` of the decoded predictions. :attr:`last` keeps
        both parts of the latest call. Raises ValueError (see the class)."""
        if not (hasattr(net, "loss_from_logits") and hasattr(net, "decode")):
            raise ValueError(f"the action-effect loss needs a model that decodes its logits (WestWorld); "
                             f"got a {type(net).__name__}")
        twin = self.twins(batch)
        both = TrajectoryBatch(torch.cat([batch.states, twin.states]), torch.cat([batch.actions, twin.actions]),
                               torch.cat([batch.state_mask, twin.state_mask]),
                               torch.cat([batch.action_mask, twin.action_mask]),
                               torch.cat([batch.state_struct, twin.state_struct]),
                               torch.cat([batch.action_struct, twin.action_struct]), batch.history)
        logits = net(both)[0]
        ce = net.loss_from_logits(logits, both)
        b, th = batch.states.shape[0], batch.history
        pred = net.decode(logits, both)
        err = action_effect_error(pred[:b], pred[b:], batch.states[:, th:], twin.states[:, th:], batch.state_mask)
        self.last = {"cross_entropy": float(ce.detach()), "action_effect_error": float(err.detach())}
        return ce + self.weight * err if self.weight > 0 else ce

    def close(self) -> None:
        """Stop MuJoCo's rollout threads."""
        self.oracle.close()
