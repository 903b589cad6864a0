"""Benchmark (seed 003 Table 12): inference latency of WestWorld against TrajWorld and TDM.

All models get the same history (50 steps of states and actions) and predict H future
steps for H in 10..100: WestWorld in one forward pass (learnable queries), the baselines
autoregressively with KV-cache decoding. Untrained weights at the default configs (latency
does not depend on the weights). Prints one JSON object: per H and model the mean and
standard deviation of the wall-clock latency over repeated runs after warm-up, and each
baseline's latency as a ratio to WestWorld's in the same run; WestWorld also without the fused
CPU scan (``westworld_unfused``: the selective scan that materialises every state, what ran
before 2026-12-05) and its ratio; and with ``--train-steps N`` each model's training throughput
(one forward, backward and AdamW step on a batch, in windows per second, the median of N
steps), WestWorld's also unfused. With ``--shared-history`` every sample of the batch has the
same history (MPPI's ``K`` futures from one past) and WestWorld and TrajWorld are also timed
running that history once (``westworld_shared``, ``trajworld_shared``: its SSM states or its
KV cache carried to every sample; the same predictions), with ratios against both, and
both also in one chunk (``westworld_shared_one_chunk``, ``trajworld_shared_one_chunk``: the whole
batch's future tokens in one pass, what ran before 2026-12-07; the ``_shared`` rows run chunks of samples
of at most ``SHARED_CHUNK_TOKENS`` tokens of each model). Not a test: nothing is asserted.

    .venv/bin/python bench/bench_world_models.py [--batch 8] [--state-dim 18] [--action-dim 6] [--repeats 5]
        [--horizons 20,50,100] [--train-steps 3] [--shared-history] [--skip tdm,westworld_unfused]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from ws_worldmodel.tdm import TDM, TDMConfig
from ws_worldmodel.trajworld import TrajWorld, TrajWorldConfig
from ws_worldmodel.westworld import TrajectoryBatch, WestWorld, WestWorldConfig


def _batch(b: int, history: int, horizon: int, cs: int, ca: int, device: str) -> TrajectoryBatch:
    g = torch.Generator().manual_seed(0)
    t = history + horizon
    return TrajectoryBatch(torch.rand(b, t, cs, generator=g), torch.rand(b, t, ca, generator=g),
                           torch.ones(b, cs, dtype=torch.bool), torch.ones(b, ca, dtype=torch.bool),
                           torch.randint(0, 8, (b, cs, 4), generator=g), torch.randint(0, 8, (b, ca, 4), generator=g),
                           history).to(device)


def _time(fn, repeats: int, device: str) -> tuple[float, float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - tic) * 1e3)
    return float(np.mean(out)), float(np.std(out))


def _train_rate(model, batch: TrajectoryBatch, steps: int, device: str) -> float:
    """Windows per second of one forward, backward and AdamW step (median of ``steps``, after one warm-up)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - tic)
    model.eval()
    return round(batch.states.shape[0] / float(np.median(times)), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--horizons", default="10,20,50,100")
    p.add_argument("--state-dim", type=int, default=18)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-steps", type=int, default=0,
                   help="also time this many training steps per model and horizon (0: inference only)")
    p.add_argument("--shared-history", action="store_true",
                   help="give every sample the same history and also time WestWorld and TrajWorld running it once")
    p.add_argument("--skip", default="", help="comma-separated rows not to time (e.g. tdm,westworld_unfused: "
                                              "the slow ones at large batches)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {"westworld": WestWorld(WestWorldConfig()), "trajworld": TrajWorld(TrajWorldConfig()),
              "tdm": TDM(TDMConfig())}
    for m in models.values():
        m.to(args.device).eval()
    def unfused(flag: bool) -> None:
        for blk in models["westworld"].blocks:
            blk.ssm.fused_cpu = not flag

    rows = {}
    for h in [int(x) for x in args.horizons.split(",")]:
        batch = _batch(args.batch, args.history, h, args.state_dim, args.action_dim, args.device)
        if args.shared_history:  # one past for every sample, as in MPPI
            for name in ("states", "state_mask", "action_mask", "state_struct", "action_struct"):
                v = getattr(batch, name)
                v[:] = v[:1].clone()
            batch.actions[:, :args.history - 1] = batch.actions[:1, :args.history - 1].clone()
        row = {}
        timed = {name: (lambda m=m: m.predict(batch)) for name, m in models.items()}
        timed["westworld_unfused"] = lambda: models["westworld"].predict(batch)
        if args.shared_history:
            timed["westworld_shared"] = lambda: models["westworld"].predict(batch, shared_history=True)
            timed["trajworld_shared"] = lambda: models["trajworld"].predict(batch, shared_history=True)
            timed["westworld_shared_one_chunk"] = timed["westworld_shared"]
            timed["trajworld_shared_one_chunk"] = timed["trajworld_shared"]
        with torch.inference_mode():
            for name, fn in timed.items():
                if name in skip:
                    continue
                unfused(name == "westworld_unfused")
                one_chunk = name.endswith("one_chunk")
                models["westworld"].SHARED_CHUNK_TOKENS = 2 ** 62 if one_chunk else WestWorld.SHARED_CHUNK_TOKENS
                models["trajworld"].SHARED_CHUNK_TOKENS = 2 ** 62 if one_chunk else TrajWorld.SHARED_CHUNK_TOKENS
                mean, std = _time(fn, args.repeats, args.device)
                row[name] = {"mean_ms": round(mean, 2), "std_ms": round(std, 2)}
            unfused(False)
            models["westworld"].SHARED_CHUNK_TOKENS = WestWorld.SHARED_CHUNK_TOKENS
            models["trajworld"].SHARED_CHUNK_TOKENS = TrajWorld.SHARED_CHUNK_TOKENS
        for ref in ("westworld", "westworld_shared"):
            for name in [n for n in timed if n in row and n != ref and ref in row]:
                row[f"{name}_over_{ref}"] = round(row[name]["mean_ms"] / row[ref]["mean_ms"], 2)
        if "trajworld_shared" in row and "trajworld_shared_one_chunk" in row:
            row["trajworld_shared_one_chunk_over_trajworld_shared"] = round(
                row["trajworld_shared_one_chunk"]["mean_ms"] / row["trajworld_shared"]["mean_ms"], 2)
        if args.train_steps > 0:
            row["train_windows_per_s"] = {name: _train_rate(m, batch, args.train_steps, args.device)
                                          for name, m in models.items() if name not in skip}
            if "westworld_unfused" not in skip:
                unfused(True)
                row["train_windows_per_s"]["westworld_unfused"] = _train_rate(models["westworld"], batch,
                                                                              args.train_steps, args.device)
                unfused(False)
        rows[str(h)] = row
    print(json.dumps({"benchmark": "world_model_inference_latency", "device": args.device,
                      "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "batch": args.batch, "history": args.history, "state_dim": args.state_dim,
                      "action_dim": args.action_dim, "kv_cache": True, "train_steps": args.train_steps,
                      "shared_history": args.shared_history, "skipped": sorted(skip),
                      "horizons": rows}, indent=2))


if __name__ == "__main__":
    main()
