"""The revisit test of the memory-aware KV cache (issue 9), on a synthetic panning world.

:class:`PanWorld` is a camera looking straight down at a large textured plane (smooth random
colour blobs, and a smooth random height field as depth), wrapping at its edges. The camera's
pose is its position on the plane (``px_per_m`` pixels a metre); a frame is the
``view`` x ``view`` crop under it, RGB and depth in [-1, 1]. The camera-trajectory control of
each frame is its displacement since the last frame and its position (the ``camera`` kind of
:class:`ws_worldmodel.video.dit.VideoDiT`). It is a stand-in with known ground truth for any
revisited view; :func:`ws_worldmodel.video.experts.revisit` runs the same test on the Go1's
head camera in MuJoCo.

Training clips mix out-and-back trips (the camera leaves, then retraces its path) with random
walks, so that returning to a place is something the model has seen. The test: from a few
given frames the camera pans away for ``out`` frames (farther than its view is wide, and for
more frames than the sliding window holds) and comes back; the frames generated on the way back
near the start are compared with the true ones, once with the memory (anchors, pose-retrieved
pool and the window) and once with the window alone, the same model and noise.

    ws video revisit train --out runs/revisit.pt [--device cuda] [--steps 4000]
    ws video revisit eval --checkpoint runs/revisit.pt [--episodes 32]
    ws video revisit coverage --out-frames 16     # the geometry alone

A returning frame can only redraw its place from frames that saw it. :func:`first_visit_coverage`
measures how much of each scored view the first visit's frames (given, or drawn on the way out)
cover in what its chunk attends to: the memory keeps the given frames as anchors, and a window
keeps the way out's frames while the trip is short enough.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import plain_payload
from .dit import VideoDiT, VideoDiTConfig, generate_chunked, load_video_dit
from .memory import MemoryConfig, MemoryKVCache
from .tool import tool_main

CONTROL_DIM = 9


class PanWorld:
    """A ``size`` x ``size`` px textured plane under a downward camera (module docstring).

    Args:
        size: plane side, px (wraps around).
        view: frame side, px.
        px_per_m: pixels per metre (poses are in metres).
        seed: draws the texture and heights.
    """

    def __init__(self, size: int = 512, view: int = 64, px_per_m: float = 100.0, seed: int = 0, blobs: int = 600):
        rng = np.random.default_rng(seed)
        self.size, self.view, self.px_per_m = int(size), int(view), float(px_per_m)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        rgb = np.zeros((size, size, 3), np.float32)
        height = np.zeros((size, size), np.float32)
        for _ in range(blobs):
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(6, 28)
            dx = np.minimum(np.abs(xx - cx), size - np.abs(xx - cx))  # wrapped distance
            dy = np.minimum(np.abs(yy - cy), size - np.abs(yy - cy))
            w = np.exp(-(dx ** 2 + dy ** 2) / (2 * r * r))
            rgb += w[..., None] * rng.normal(0, 1, 3).astype(np.float32)
            height += w * rng.normal(0, 1)
        self.rgb = np.tanh(rgb / (rgb.std() + 1e-6)).astype(np.float32)
        self.depth = np.tanh(height / (height.std() + 1e-6)).astype(np.float32)

    def render(self, xy: np.ndarray) -> np.ndarray:
        """Frames ``(T, 4, view, view)`` (RGB, depth) with their top-left corners at ``xy`` ``(T, 2)`` px."""
        xy = np.rint(np.asarray(xy)).astype(int)
        ar = np.arange(self.view)
        out = np.empty((len(xy), 4, self.view, self.view), np.float32)
        for i, (x, y) in enumerate(xy):
            rows, cols = (y + ar) % self.size, (x + ar) % self.size
            out[i, :3] = self.rgb[np.ix_(rows, cols)].transpose(2, 0, 1)
            out[i, 3] = self.depth[np.ix_(rows, cols)]
        return out

    def render_batch(self, xy: np.ndarray, device) -> torch.Tensor:
        """:meth:`render` for ``xy`` ``(B, T, 2)`` at once, on ``device``: ``(B, T, 4, view, view)``."""
        if getattr(self, "_dev", None) != str(device):
            self._plane = torch.as_tensor(np.concatenate([self.rgb, self.depth[..., None]], -1), device=device)
            self._dev = str(device)
        xy = torch.as_tensor(np.rint(np.asarray(xy)).astype(np.int64), device=device)
        ar = torch.arange(self.view, device=device)
        rows = (xy[..., 1, None] + ar) % self.size  # (B, T, V)
        cols = (xy[..., 0, None] + ar) % self.size
        out = self._plane[rows[..., :, None], cols[..., None, :]]  # (B, T, V, V, 4)
        return out.permute(0, 1, 4, 2, 3).contiguous()

    def controls(self, xy: np.ndarray) -> np.ndarray:
        """``(T, 9)`` camera controls: displacement since the last frame (m), then position (m, wrapped)."""
        xy = np.asarray(xy, np.float64)
        d = np.diff(xy, axis=0, prepend=xy[:1]) / self.px_per_m
        pos = (xy % self.size) / self.px_per_m
        out = np.zeros((len(xy), CONTROL_DIM), np.float32)
        out[:, :2], out[:, 3:5] = d, pos
        return out

    def poses(self, xy: np.ndarray) -> torch.Tensor:
        """``(T, 4, 4)`` world-from-camera poses (translation in metres, looking down)."""
        return pan_poses(xy, self.px_per_m)


def pan_poses(xy: np.ndarray, px_per_m: float) -> torch.Tensor:
    """``(T, 4, 4)`` world-from-camera poses of a downward camera at ``xy`` ``(T, 2)`` px."""
    p = torch.eye(4, dtype=torch.float64).repeat(len(xy), 1, 1)
    p[:, :2, 3] = torch.as_tensor(np.asarray(xy, dtype=np.float64) / px_per_m)
    return p


def out_and_back(rng, frames: int, start: np.ndarray, out: int, speed: float) -> np.ndarray:
    """``(frames, 2)`` positions: still for the rest of ``frames`` before, then ``out`` frames away
    in a random direction at ``speed`` px/frame, then back along the same path (and on past the
    start if frames remain)."""
    ang = rng.uniform(0, 2 * np.pi)
    v = speed * np.array([np.cos(ang), np.sin(ang)])
    hold = frames - 2 * out
    k = np.arange(frames) - max(hold, 0)
    dist = np.where(k < 0, 0, np.where(k <= out, k, 2 * out - k))
    return start + dist[:, None] * v


def training_clip(world: PanWorld, rng, frames: int) -> np.ndarray:
    """Positions ``(frames, 2)`` of one training clip: half out-and-back trips (random lengths and
    speeds, starting after a random hold), half random walks."""
    start = rng.uniform(0, world.size, 2)
    if rng.random() < 0.5:
        out = int(rng.integers(frames // 4, frames // 2 + 1))
        xy = out_and_back(rng, frames, start, out, rng.uniform(3, 10))
    else:
        vel = rng.normal(0, 4, 2)
        steps = [np.zeros(2)]
        for _ in range(frames - 1):
            vel = 0.8 * vel + rng.normal(0, 2, 2)
            steps.append(vel.copy())
        xy = start + np.cumsum(steps, axis=0)
    return xy


def batch(world: PanWorld, rng, b: int, frames: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clips (b, frames, 4, V, V), controls (b, frames, 9))`` on ``device``."""
    xys = [training_clip(world, rng, frames) for _ in range(b)]
    clips = world.render_batch(np.stack(xys), device)
    ctrl = torch.as_tensor(np.stack([world.controls(xy) for xy in xys]), device=device)
    return clips, ctrl


