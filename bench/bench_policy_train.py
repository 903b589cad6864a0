"""Benchmark: what one training step of the image policy costs, by encoder and size, and what 100k steps take.

For each configuration (``LABEL:key=value,...`` over ``PolicyConfig`` fields, on top of the CPU preset), one
training step (``policy_loss``, backward, AdamW) on a batch of random 64 px RGB-D frames and chunks is timed over
``--iters`` steps after warm-up. The time is the process's CPU time divided by the torch threads (what the step
takes with its cores to itself, whatever else runs on the machine) and, beside it, the wall-clock. Every row
carries its ratio to the first configuration's step in the same run and the hours 100k steps would take at that
rate. Prints one JSON object; asserts nothing.

    .venv/bin/python bench/bench_policy_train.py --threads 2 --batch-size 32 \\
        --configs "patch:encoder=patch;keypoints:encoder=keypoints,crop=56;small:encoder=keypoints,crop=56,d_model=64,layers=2"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from ws_policy.model import PolicyConfig, build_policy, default_vocabulary
from ws_policy.train import policy_loss

DEFAULT = ("patch:encoder=patch;keypoints:encoder=keypoints,crop=56;"
           "keypoints_d96_l2:encoder=keypoints,crop=56,d_model=96,layers=2;"
           "keypoints_d64_l2_w8:encoder=keypoints,crop=56,d_model=64,heads=4,layers=2,trunk_width=8")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_configs(spec: str) -> dict[str, dict]:
    """``"A:k=v,k=v;B:..."`` -> ``{"A": {k: v}, ...}``.

    Raises:
        ValueError: an entry without a label or a field without ``=``."""
    out = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        label, _, fields = entry.partition(":")
        if not label or not _:
            raise ValueError(f"configuration {entry!r} needs a label: LABEL:key=value,...")
        kv = {}
        for f in filter(None, fields.split(",")):
            k, eq, v = f.partition("=")
            if not eq:
                raise ValueError(f"field {f!r} of {label} needs key=value")
            kv[k.strip()] = _value(v.strip())
        out[label] = kv
    return out


def batch(cfg: PolicyConfig, b: int, gen: torch.Generator) -> dict:
    s, f, fs = cfg.image_size, cfg.frames, cfg.future_size
    cams = 1 + cfg.wrist
    return {"rgb": torch.rand(b, 3 * cams, s, s, generator=gen) * 2 - 1,
            "depth": torch.rand(b, cams, s, s, generator=gen) * 1.5 + 0.2,
            "state": torch.rand(b, cfg.state_dim, generator=gen) * 2 - 1,
            "words": torch.zeros(b, cfg.max_words, dtype=torch.long),
            "future_rgb": torch.rand(b, f, 3, fs, fs, generator=gen) * 2 - 1,
            "future_depth": torch.rand(b, f, 1, fs, fs, generator=gen) * 2 - 1,
            "actions": torch.rand(b, cfg.chunk, cfg.action_dim, generator=gen) * 2 - 1,
            "valid": torch.ones(b, cfg.chunk, dtype=torch.bool), "indicator": torch.ones(b, dtype=torch.long)}


def time_step(cfg: PolicyConfig, batch_size: int, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    net = build_policy(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    data = batch(cfg, batch_size, gen)
    threads = torch.get_num_threads()
    for i in range(warmup + iters):
        if i == warmup:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        loss, _ = policy_loss(net, data, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cpu = (time.process_time() - cpu0) / iters / threads
    wall = (time.perf_counter() - wall0) / iters
    return {"parameters": sum(p.numel() for p in net.parameters()), "step_s": round(cpu, 4),
            "wall_step_s": round(wall, 4), "hours_per_100k_steps": round(cpu * 1e5 / 3600, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT, help="LABEL:key=value,... entries separated by ';' (PolicyConfig)")
    ap.add_argument("--modes", default="mot,action_only", help="policy modes to time each configuration in")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = parse_configs(args.configs)
    rows, base = {}, None
    for mode in args.modes.split(","):
        for label, kw in configs.items():
            cfg = PolicyConfig(mode=mode, vocab=tuple(default_vocabulary()), **kw)
            row = time_step(cfg, args.batch_size, args.iters, args.warmup)
            base = base or row["step_s"]
            row["ratio_to_first"] = round(row["step_s"] / base, 3)
            rows[f"{mode}/{label}"] = {"config": kw, **row}
    print(json.dumps({"benchmark": "policy_train_step", "threads": args.threads, "batch_size": args.batch_size,
                      "iters": args.iters, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
