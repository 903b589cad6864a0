"""Distillation of the bidirectional teacher into the chunk-causal student, Self-Forcing style
(issue 9; seed 001's real-time generation rests on it).

Self-Forcing (Huang et al. 2025, "Self Forcing: Bridging the Train-Test Gap in Autoregressive
Video Diffusion") trains the causal student on *its own* rollouts: it generates chunk after
chunk with its KV cache exactly as at inference, and the loss compares the distribution of what
it generated with the teacher's through distribution matching distillation (DMD; Yin et al.
2024, "One-step Diffusion with Distribution Matching Distillation", eq. 7-8). In rectified-flow
terms, here (choices made here where the papers' diffusion parametrisation differs):

**Rollout.** For every chunk the student runs its ``steps`` Euler steps; at a random exit step
``s`` (uniform over the steps, a fresh draw per chunk) it stops and jumps to the clean estimate
``x^_1 = x_s + (1 - tau_s) v(x_s)``, with gradient through that one network call only; the
earlier steps and the clean pass that caches the chunk's keys and values run without gradient
(Self-Forcing's gradient truncation), so later chunks see the student's own outputs.

**Distribution matching.** For the generated clip ``x`` (its given frames true), a flow time
``tau ~ U(0.02, 0.98)`` per clip and noise ``x_0``: ``x_tau = tau x + (1 - tau) x_0``. The frozen
teacher's clean estimate ``x^real`` and a critic's ``x^fake`` (a copy of the teacher trained
online by flow matching on the student's rollouts: it models what the student generates) give
the DMD direction ``g = (x^fake - x^real) / mean|x - x^real|`` (DMD's normalisation), and the
student's loss is ``0.5 |x - sg(x - g)|^2`` over the generated frames, whose gradient is ``g``:
it moves the student's samples from where the critic says they are toward where the teacher
says the data is. The critic takes ``critic_steps`` flow-matching steps per student step
(DMD2 uses 5).

    ws video distill --clips data/clips.hdf5 --teacher runs/teacher.pt \\
        --student runs/mix.pt --out runs/distilled.pt [--iters 400]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .clips import read_clips
from .dit import VideoDiT
from .experts import batch_of, load, save_checkpoint
from .tool import tool_main

__all__ = ["student_rollout", "dmd_loss", "distill"]


def student_rollout(student: VideoDiT, first: torch.Tensor, controls: torch.Tensor, label: int, frames: int,
                    steps: int, rng: np.random.Generator, generator: torch.Generator | None = None) -> torch.Tensor:
    """The student's own rollout with gradient (module docstring): ``first`` ``(B, F0, C, S, S)``
    given frames, ``controls`` ``(B, frames, D)``; returns ``(B, frames, C, S, S)``, the generated
    frames carrying gradient through one exit step per chunk."""
    b, f0 = first.shape[:2]
    chunk = student.cfg.chunk
    like = dict(dtype=first.dtype, device=first.device)
    ones = lambda n: torch.ones(b, n, **like)  # noqa: E731
    with torch.no_grad():
        _, past = student(first, ones(f0), controls[:, :f0], label, return_kv=True, context=f0, base=first)
    out, t = [first], f0
    while t < frames:
        n = min(chunk, frames - t)
        ctrl = controls[:, t:t + n]
        x = torch.randn((b, n) + tuple(first.shape[2:]), generator=generator, dtype=first.dtype).to(first.device)
        exit_step = int(rng.integers(steps))
        base = out[-1][:, -1:].detach()  # the last frame before the chunk (residual students)
        with torch.no_grad():
            for s in range(exit_step):
                tau = torch.full((b, n), s / steps, **like)
                x = x + student(x, tau, ctrl, label, first_frame=t, past=past, context=f0, base=base) / steps
        tau_s = exit_step / steps
        v = student(x, torch.full((b, n), tau_s, **like), ctrl, label, first_frame=t, past=past,
                    context=f0, base=base)
        x1 = (x + (1 - tau_s) * v).clamp(-1, 1)
        out.append(x1)
        with torch.no_grad():
            _, kv = student(x1.detach(), ones(n), ctrl, label, first_frame=t, past=past, return_kv=True, context=f0,
                            base=base)
        past = [(torch.cat([pk, k], 2), torch.cat([pv, vv], 2)) for (pk, pv), (k, vv) in zip(past, kv)]
        t += n
    return torch.cat(out, 1)


def dmd_loss(x: torch.Tensor, controls: torch.Tensor, label: int, teacher: VideoDiT, critic: VideoDiT, context: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The DMD loss (module docstring) of generated clips ``x`` ``(B, T, C, S, S)`` whose first
    ``context`` frames are given; its gradient w.r.t. the generated frames is the DMD direction."""
    b, t = x.shape[:2]
    tau = 0.02 + 0.96 * torch.rand(b, 1, generator=generator, dtype=x.dtype).to(x.device).expand(b, t).clone()
    tau[:, :context] = 1.0
    x0 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    w = tau[:, :, None, None, None]
    with torch.no_grad():
        xt = w * x.detach() + (1 - w) * x0
        base = x.detach()[:, context - 1:context]  # the last given frame (residual teachers)
        real = xt + (1 - w) * teacher(xt, tau, controls, label, causal=False, base=base)
        fake = xt + (1 - w) * critic(xt, tau, controls, label, causal=False, base=base)
        gen = x.detach()[:, context:]
        scale = (gen - real[:, context:]).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-4)
        g = (fake - real)[:, context:] / scale
    return 0.5 * ((x[:, context:] - (gen - g)) ** 2).mean()