def train(args) -> dict:
    """Train the chunk-causal video model on PanWorld clips (``args``: :func:`add_arguments`'s
    ``train`` options, ``args.device`` included), saving every 500 steps; returns a summary."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    world = PanWorld(size=args.world, seed=args.world_seed)
    # velocity prediction, as the README's figures were made (d_model 256 carries an 8 px RGB-D patch)
    cfg = VideoDiTConfig(image_size=64, patch=8, d_model=args.d_model, layers=args.layers, heads=args.heads,
                         prediction="velocity",
                         chunk=args.chunk, control_kinds=("camera",), control_dims=(CONTROL_DIM,))
    model = VideoDiT(cfg).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    kind = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    amp = args.device == "cuda"
    losses, t0 = [], time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = out.with_name(f".{out.name}.tmp")
        torch.save(plain_payload({"config": dataclasses.asdict(cfg), "state_dict": model.state_dict(),
                                  "world": {"size": args.world, "seed": args.world_seed}, "context": args.context,
                                  "frames": args.frames, "losses": losses}), tmp)  # plain data: loads unrun
        tmp.replace(out)  # never a half-written checkpoint

    bar = tqdm(range(args.steps), desc="video world model", unit="step")
    for step in bar:
        clips, ctrl = batch(world, rng, args.batch, args.frames, args.device)
        lr = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, parts = model.loss(clips, ctrl, kind, context=args.context)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if step % 500 == 499:
            save()
        if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes:
            break
    save()
    return {"steps": len(losses), "seconds": round(time.perf_counter() - t0, 1),
            "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:]))}


def load(path, device="cpu") -> tuple[VideoDiT, dict]:
    """A :func:`train` checkpoint -> ``(model in eval mode on device, checkpoint dict)``.

    Read safely by :func:`ws_worldmodel.video.dit.load_video_dit` (its ``Raises`` apply:
    ``CheckpointError`` naming the path for a missing, corrupt, unsafe or mismatched file). Files written before
    the ``prediction`` setting existed predict the velocity.
    """
    return load_video_dit(path, device, config_defaults={"prediction": "velocity"})  # older files: velocity


def attended_frames(cfg: MemoryConfig, poses: torch.Tensor, context: int, chunk: int) -> dict[int, list[int]]:
    """Which frames each generated chunk attends to, replaying :func:`generate_chunked`'s cache
    order with frame indices as payloads: ``{first frame of the chunk: [attended frame indices]}``.

    Args:
        cfg: the memory (a window alone is ``anchors=0, pool=0, retrieve=0``).
        poses: ``(T, 4, 4)`` world-from-camera poses of the whole rollout.
        context: given frames; ``chunk``: frames per generated chunk.
    """
    mem = MemoryKVCache(cfg)
    pose = poses.double().cpu()
    for j in range(context):
        mem.add(j, pose[j, :3, 3].numpy(), pose[j, :3, :3].numpy())
    out, t = {}, context
    while t < len(pose):
        out[t] = [m.payload for m in mem.context(pose[t, :3, 3].numpy(), pose[t, :3, :3].numpy())]
        for j in range(t, min(t + chunk, len(pose))):
            mem.add(j, pose[j, :3, 3].numpy(), pose[j, :3, :3].numpy())
        t += chunk
    return out


def first_visit_coverage(xy: np.ndarray, view: int, attended: dict[int, list[int]], scored: list[int],
                         first_visit: int) -> float:
    """Mean share of each scored frame's view that the frames of the first visit (indices below
    ``first_visit``: the given frames and the way out) attended by its chunk cover, in [0, 1].

    A returning frame can only redraw the place it sees from frames that saw it: those attended,
    whichever part of the cache holds them. ``xy``: ``(T, 2)`` top-left corners, px; ``attended``:
    :func:`attended_frames`; ``scored``: generated frame indices. NaN when ``scored`` is empty.

    Raises:
        ValueError: a scored frame before the first generated chunk (a given frame).
    """
    starts = sorted(attended)
    ar = np.arange(view)
    shares = []
    for t in scored:
        if not starts or t < starts[0]:
            raise ValueError(f"frame {t} is not generated (the first chunk starts at {starts[:1]})")
        t0 = max(s for s in starts if s <= t)
        covered = np.zeros((view, view), bool)
        for s in attended[t0]:
            if s < first_visit:
                dx, dy = xy[s] - xy[t]
                covered |= ((ar >= dy) & (ar < dy + view))[:, None] & ((ar >= dx) & (ar < dx + view))[None]
        shares.append(float(covered.mean()))
    return float(np.mean(shares)) if shares else float("nan")


def trip(rng, world_size: int, context: int, out: int, after: int, speed: float) -> np.ndarray:
    """``(context + 2 out + after, 2)`` top-left corners of one revisit episode: still, ``out``
    frames away at ``speed`` px a frame in a random direction, back along the same path, still."""
    start = rng.uniform(0, world_size, 2)
    ang = rng.uniform(0, 2 * np.pi)
    dist = np.r_[np.zeros(context), np.arange(1, out + 1), np.arange(out - 1, -1, -1), np.zeros(after)]
    return start + dist[:, None] * speed * np.array([np.cos(ang), np.sin(ang)])


def revisit_frames(xy: np.ndarray, context: int, out: int, view: int) -> list[int]:
    """The frames on the way back whose view overlaps the first view by more than half."""
    dist = np.linalg.norm(xy - xy[0], axis=1)
    return [t for t in range(context + out, len(xy)) if dist[t] < view / 2]


def coverage(args) -> dict:
    """The revisit episodes' geometry alone (no model): how much of each returning view the first
    visit's frames cover in what each cache setting attends to (:func:`first_visit_coverage`)."""
    world_size, view, px_per_m = 512, 64, 100.0
    rng = np.random.default_rng(args.seed)
    mem, base = _cache_settings(args.context, args)
    res = {"test": "revisit_coverage", "episodes": args.episodes, "context": args.context, "out_frames": args.out_frames,
           "chunk": args.chunk, "speed_px_per_frame": args.speed, "window_only_frames": mem.max_attended}
    cov = {"memory": [], "window_only": []}  # per episode, per scored frame (the same frames every episode)
    for _ in range(args.episodes):
        xy = trip(rng, world_size, args.context, args.out_frames, args.after, args.speed)
        p = pan_poses(xy, px_per_m)
        scored = revisit_frames(xy, args.context, args.out_frames, view)
        for name, mcfg in (("memory", mem), ("window_only", base)):
            att = attended_frames(mcfg, p, args.context, args.chunk)
            cov[name].append([first_visit_coverage(xy, view, att, [t], args.context + args.out_frames)
                              for t in scored])
    res["revisit_frames"] = scored
    res.update({f"first_visit_coverage_{k}": float(np.mean(v)) for k, v in cov.items()})
    res.update({f"first_visit_coverage_by_frame_{k}": np.mean(v, axis=0).round(3).tolist() for k, v in cov.items()})
    return res


