"""Knowledge distillation of WestWorld into a small student (seed 003, App. G, eqs. 37-38).

The student is a WestWorld with fewer Sys-MoE blocks (two in the seed) and the same
discretised head: the same bins and HL-Gauss width as the teacher, so both predict
distributions over the same bins; or (not in the seed) ``bins / m`` bins for an integer ``m``,
each the union of ``m`` neighbouring teacher bins: the teacher's distribution is summed over
each group (its centres are then exactly the student's, as the bins are uniform on the unit
scale) and the HL-Gauss width kept in absolute terms. A coarser head halves the read-out, which
dominates a small student's MPPI cycle. Its loss is the convex combination

    L = alpha * L_CE + (1 - alpha) * L_KD,                                   (eq. 37)
    L_KD = mean over samples, future steps and real state channels of
           KL(p_teacher || p_student) = sum_b p_T(b) (log p_T(b) - log p_S(b)),  (eq. 38)

where ``L_CE`` is the soft-label cross-entropy of eq. (11). The seed's value of ``alpha`` is
lost in its text; the default here is 0.5. The teacher runs without gradients on the same
batches. Distillation uses the pretraining corpus; fine-tuning on a control dataset then
goes through ``ws eval control`` (or :func:`ws_worldmodel.pretrain.pretrain` with
``init_from``), as App. G describes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import torch
from torch.nn import functional as F

__all__ = ["kd_loss", "merge_bins", "student_config", "distill"]


def merge_bins(logits: torch.Tensor, bins: int) -> torch.Tensor:
    """Log-probabilities over ``bins`` coarser bins ``(..., bins)`` from logits ``(..., B)`` over ``B`` uniform bins,
    ``B`` a multiple of ``bins``: each coarse bin's probability is the sum over its ``B / bins`` neighbours.

    Raises:
        ValueError: ``bins`` does not divide the number of bins of ``logits``.
    """
    fine = logits.shape[-1]
    if bins < 1 or fine % bins:
        raise ValueError(f"{bins} bins do not divide the teacher's {fine} bins")
    log_p = F.log_softmax(logits.float(), dim=-1)
    if bins == fine:
        return log_p
    return torch.logsumexp(log_p.unflatten(-1, (bins, fine // bins)), dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (38): ``KL(p_teacher || p_student)`` over bins, averaged like eq. (11).

    Args:
        student_logits, teacher_logits: ``(B, H, C, bins)``; the teacher may have a multiple of the student's
            bins, merged first (:func:`merge_bins`).
        mask: ``(B, C)`` bool, true for real state channels.

    Returns:
        the mean over samples of each sample's mean over its steps and real channels (so that
        data-parallel shards average to the global-batch value, as for eq. 11).
    """
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = merge_bins(teacher_logits, student_logits.shape[-1])
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, H, C)
    m = mask[:, None, :].to(kl.dtype)
    per_sample = (kl * m).sum((1, 2)) / (m[:, 0].sum(-1) * kl.shape[1]).clamp_min(1)
    return per_sample.mean()


def student_config(teacher_cfg, n_blocks: int = 2, d_model: int | None = None, expert_hidden: int | None = None,
                   d_state: int | None = None, expand: int | None = None, n_heads: int | None = None,
                   tokens: str | None = None, bins: int | None = None):
    """The student's WestWorld config: the teacher's, with ``n_blocks`` blocks and optionally a
    narrower width, expert width, SSM state size and expansion, fewer attention heads, or one token
    per step instead of per channel (``tokens="step"``; what an MPPI cycle's time scales with);
    the target encoding is kept, and the bins too unless ``bins`` divides the teacher's (merged
    neighbours; the HL-Gauss width then scales so that it stays the same on the unit scale).

    Raises:
        ValueError: a size the config refuses (e.g. ``d_model`` not divisible by ``n_heads``).
    """
    changes = {"n_blocks": int(n_blocks)}
    for name, value in (("d_model", d_model), ("expert_hidden", expert_hidden), ("d_state", d_state),
                        ("expand", expand), ("n_heads", n_heads)):
        if value is not None:
            changes[name] = int(value)
    if tokens is not None:
        changes["tokens"] = str(tokens)
    if bins is not None and int(bins) != teacher_cfg.bins:
        if int(bins) < 2 or teacher_cfg.bins % int(bins):
            raise ValueError(f"student bins ({bins}) must divide the teacher's {teacher_cfg.bins}")
        changes["bins"] = int(bins)
        changes["hl_gauss_sigma"] = teacher_cfg.hl_gauss_sigma * int(bins) / teacher_cfg.bins
    return dataclasses.replace(teacher_cfg, **changes)


def distill(teacher, train: Sequence, val: Sequence, student_cfg, cfg, out: str | os.PathLike | None,
            alpha: float = 0.5, seed: int = 0, progress: bool = True, resume: bool = False,
            device: str | None = None) -> dict:
    """Train a student WestWorld on ``teacher``'s soft predictions and the ground truth (eq. 37).

    Args:
        teacher: a WestWorld ``TrajectoryWorldModel`` (``ws pretrain``).
        train, val: corpus windows (``SystemData``), length ``cfg.history + cfg.horizon``.
        student_cfg: the student's ``WestWorldConfig`` (see :func:`student_config`).
        cfg: a ``PretrainConfig`` (optimiser, steps, early stopping on the validation CE).
        out: student checkpoint path (a ``TrajectoryWorldModel`` like any ``ws pretrain`` output).
        alpha: weight of the ground-truth cross-entropy, in [0, 1].
        device: where the student and teacher train (``"cpu"``, ``"cuda"``; None: CUDA when present).

    Returns:
        the training history of :func:`ws_worldmodel.pretrain.pretrain`.

    Raises:
        ValueError: the teacher is not a WestWorld, the student's bins do not divide the teacher's (or their
            HL-Gauss widths differ on the unit scale), or alpha is outside [0, 1].
    """
    from ws_worldmodel.pretrain import pretrain

    if teacher.kind != "westworld":
        raise ValueError(f"the teacher must be a WestWorld, got a {teacher.kind}")
    tcfg = teacher.net.cfg
    if (tcfg.bins % student_cfg.bins
            or abs(student_cfg.hl_gauss_sigma * tcfg.bins / student_cfg.bins - tcfg.hl_gauss_sigma) > 1e-9):
        raise ValueError(f"student bins/HL-Gauss width ({student_cfg.bins}, {student_cfg.hl_gauss_sigma}) must equal "
                         f"the teacher's ({tcfg.bins}, {tcfg.hl_gauss_sigma}) or merge them (student_config(bins=))")
    if (student_cfg.target, student_cfg.delta_range, student_cfg.delta_eps) != (tcfg.target, tcfg.delta_range,
                                                                               tcfg.delta_eps):
        raise ValueError(f"student target encoding ({student_cfg.target}) must equal the teacher's ({tcfg.target}), "
                         "with the same delta_range and delta_eps")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t_net = teacher.net.eval()
    for p in t_net.parameters():
        p.requires_grad_(False)

    def loss_fn(net, batch):
        logits, _ = net(batch)
        ce = net.loss_from_logits(logits, batch)
        if alpha == 1.0:
            return ce
        t_net.to(batch.states.device)
        with torch.no_grad():
            t_logits, _ = t_net(batch)
        return alpha * ce + (1.0 - alpha) * kd_loss(logits, t_logits, batch.state_mask)

    return pretrain(train, val, student_cfg, cfg, out, seed=seed, resume=resume, progress=progress, loss_fn=loss_fn,
                    device=device)
