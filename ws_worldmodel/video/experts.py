"""The control-expert mixture measured: against one model per control kind and against a dense
model, on held-out clips of each kind; Worldscape-MoE Tuning of a kind added later; and long
rollouts with action-guided chunks and the memory against the fixed-chunk baseline (issue 9;
seeds 000 and 002).

**Models** (all chunk-causal students, :class:`ws_worldmodel.video.dit.VideoDiT`):

- ``mixture``: one model for all kinds; each block's feed-forward is the shared expert plus the
  sample's kind expert (seed 000);
- ``dense``: one model for all kinds, one feed-forward of the same per-sample width, no experts
  (seed 000's "w/o MoE" row);
- ``per-kind``: one model per kind, each trained only on its kind's clips (dense, the same
  per-sample width).

All are residual by default (``VideoDiTConfig.residual``: each frame predicted as a change from
the last frame before its chunk; ``--plain`` trains the plain model).

The fair budget is the same data and the same compute: a mixture or dense run of ``S`` steps
sees about ``S * batch / 3`` clips of each kind, so each per-kind model trains ``S / 3`` steps
at the same batch (``--steps`` of ``train`` is per model; the README gives the commands).

**Chunks in training.** Every batch draws a random chunk layout (lengths 1 to
``--max-chunk`` frames after the given ones, one flow time per chunk), so a student can
generate with any chunking, fixed or action-guided, and the drift test compares chunkings on
one model.

**Held-out scores** (``eval``), on clips from episodes no model trained on:

- ``flow``: the velocity error ``|v^ - (x_1 - x_0)|^2`` of the frames after the given ones at flow
  times 0.25, 0.5 and 0.75, with the same noise for every model (lower is better);
- ``rollout``: generate every frame after the 2 given ones chunk by chunk (2-frame chunks, 4
  Euler steps each, the same noise for every model) and take the MSE against the true frames
  (RGB and depth, [-1, 1] scale);
- ``detail``: the generated RGB frames' mean squared spatial gradient over the true frames'
  (1: as much fine detail as the data; below 1: blurred toward the mean, as a one-step
  sample is; above 1: excess noise). MSE rewards blur, so a sampler that matches the data's
  distribution (what distillation is for) shows here rather than there.

**Drift** (``drift``): from 2 given frames of a held-out episode 10x the training clip length,
generate the rest with (a) fixed chunks and the whole past in the cache (the baseline), (b)
fixed chunks with the memory-aware cache, (c) action-guided chunks with the memory. Per-frame
MSE against the truth, its growth (mean of the last quarter of the frames minus the first
quarter's) and the cache's size at the end.

**Revisit on the Go1** (``revisit``): the revisit test of the memory on robot data. From 2
given frames the Go1, standing, turns its head camera away at ``rate`` rad a frame for ``out``
frames (farther than its 70-degree view, for more frames than the window holds) and back
(:func:`ws_worldmodel.video.clips.go1_walk_episode` with ``look=``). The returning frames whose
view overlaps the first one by more than half (yaw within 35 degrees) are scored against the
truth, once with the memory (the given frames as anchors, a pose-retrieved pool, a short window)
and once with a window of the most recent frames as long as the memory's whole context; the
same model and noise. The first given frame itself, held, is the reference row.

    ws video experts train --clips data/clips.hdf5 --arch mixture --out runs/mix.pt
    ws video experts eval --clips data/clips.hdf5 runs/mix.pt runs/dense.pt ...
    ws video experts drift --long data/long.hdf5 --checkpoint runs/mix.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ws_sim.atomic import atomic_write

from ..checkpoint import plain_payload
from .clips import CONTROL_DIMS, KINDS, MAX_DEPTH, ClipSet, frames_tensor, look_yaw, read_clips
from .dit import (VideoDiT, VideoDiTConfig, action_guided_chunks, load_video_dit, chunk_ids, generate_bidirectional,
                  generate_chunked)
from .memory import MemoryConfig, MemoryKVCache
from .tool import tool_main

ARCHS = ("mixture", "dense", "per-kind")
FLOW_TAUS = (0.25, 0.5, 0.75)

__all__ = ["ARCHS", "random_chunks", "batch_of", "train", "load", "save_checkpoint", "flow_error", "evaluate",
           "drift", "detail_ratio", "revisit"]


def random_chunks(rng: np.random.Generator, frames: int, max_chunk: int) -> list[int]:
    """Random chunk lengths in ``[1, max_chunk]`` summing to ``frames``."""
    out = []
    while sum(out) < frames:
        out.append(int(min(rng.integers(1, max_chunk + 1), frames - sum(out))))
    return out


def batch_of(sets: dict[str, ClipSet], kinds: tuple, rng: np.random.Generator, b: int, control_dim: int,
             labels: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` clips, each of a kind drawn uniformly from ``kinds``: ``(clips (B, T, 4, S, S), controls
    (B, T, control_dim) zero-padded, labels (B,))``."""
    pick = rng.integers(0, len(kinds), b)
    clips, ctrls = [], []
    for k in pick:
        s = sets[kinds[k]]
        i = rng.integers(len(s))
        clips.append(frames_tensor(s.rgb[i], s.depth[i], s.max_depth))
        c = torch.zeros(s.controls.shape[1], control_dim)
        c[:, : s.controls.shape[2]] = torch.as_tensor(s.controls[i])
        ctrls.append(c)
    lab = torch.tensor([labels[kinds[k]] for k in pick])
    return torch.stack(clips), torch.stack(ctrls), lab


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` (config dict, ``state_dict``, training record) to ``path`` atomically,
    as tensors and plain data only (:func:`ws_worldmodel.checkpoint.plain_payload`), so that
    :func:`load` never runs code.

    Raises:
        TypeError: ``payload`` holds an object that is not plain data (its place is named).
    """
    buf = io.BytesIO()
    torch.save(plain_payload(payload), buf)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))  # never a half-written checkpoint


def train(clips: str, arch: str, out: str, kinds: tuple = KINDS, steps: int = 1500, batch: int = 8,
          lr: float = 1e-3, d_model: int = 128, layers: int = 4, heads: int = 4, patch: int = 8,
          context: int = 2, max_chunk: int = 4, seed: int = 0, init: str | None = None,
          add_kind: str | None = None, chunk_experts: int = 0, causal: bool = True, residual: bool = True,
          threads: int | None = None, progress: bool = True, device: str = "cpu") -> dict:
    """Train one model (module docstring) on the training episodes of ``clips``.

    Args:
        arch: ``mixture`` or ``dense`` (all ``kinds`` in one model), or ``per-kind`` (exactly
            one kind in ``kinds``).
        init: start from this checkpoint; with ``add_kind``, add that kind to it
            (:meth:`VideoDiT.add_control_kind`) and train only
            :meth:`VideoDiT.tuning_parameters` (Worldscape-MoE Tuning) on batches of all its kinds.
        chunk_experts: seed 002's per-chunk experts (``VideoDiTConfig.chunk_experts``; 0: none).
        causal: the chunk-causal student (default) or, False, the bidirectional teacher that
            :mod:`ws_worldmodel.video.distill` distils into it (one flow time per clip).
        residual: predict each frame as a change from the last frame before its chunk, seeing
            that frame (``VideoDiTConfig.residual``; False: the plain model).
        device: where the model and batches live while training (``"cpu"``, ``"cuda"``).

    Returns:
        a summary (steps, seconds, first and last losses).

    Raises:
        ValueError: an unknown arch or kind, a kind missing from the file, a per-kind run with
            more than one kind.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    kinds = tuple(kinds)
    if arch == "per-kind" and len(kinds) != 1:
        raise ValueError(f"a per-kind model trains on one kind, got {list(kinds)}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = read_clips(clips)
    missing = [k for k in kinds if k not in data]
    if missing:
        raise ValueError(f"{clips} has no clips of {missing} (it has {list(data)})")
    sets = {k: data[k].split()[0] for k in kinds}
    if init:
        model, ck = load(init)
        if add_kind:
            if add_kind not in data:
                raise ValueError(f"{clips} has no clips of {add_kind!r}")
            model.add_control_kind(add_kind, CONTROL_DIMS[add_kind])
            sets[add_kind] = data[add_kind].split()[0]
            kinds = model.cfg.control_kinds
        model.to(device)
        params = model.tuning_parameters(add_kind) if add_kind else list(model.parameters())
        context = ck["context"]
    else:
        cfg = VideoDiTConfig(image_size=data[kinds[0]].rgb.shape[2], patch=patch, d_model=d_model, layers=layers,
                             heads=heads, chunk=2, control_kinds=kinds,
                             control_dims=tuple(CONTROL_DIMS[k] for k in kinds),
                             moe="shared+kind" if arch == "mixture" else "dense", chunk_experts=chunk_experts,
                             residual=residual)
        model = VideoDiT(cfg).to(device)
        params = list(model.parameters())
    model.train()
    cfg = model.cfg
    labels = {k: i for i, k in enumerate(cfg.control_kinds)}
    frames = sets[kinds[0]].rgb.shape[1]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"{arch} {'+'.join(kinds)}", unit="step", disable=not progress, file=sys.stderr)
    for step in bar:
        x, c, lab = (v.to(device) for v in batch_of(sets, kinds, rng, batch, max(cfg.control_dims), labels))
        ids = chunk_ids(context, random_chunks(rng, frames - context, max_chunk)).to(device)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss, _ = model.loss(x, c, lab, context=context, chunks=ids, causal=causal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    summary = {"arch": arch, "kinds": list(kinds), "steps": steps, "batch": batch, "causal": causal,
               "seconds": round(time.perf_counter() - t0, 1), "loss_first_50": float(np.mean(losses[:50])),
               "loss_last_50": float(np.mean(losses[-50:])), "init": init, "add_kind": add_kind,
               "parameters": sum(p.numel() for p in model.parameters()),
               "trained_parameters": sum(p.numel() for p in params)}
    save_checkpoint(Path(out), {"config": dataclasses.asdict(cfg), "state_dict": model.state_dict(),
                                "context": context, "frames": frames, "arch": arch, "causal": causal,
                                "losses": losses, "summary": summary})
    return summary


def load(path, device="cpu") -> tuple[VideoDiT, dict]:
    """A :func:`train` checkpoint -> ``(model in eval mode, checkpoint dict)``.

    Read safely by :func:`ws_worldmodel.video.dit.load_video_dit` (its ``Raises`` apply:
    ``CheckpointError`` naming the path for a missing, corrupt, unsafe or mismatched file).
    """
    return load_video_dit(path, device)


@torch.no_grad()
def flow_error(model: VideoDiT, clip: torch.Tensor, controls: torch.Tensor, kind: str, tau: float,
               noise: torch.Tensor, context: int, chunk: int = 2, causal: bool = True) -> torch.Tensor:
    """Per-clip velocity MSE ``(B,)`` of the frames after ``context`` at flow time ``tau`` (all of
    them at once, fixed ``chunk``-frame chunks, or bidirectional), from the given ``noise``
    ``(B, T, C, S, S)``."""
    b, t = clip.shape[:2]
    tt = torch.full((b, t), float(tau))
    tt[:, :context] = 1.0
    w = tt[:, :, None, None, None]
    xt = w * clip + (1 - w) * noise
    todo = t - context
    ids = chunk_ids(context, [chunk] * (todo // chunk) + ([todo % chunk] if todo % chunk else []))
    v = model(xt, tt, controls, model.kind_index(kind), context=context, chunks=ids if causal else None,
              causal=causal, base=model.base_frames(clip, context, ids, causal))
    return ((v - (clip - noise))[:, context:] ** 2).mean(dim=(1, 2, 3, 4))


def detail_ratio(generated: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean squared spatial gradient of the RGB of ``generated`` over that of ``truth``, both
    ``(B, T, C, S, S)`` (module docstring, ``detail``)."""
    def energy(x):
        x = x[:, :, :3]
        return float(((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean())

    return energy(generated) / max(energy(truth), 1e-12)


def _test_batch(s: ClipSet, n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = s.split()[1]
    idx = np.random.default_rng(seed).permutation(len(test))[:n]
    x = frames_tensor(test.rgb[idx], test.depth[idx], test.max_depth)
    c = torch.zeros(len(idx), test.controls.shape[1], dim)
    c[..., : test.controls.shape[2]] = torch.as_tensor(test.controls[idx])
    return x, c


def _sem(v: torch.Tensor) -> float:
    """Standard error of the mean (NaN for a single value)."""
    return float(v.std() / np.sqrt(len(v))) if len(v) > 1 else float("nan")


@torch.no_grad()
def evaluate(clips: str, checkpoints: list[str], clips_per_kind: int = 64, seed: int = 0,
             threads: int | None = None, steps: int | None = None) -> dict:
    """Held-out scores (module docstring) of every checkpoint on every kind it knows:
    ``{kind: {label: {"flow": mean, "flow_sem", "rollout", "rollout_sem", "rollout_rgb",
    "rollout_depth", "detail", "steps"}}}`` with ``label`` the checkpoint's arch (``per-kind`` for
    single-kind ones), followed by the file's stem in brackets when an earlier checkpoint took it."""
    if threads:
        torch.set_num_threads(threads)
    data = read_clips(clips)
    out: dict = {}
    for kind, s in data.items():  # the reference: hold the last given frame
        x, _ = _test_batch(s, clips_per_kind, CONTROL_DIMS[kind], seed)
        hold = ((x[:, 2:] - x[:, 1:2]) ** 2).mean(dim=(1, 2, 3, 4))  # 2 given frames, as train's default
        out[kind] = {"hold-last-frame": {"rollout": float(hold.mean()), "clips": len(x),
                                         "rollout_sem": _sem(hold)}}
    for path in checkpoints:
        model, ck = load(path)
        label = ck["arch"] + ("+tuned" if ck["summary"].get("add_kind") else "") + \
            ("" if ck.get("causal", True) else "+teacher") + ("+distilled" if ck.get("distilled") else "")
        context = ck["context"]
        if any(label in out.get(k, {}) for k in model.cfg.control_kinds):  # two of a kind: name them apart
            label = f"{label} ({Path(path).stem})"
        for kind in model.cfg.control_kinds:
            if kind not in data:
                continue
            x, c = _test_batch(data[kind], clips_per_kind, max(model.cfg.control_dims), seed)
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(x.shape, generator=g)
            causal = ck.get("causal", True)
            flow = torch.stack([flow_error(model, x, c, kind, tau, noise, context, causal=causal)
                                for tau in FLOW_TAUS]).mean(0)
            gen = torch.cat([(generate_chunked if causal else generate_bidirectional)(
                model, x[i:i + 1, :context], c[i:i + 1], kind, x.shape[1], steps=steps,
                generator=torch.Generator().manual_seed(seed + i)) for i in range(len(x))])
            err = (gen[:, context:] - x[:, context:]) ** 2
            roll = err.mean(dim=(1, 2, 3, 4))
            out.setdefault(kind, {})[label] = {
                "flow": float(flow.mean()), "flow_sem": _sem(flow), "rollout": float(roll.mean()),
                "rollout_sem": _sem(roll), "rollout_rgb": float(err[:, :, :3].mean()),
                "rollout_depth": float(err[:, :, 3].mean()), "detail": detail_ratio(gen[:, context:], x[:, context:]),
                "steps": steps or model.cfg.euler_steps, "clips": len(x), "checkpoint": str(path),
                "flow_per_clip": flow.tolist(), "rollout_per_clip": roll.tolist()}
    return out


@torch.no_grad()
def revisit(checkpoint: str, episodes: int = 16, out: int = 10, rate: float = 0.25, after: int = 2,
            window: int = 4, pool: int = 8, retrieve: int = 4, seed: int = 50000,
            threads: int | None = None) -> dict:
    """The Go1 revisit test (module docstring) for a checkpoint that knows the ``camera`` kind.

    Args:
        out: frames turning away (and as many back). rate: yaw rate, rad a frame (the sign is
            drawn per episode). after: still frames after the return.
        window, pool, retrieve: the memory's window and pool, frames, and the pool frames
            retrieved per chunk; its anchors are the given frames.

    Returns:
        per variant the mean MSE of the scored frames, its standard error, the paired
        difference (window minus memory) and in how many episodes the memory was better.

    Raises:
        ValueError: a model without the camera kind, or a trip no longer than the window-only
            context (nothing would leave it).
    """
    from .clips import go1_walk_episode

    if threads:
        torch.set_num_threads(threads)
    model, ck = load(checkpoint)
    if "camera" not in model.cfg.control_kinds:
        raise ValueError(f"{checkpoint} does not know the camera kind")
    context = ck["context"]
    memory = MemoryConfig(anchors=context, window=window, pool=pool, retrieve=retrieve, dedup_threshold=0.0)
    window_only = MemoryConfig(anchors=0, window=memory.max_attended, pool=0, retrieve=0)
    if 2 * out <= memory.max_attended:
        raise ValueError(f"the trip ({2 * out} frames) must outlast the window ({memory.max_attended} frames)")
    frames = context + 2 * out + after
    dim, size = max(model.cfg.control_dims), model.cfg.image_size
    rng = np.random.default_rng(seed)
    errs: dict = {"memory": [], "window_only": [], "hold_first_frame": []}
    for i in tqdm(range(episodes), desc="revisit episodes", file=sys.stderr):
        look = (context, out, float(rng.choice([-1, 1])) * rate)
        ep = go1_walk_episode(frames, size, seed + i, look=look)
        x = frames_tensor(ep["rgb"][None], ep["depth"][None], MAX_DEPTH["camera"])
        c = torch.zeros(1, frames, dim)
        c[..., :9] = torch.as_tensor(ep["controls"][None])
        yaw = np.abs(look_yaw(frames, *look))
        near = [t for t in range(context + out, frames) if yaw[t] < np.radians(35.0)]
        errs["hold_first_frame"].append(float(((x[0, near] - x[0, :1]) ** 2).mean()))
        for name, mcfg in (("memory", memory), ("window_only", window_only)):
            gen = generate_chunked(model, x[:, :context], c, "camera", frames, memory=MemoryKVCache(mcfg),
                                   poses=torch.as_tensor(ep["poses"]),
                                   generator=torch.Generator().manual_seed(seed + i))
            errs[name].append(float(((gen[0, near] - x[0, near]) ** 2).mean()))
    paired = np.array(errs["window_only"]) - np.array(errs["memory"])
    return {"test": "go1_revisit", "episodes": episodes, "frames": frames, "context": context, "out_frames": out,
            "rate_rad_per_frame": rate, "scored_frames_per_episode": len(near), "memory_config": dataclasses.asdict(memory),
            "window_only_frames": memory.max_attended,
            **{k: {"mse": float(np.mean(v)), "mse_sem": _sem(torch.tensor(v))} for k, v in errs.items()},
            "window_minus_memory": float(paired.mean()), "window_minus_memory_sem": _sem(torch.tensor(paired)),
            "memory_better_in": int((paired > 0).sum()), "checkpoint": str(checkpoint)}


@torch.no_grad()
def drift(long: str, checkpoint: str, kind: str = "joints", episodes: int = 16, chunk: int = 4,
          memory: MemoryConfig | None = None, min_len: int = 2, max_len: int = 4, seed: int = 0,
          threads: int | None = None, plot: str | None = None) -> dict:
    """Long rollouts (module docstring) on the episodes of ``long`` (one clip per episode).

    The action-guided chunks (:func:`ws_worldmodel.video.dit.action_guided_chunks` of the joint
    commands, lengths ``min_len`` to ``max_len`` in steps of 2) should stay within the chunk
    lengths the model trained on (``--max-chunk``); the baseline's fixed ``chunk`` likewise.

    Returns per variant the per-frame MSE curve (mean over episodes), its growth, the mean
    action-guided chunk length and the cache's frames at the end."""
    if threads:
        torch.set_num_threads(threads)
    model, ck = load(checkpoint)
    context, train_frames = ck["context"], ck["frames"]
    s = read_clips(long)[kind]
    n = min(episodes, len(s))
    memory = memory or MemoryConfig(anchors=context, window=6, pool=8, retrieve=4, dedup_threshold=0.0)
    dim = max(model.cfg.control_dims)
    frames = s.rgb.shape[1]
    curves: dict = {"fixed_full_cache": [], "fixed_memory": [], "action_guided_memory": []}
    cache_frames: dict = {k: [] for k in curves}
    lengths_seen = []
    for i in tqdm(range(n), desc="drift episodes", file=sys.stderr):
        x = frames_tensor(s.rgb[i:i + 1], s.depth[i:i + 1], s.max_depth)
        c = torch.zeros(1, frames, dim)
        c[..., : s.controls.shape[2]] = torch.as_tensor(s.controls[i:i + 1])
        poses = torch.as_tensor(s.poses[i])
        todo = frames - context
        fixed = [chunk] * (todo // chunk) + ([todo % chunk] if todo % chunk else [])
        guided = action_guided_chunks(s.controls[i, context:], min_len=min_len, max_len=max_len, step=2) \
            if kind == "joints" else fixed
        lengths_seen += guided
        for name, lengths, mem in (("fixed_full_cache", fixed, None), ("fixed_memory", fixed, memory),
                                   ("action_guided_memory", guided, memory)):
            cache = MemoryKVCache(mem) if mem else None
            gen = generate_chunked(model, x[:, :context], c, kind, frames, memory=cache, poses=poses,
                                   generator=torch.Generator().manual_seed(seed + i), lengths=lengths)
            curves[name].append(((gen - x)[0, context:] ** 2).mean(dim=(1, 2, 3)).numpy())
            cache_frames[name].append(len(cache) if cache else frames)
    q = max(1, (frames - context) // 4)
    res = {"kind": kind, "episodes": n, "frames": frames, "train_frames": train_frames, "context": context,
           "fixed_chunk": chunk, "guided_mean_chunk": float(np.mean(lengths_seen)),
           "memory": dataclasses.asdict(memory), "checkpoint": str(checkpoint)}
    for name, cs in curves.items():
        cs = np.stack(cs)
        growth = cs[:, -q:].mean(1) - cs[:, :q].mean(1)
        res[name] = {"mse": float(cs.mean()), "mse_sem": float(cs.mean(1).std() / np.sqrt(n)),
                     "first_quarter": float(cs[:, :q].mean()), "last_quarter": float(cs[:, -q:].mean()),
                     "growth": float(growth.mean()), "growth_sem": float(growth.std() / np.sqrt(n)),
                     "cache_frames_at_end": float(np.mean(cache_frames[name])),
                     "curve": cs.mean(0).round(5).tolist()}
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for name in curves:
            ax.plot(np.arange(context, frames), res[name]["curve"], label=name.replace("_", " "))
        ax.axvline(train_frames, color="grey", ls=":", label="training clip length")
        ax.set_xlabel("frame")
        ax.set_ylabel("MSE against the true frame")
        ax.set_title(f"{kind}: {n} held-out episodes, {frames} frames")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)
    return res


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The subcommands and options of ``ws video experts`` (and ``python -m ws_worldmodel.video.experts``)."""
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--clips", required=True, help="a 'ws video clips' file")
    t.add_argument("--arch", choices=ARCHS, default="mixture")
    t.add_argument("--kind", action="append", choices=KINDS, help="kinds to train on (repeat; default: all)")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--patch", type=int, default=8)
    t.add_argument("--max-chunk", type=int, default=4, help="longest random chunk in training, frames")
    t.add_argument("--chunk-experts", type=int, default=0, help="seed 002's per-chunk experts (0: none)")
    t.add_argument("--teacher", action="store_true", help="train the bidirectional teacher instead of the student")
    t.add_argument("--plain", action="store_true",
                   help="the plain model: predict each clean frame outright, not as a change from the last frame "
                        "before its chunk (VideoDiTConfig.residual)")
    t.add_argument("--init", help="start from this checkpoint")
    t.add_argument("--add-kind", choices=KINDS, help="with --init: add this kind and tune (Worldscape-MoE Tuning)")
    t.add_argument("--out", required=True)
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model and batches live while training")
    e = sub.add_parser("eval", help="held-out scores of checkpoints",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--clips", required=True)
    e.add_argument("checkpoints", nargs="+")
    e.add_argument("--clips-per-kind", type=int, default=64)
    e.add_argument("--steps", type=int, default=None, help="Euler steps per chunk (default: the model's)")
    d = sub.add_parser("drift", help="long rollouts against the fixed-chunk baseline",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--long", required=True, help="clip file with one long clip per episode")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--kind", choices=KINDS, default="joints")
    d.add_argument("--episodes", type=int, default=16)
    d.add_argument("--chunk", type=int, default=4, help="the baseline's fixed chunk, frames")
    d.add_argument("--min-len", type=int, default=2, help="shortest action-guided chunk, frames")
    d.add_argument("--max-len", type=int, default=4, help="longest action-guided chunk, frames")
    d.add_argument("--plot", help="write the per-frame error curves here (PNG)")
    r = sub.add_parser("revisit", help="the memory's revisit test on the Go1 (look away and back)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--checkpoint", required=True, help="a model that knows the camera kind")
    r.add_argument("--episodes", type=int, default=16)
    r.add_argument("--out-frames", type=int, default=10, help="frames turning away (as many back)")
    r.add_argument("--rate", type=float, default=0.25, help="yaw rate, rad a frame")
    r.add_argument("--window", type=int, default=4, help="the memory's window, frames")
    r.add_argument("--pool", type=int, default=8, help="the memory's pool, frames")
    r.add_argument("--retrieve", type=int, default=4, help="pool frames retrieved per chunk")
    for p in (t, e, d, r):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--json", help="also write the result here")


def run(args) -> int:
    """Run the subcommand ``args.cmd`` of :func:`add_arguments` and print its result as JSON
    (also written to ``--json``).

    Raises:
        ValueError, OSError: bad settings or checkpoints, unreadable clip files.
    """
    if args.cmd == "train":
        res = train(args.clips, args.arch, args.out, tuple(args.kind or KINDS), args.steps, args.batch, args.lr,
                    args.d_model, args.layers, patch=args.patch, max_chunk=args.max_chunk, seed=args.seed,
                    init=args.init, add_kind=args.add_kind, chunk_experts=args.chunk_experts,
                    causal=not args.teacher, residual=not args.plain, threads=args.threads, device=args.device)
    elif args.cmd == "eval":
        res = evaluate(args.clips, args.checkpoints, args.clips_per_kind, args.seed, args.threads, args.steps)
    elif args.cmd == "revisit":
        res = revisit(args.checkpoint, args.episodes, args.out_frames, args.rate, window=args.window,
                      pool=args.pool, retrieve=args.retrieve, seed=args.seed + 50000, threads=args.threads)
    else:
        res = drift(args.long, args.checkpoint, args.kind, args.episodes, args.chunk, min_len=args.min_len,
                    max_len=args.max_len, seed=args.seed, threads=args.threads, plot=args.plot)
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    if args.cmd == "eval":  # the per-clip lists stay in the JSON file
        for kind in res.values():
            for r in kind.values():
                r.pop("flow_per_clip", None), r.pop("rollout_per_clip", None)
        text = json.dumps(res, indent=1)
    print(text)
    return 0


def main(argv=None) -> int:
    """``python -m ws_worldmodel.video.experts``: as ``ws video experts``."""
    return tool_main("ws_worldmodel.video.experts", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