def _cache_settings(context: int, args) -> tuple[MemoryConfig, MemoryConfig]:
    """The revisit test's memory and its baseline, a window of as many frames."""
    mem = MemoryConfig(anchors=context, window=args.window, pool=args.pool, retrieve=args.retrieve,
                       dedup_threshold=0.0)
    if 2 * args.out_frames <= mem.max_attended:
        raise ValueError(f"the trip ({2 * args.out_frames} frames) must outlast the window ({mem.max_attended} frames)")
    return mem, MemoryConfig(anchors=0, window=mem.max_attended, pool=0, retrieve=0)


def evaluate(args) -> dict:
    """Revisit errors with and without the memory (module docstring)."""
    model, ck = load(args.checkpoint, args.device)
    world = PanWorld(size=ck["world"]["size"], seed=ck["world"]["seed"])
    rng = np.random.default_rng(args.seed)
    context, out = ck["context"], args.out_frames
    frames = context + 2 * out + args.after
    mem, window_only = _cache_settings(context, args)
    # the baseline attends to as many frames, all of them the most recent
    variants = {"memory": mem, "window_only": window_only}
    errs = {k: [] for k in variants}
    cov = {k: [] for k in variants}
    by_frame = {k: [] for k in variants}  # the scored frames are the same ones in every episode
    near_all = []
    for ep in range(args.episodes):
        xy = trip(rng, world.size, context, out, args.after, args.speed)
        truth = torch.as_tensor(world.render(xy), device=args.device)[None]
        ctrl = torch.as_tensor(world.controls(xy), device=args.device)[None]
        poses = world.poses(xy)
        near = revisit_frames(xy, context, out, world.view)
        near_all.append(len(near))
        for name, mcfg in variants.items():
            cov[name].append(first_visit_coverage(xy, world.view, attended_frames(mcfg, poses, context, model.cfg.chunk),
                                                  near, context + out))
            g = torch.Generator(device=args.device).manual_seed(args.seed + ep)
            gen = generate_chunked(model, truth[:, :context], ctrl, "camera", frames, memory=MemoryKVCache(mcfg),
                                   poses=poses, steps=args.steps, generator=g)
            e = ((gen[0, near] - truth[0, near]) ** 2).mean(dim=(1, 2, 3))
            errs[name].append(float(e.mean()))
            by_frame[name].append(e.cpu().numpy())
    res = {k: {"mse_mean": float(np.mean(v)), "mse_sem": float(np.std(v) / np.sqrt(len(v)))} for k, v in errs.items()}
    paired = np.array(errs["window_only"]) - np.array(errs["memory"])
    return {"test": "revisit", "episodes": args.episodes, "frames": frames, "context": context, "out_frames": out,
            "speed_px_per_frame": args.speed, "memory_config": dataclasses.asdict(mem),
            "window_only_frames": mem.max_attended, "revisit_frames_per_episode": float(np.mean(near_all)),
            **res, "window_minus_memory_mean": float(paired.mean()),
            "window_minus_memory_sem": float(paired.std() / np.sqrt(len(paired))),
            "memory_better_in": int((paired > 0).sum()),
            **{f"first_visit_coverage_{k}": float(np.mean(v)) for k, v in cov.items()},
            "revisit_frames": near, **{f"mse_by_frame_{k}": np.mean(v, axis=0).round(4).tolist() for k, v in by_frame.items()},
            "checkpoint": str(args.checkpoint)}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The subcommands and options of ``ws video revisit`` (and ``python -m ws_worldmodel.video.revisit``)."""
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the chunk-causal video model on PanWorld clips",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--frames", type=int, default=48, help="frames per training clip")
    t.add_argument("--context", type=int, default=4, help="given frames (chunk 0)")
    t.add_argument("--chunk", type=int, default=4)
    t.add_argument("--d-model", type=int, default=256)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--world", type=int, default=512, help="plane side, px")
    t.add_argument("--world-seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    e = sub.add_parser("eval", help="revisit errors with and without the memory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--steps", type=int, default=8, help="Euler steps per chunk")
    c = sub.add_parser("coverage", help="the episodes' geometry alone, no model: how much of each returning view "
                                        "the first visit's frames cover in what each cache setting attends to",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--context", type=int, default=4, help="given frames (the anchors)")
    c.add_argument("--chunk", type=int, default=4, help="frames per generated chunk")
    for p in (e, c):
        p.add_argument("--episodes", type=int, default=32)
        p.add_argument("--out-frames", type=int, default=16, help="frames the camera pans away (and back)")
        p.add_argument("--speed", type=float, default=6.0, help="px per frame (the view is 64 px)")
        p.add_argument("--after", type=int, default=4, help="frames held at the start after returning")
        p.add_argument("--window", type=int, default=8, help="sliding window, frames")
        p.add_argument("--pool", type=int, default=16)
        p.add_argument("--retrieve", type=int, default=8)
    for p in (t, e, c):
        p.add_argument("--seed", type=int, default=0)
    for p in (t, e):
        p.add_argument("--device", default="cpu", help="torch device of the model and clips (cpu, cuda)")


def run(args) -> int:
    """Run the subcommand ``args.cmd`` of :func:`add_arguments` and print its result as JSON.

    Raises:
        ValueError: a trip no longer than the window (eval, coverage); CheckpointError: a bad checkpoint.
    """
    res = {"train": train, "eval": evaluate, "coverage": coverage}[args.cmd](args)
    print(json.dumps(res))
    return 0


def main(argv=None) -> int:
    """``python -m ws_worldmodel.video.revisit``: as ``ws video revisit`` (errors raise)."""
    return tool_main("ws_worldmodel.video.revisit", __doc__, add_arguments, run, argv, errors=())


if __name__ == "__main__":
    raise SystemExit(main())
