"""Benchmark (seed 001 claims up to 24 FPS on one GPU): generation throughput of the
video world model, the chunk-causal student with its KV cache against the bidirectional teacher.

Same network and weights for all three ways of generating (throughput does not depend on the
weights; these are untrained, at the configs' sizes):

* ``teacher``: the whole clip denoised together, ``--steps`` bidirectional passes over all
  frames (the teacher's cost grows with the square of the clip's tokens);
* ``student_memory``: chunk by chunk, ``--steps`` Euler steps per chunk plus one clean pass to
  cache it, attending to the memory-aware cache (anchors, retrieved pool frames, window;
  bounded however long the rollout);
* ``student_full``: the same without the memory: every earlier frame stays in the cache.

Frames per second count generated frames (the given first chunk excluded); ``first_chunk_s`` is
when the first generated frames are ready (for the teacher, with the whole clip). Also printed: the
KV cache's size at the end of the rollout (MiB) and the frames attended by the last chunk.
Prints one JSON object; nothing is asserted.

    python bench/bench_video_gen.py [--config cpu|gpu] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--frames 32] [--repeats 3] [--plain]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from ws_worldmodel.video import (MemoryConfig, MemoryKVCache, VideoDiT, VideoDiTConfig, generate_bidirectional,
                                 generate_chunked)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", choices=["cpu", "gpu"], default="cpu", help="VideoDiTConfig.cpu() or .gpu()")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--frames", type=int, default=32, help="frames per rollout, the first chunk given")
    ap.add_argument("--steps", type=int, default=4, help="Euler steps per chunk of the student")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="Euler steps of the teacher (default --steps; a distilled student takes fewer)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-teacher", action="store_true", help="skip the teacher (long rollouts)")
    ap.add_argument("--plain", action="store_true",
                    help="the plain model (no residual base), as 'ws video experts train --plain'; the default is "
                         "the residual model that command trains by default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = (VideoDiTConfig.cpu if args.config == "cpu" else VideoDiTConfig.gpu)(residual=not args.plain)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = VideoDiT(cfg).to(args.device, dtype).eval()
    mem_cfg = MemoryConfig(anchors=cfg.chunk, window=4 * cfg.chunk, pool=4 * cfg.chunk, retrieve=2 * cfg.chunk,
                           dedup_threshold=0.0)
    b, f, c0 = args.batch, args.frames, cfg.chunk
    g = torch.Generator(device=args.device).manual_seed(0)
    first = torch.rand(b, c0, cfg.channels, cfg.image_size, cfg.image_size, device=args.device, dtype=dtype,
                       generator=g) * 2 - 1
    ctrl = torch.randn(b, f, max(cfg.control_dims), device=args.device, dtype=dtype, generator=g)
    poses = torch.eye(4).repeat(f, 1, 1)
    poses[:, 0, 3] = torch.linspace(0, 0.1 * f, f)  # a camera moving 10 cm per frame
    out = {"benchmark": "video_generation_throughput", "device": args.device, "dtype": args.dtype,
           "config": args.config, "residual": cfg.residual, "image_size": cfg.image_size, "tokens_per_frame": cfg.tokens_per_frame,
           "d_model": cfg.d_model, "layers": cfg.layers, "chunk": cfg.chunk, "steps": args.steps,
           "teacher_steps": args.teacher_steps or args.steps, "batch": b, "torch": torch.__version__,
           "frames": f, "generated_frames": f - c0, "parameters": sum(p.numel() for p in model.parameters()),
           "memory": {"anchors": mem_cfg.anchors, "window": mem_cfg.window, "pool": mem_cfg.pool,
                      "retrieve": mem_cfg.retrieve},
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()

    def kv_mib(mem: MemoryKVCache) -> float:
        entries = mem.anchors + mem.pool + mem.window
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for e in entries for k, v in e.payload) / 2 ** 20

    runs = {}
    if not args.no_teacher:
        runs["teacher"] = lambda: (generate_bidirectional(model, first, ctrl, "camera", f,
                                                          steps=args.teacher_steps or args.steps, generator=g), None)

    def student(bounded: bool):
        def run():
            mem = MemoryKVCache(mem_cfg) if bounded else MemoryKVCache(
                MemoryConfig(anchors=0, window=1 << 30, pool=0, retrieve=0))
            seen, t0 = [], time.perf_counter()

            def on_chunk(t, n, a):
                if not seen:
                    _sync(args.device)
                    first_chunk.append(time.perf_counter() - t0)
                seen.append(a)
            generate_chunked(model, first, ctrl, "camera", f, memory=mem, poses=poses, steps=args.steps,
                             generator=g, on_chunk=on_chunk)
            return None, (kv_mib(mem), seen[-1])
        return run

    runs["student_memory"] = student(True)
    runs["student_full"] = student(False)
    for name, fn in runs.items():
        first_chunk = []
        fn()  # warm-up
        first_chunk.clear()
        _sync(args.device)
        times, extra = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, extra = fn()
            _sync(args.device)
            times.append(time.perf_counter() - t0)
        sec = float(np.median(times))
        rec = {"seconds": round(sec, 4), "fps": round(b * (f - c0) / sec, 2),
               # when the first generated frames are ready: the teacher's come with the whole clip
               "first_chunk_s": round(float(np.median(first_chunk)) if first_chunk else sec, 4)}
        if extra is not None:
            rec["kv_cache_mib"], rec["attended_frames_last_chunk"] = round(extra[0], 2), extra[1]
        out[name] = rec
    if "teacher" in out:
        for name in ("student_memory", "student_full"):
            out[name]["speedup_vs_teacher"] = round(out[name]["fps"] / out["teacher"]["fps"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