def distill(clips: str, teacher: str, student: str, out: str, iters: int = 400, batch: int = 4, steps: int = 4,
            lr: float = 1e-5, critic_lr: float = 1e-4, critic_steps: int = 2, seed: int = 0,
            threads: int | None = None, progress: bool = True, device: str = "cpu") -> dict:
    """Distil ``teacher`` (a bidirectional :mod:`ws_worldmodel.video.experts` checkpoint) into
    ``student`` (a causal one of the same kinds) on the training clips of ``clips``.

    Args:
        iters: student updates. batch: clips per update. steps: the student's Euler steps
            per chunk (the exit step is drawn among them).
        lr, critic_lr: learning rates. critic_steps: critic updates per student update.
        device: where the models and batches live while training (``"cpu"``, ``"cuda"``).

    Returns:
        a summary; writes the distilled student (marked ``distilled``) to ``out``.

    Raises:
        ValueError: a causal teacher, a bidirectional student, different kinds or sizes.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t_model, t_ck = load(teacher, device)
    s_model, s_ck = load(student, device)
    if t_ck.get("causal", True):
        raise ValueError(f"{teacher} is a causal student; the teacher must be bidirectional "
                         "('ws video experts train --teacher')")
    if not s_ck.get("causal", True):
        raise ValueError(f"{student} is bidirectional; the student must be chunk-causal")
    if t_model.cfg.control_kinds != s_model.cfg.control_kinds or t_model.cfg.image_size != s_model.cfg.image_size:
        raise ValueError("teacher and student must know the same control kinds at the same frame size")
    critic = copy.deepcopy(t_model).train()
    for p in t_model.parameters():
        p.requires_grad_(False)
    s_model.train()
    kinds = s_model.cfg.control_kinds
    data = read_clips(clips)
    sets = {k: data[k].split()[0] for k in kinds}
    labels = {k: i for i, k in enumerate(kinds)}
    context = s_ck["context"]
    frames = sets[kinds[0]].rgb.shape[1]
    opt_s = torch.optim.AdamW(s_model.parameters(), lr=lr, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=critic_lr, weight_decay=0.0)
    hist = {"dmd": [], "critic": []}
    t0 = time.perf_counter()
    bar = tqdm(range(iters), desc="self-forcing DMD", unit="iter", disable=not progress, file=sys.stderr)
    for _ in bar:
        kind = kinds[int(rng.integers(len(kinds)))]  # one kind a batch: generation routes by one label
        x, c, _ = (v.to(device) for v in batch_of(sets, (kind,), rng, batch, max(s_model.cfg.control_dims), labels))
        label = labels[kind]
        gen = student_rollout(s_model, x[:, :context], c, label, frames, steps, rng)
        for _ in range(critic_steps):  # the critic learns what the student generates now
            closs, _ = critic.loss(gen.detach(), c, torch.full((batch,), label, device=device), context=context,
                                   causal=False)
            opt_c.zero_grad(set_to_none=True)
            closs.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            opt_c.step()
        loss = dmd_loss(gen, c, label, t_model, critic, context)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s_model.parameters(), 1.0)
        opt_s.step()
        hist["dmd"].append(loss.item())
        hist["critic"].append(closs.item())
        bar.set_postfix(dmd=f"{np.mean(hist['dmd'][-20:]):.4f}", critic=f"{np.mean(hist['critic'][-20:]):.3f}")
    summary = {"iters": iters, "batch": batch, "steps": steps, "critic_steps": critic_steps, "lr": lr,
               "seconds": round(time.perf_counter() - t0, 1), "teacher": str(teacher), "student": str(student),
               "dmd_first_20": float(np.mean(hist["dmd"][:20])), "dmd_last_20": float(np.mean(hist["dmd"][-20:])),
               "critic_first_20": float(np.mean(hist["critic"][:20])),
               "critic_last_20": float(np.mean(hist["critic"][-20:]))}
    ck = dict(s_ck)
    ck.update(state_dict=s_model.state_dict(), distilled=True, distill=summary, distill_history=hist)
    save_checkpoint(Path(out), ck)
    return summary


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``ws video distill`` (and ``python -m ws_worldmodel.video.distill``)."""
    ap.add_argument("--clips", required=True)
    ap.add_argument("--teacher", required=True, help="bidirectional checkpoint ('ws video experts train --teacher')")
    ap.add_argument("--student", required=True, help="chunk-causal checkpoint of the same kinds")
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="student Euler steps per chunk")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--critic-lr", type=float, default=1e-4)
    ap.add_argument("--critic-steps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the models and batches live while training")


def run(args) -> int:
    """Distil as :func:`add_arguments`'s ``args`` say and print the summary as JSON.

    Raises:
        ValueError, OSError: mismatched or unreadable checkpoints and clips.
    """
    res = distill(args.clips, args.teacher, args.student, args.out, args.iters, args.batch, args.steps, args.lr,
                  args.critic_lr, args.critic_steps, args.seed, args.threads, device=args.device)
    print(json.dumps(res, indent=1))
    return 0


def main(argv=None) -> int:
    """``python -m ws_worldmodel.video.distill``: as ``ws video distill``."""
    return tool_main("ws_worldmodel.video.distill", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
