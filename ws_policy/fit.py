"""The gradient loop shared by the policy's small supervised models (the state policy, the object perception).

AdamW with weight decay, the learning rate decayed by a cosine over the run; a tqdm-like ``progress`` gets one
update per step and the loss every 50 steps.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["fit"]


def fit(model: nn.Module, batch_loss: Callable[[int], torch.Tensor], steps: int, lr: float,
        weight_decay: float = 1e-4, progress=None) -> dict:
    """Run ``steps`` AdamW steps on ``batch_loss(step)`` (a scalar tensor for one fresh batch).

    The model is left in training mode; the caller switches it to eval.

    Returns:
        ``{"loss": [one float per step], "seconds": wall-clock seconds of the loop}``.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hist, t0 = {"loss": []}, time.perf_counter()
    model.train()
    for step in range(steps):
        loss = batch_loss(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist["loss"].append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
            if step % 50 == 0:
                progress.set_postfix(loss=f"{hist['loss'][-1]:.4f}")
    hist["seconds"] = time.perf_counter() - t0
    return hist
