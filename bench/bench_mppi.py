"""Benchmark: one MPPI iteration (sample, roll out, weigh, update) on Hopper, oracle vs learned.

Prints one JSON object: per dynamics the median / p90 / p99 latency of ``MPPI.plan`` in
milliseconds at the default settings (or --horizon/--samples), and the learned/oracle ratio
measured in the same run. Not a test: nothing is asserted.

    .venv/bin/python bench/bench_mppi.py [--iters 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from ws_mppi.config import default_config
from ws_mppi.report import resolve_dynamics
from ws_mppi.runner import make_controller
from ws_sim.envs import make_env


def bench(dynamics: str, env, cfg, iters: int, warmup: int, nthread: int) -> dict:
    ctrl = make_controller(env, resolve_dynamics(env.name, dynamics), cfg, seed=0, nthread=nthread)
    state, _ = env.reset(seed=0)
    lat = []
    for i in range(warmup + iters):
        tic = time.perf_counter()
        ctrl.plan(state, i)
        if i >= warmup:
            lat.append((time.perf_counter() - tic) * 1e3)
    ctrl.close()
    lat = np.asarray(lat)
    return {"median_ms": round(float(np.median(lat)), 3), "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "iters": iters}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="hopper")
    p.add_argument("--dynamics", default="default", help="learned checkpoint ('default': the shipped one)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch and oracle threads (default: all CPUs)")
    args = p.parse_args()
    nthread = args.threads or os.cpu_count() or 1
    torch.set_num_threads(nthread)
    env = make_env(args.env)
    cfg = default_config(args.env)
    if args.horizon:
        cfg.mppi.horizon = args.horizon
    if args.samples:
        cfg.mppi.samples = args.samples
    oracle = bench("oracle", env, cfg, args.iters, args.warmup, nthread)
    learned = bench(args.dynamics, env, cfg, args.iters, args.warmup, nthread)
    print(json.dumps({
        "benchmark": "mppi_iteration", "env": args.env, "horizon": cfg.mppi.horizon, "samples": cfg.mppi.samples,
        "threads": nthread, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "oracle": oracle, "learned_mlp_ensemble": learned,
        "learned_over_oracle_median": round(learned["median_ms"] / oracle["median_ms"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
