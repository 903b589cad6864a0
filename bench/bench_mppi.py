"""Benchmark: one MPPI iteration (sample, roll out, weigh, update), oracle vs learned dynamics.

Prints one JSON object: per dynamics the median / p90 / p99 latency of ``MPPI.plan`` in
milliseconds at the default settings (or --horizon/--samples), and the learned/oracle ratio
measured in the same run. Not a test: nothing is asserted.

    .venv/bin/python bench/bench_mppi.py [--iters 100] [--threads 2]
    .venv/bin/python bench/bench_mppi.py --env go1 --sweep 32,64,128:10,15,30 --iters 20
    .venv/bin/python bench/bench_mppi.py --env go1 --sweep 32:10,15 --dynamics default,westworld=ww.pt

``--dynamics`` takes comma-separated checkpoints, each optionally ``LABEL=PATH``; oracle
MPPI is always measured beside them. A trajectory world model (WestWorld, TrajWorld, TDM)
plans from a history of repeated current states here, which costs the same as a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from ws_mppi.config import default_config, load_config
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
    p.add_argument("--dynamics", default="default",
                   help="comma-separated learned checkpoints, LABEL=PATH or PATH ('default': the shipped one)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch and oracle threads (default: all CPUs)")
    p.add_argument("--config", default=None, help="controller YAML (default: the environment's built-in config; "
                                                  "2026-11-22 figures: config/mppi_short_horizon.yaml)")
    p.add_argument("--sweep", default="", help="grid 'K1,K2,...:H1,H2,...' of samples and horizons")
    args = p.parse_args()
    nthread = args.threads or os.cpu_count() or 1
    torch.set_num_threads(nthread)
    env = make_env(args.env)
    cfg = load_config(args.config, args.env) if args.config else default_config(args.env)
    if args.horizon:
        cfg.mppi.horizon = args.horizon
    if args.samples:
        cfg.mppi.samples = args.samples
    learned = {}
    for spec in (s for s in args.dynamics.split(",") if s):
        label, _, path = spec.rpartition("=")
        learned[label or ("learned" if path == "default" else os.path.basename(path))] = path
    if args.sweep:
        ks, hs = ([int(v) for v in part.split(",")] for part in args.sweep.split(":"))
        grid = []
        for k in ks:
            for h in hs:
                cfg.mppi.samples, cfg.mppi.horizon = k, h
                row = {"samples": k, "horizon": h}
                for label, path in {"oracle": "oracle", **learned}.items():
                    r = bench(path, env, cfg, args.iters, args.warmup, nthread)
                    row[label] = {"median_ms": r["median_ms"], "p99_ms": r["p99_ms"]}
                grid.append(row)
        print(json.dumps({"benchmark": "mppi_cycle_vs_samples_horizon", "env": args.env, "threads": nthread,
                          "dynamics": learned, "grid": grid}, indent=2))
        return
    oracle = bench("oracle", env, cfg, args.iters, args.warmup, nthread)
    res = {label: bench(path, env, cfg, args.iters, args.warmup, nthread) for label, path in learned.items()}
    print(json.dumps({
        "benchmark": "mppi_iteration", "env": args.env, "horizon": cfg.mppi.horizon, "samples": cfg.mppi.samples,
        "threads": nthread, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "oracle": oracle, **res,
        **{f"{label}_over_oracle_median": round(r["median_ms"] / oracle["median_ms"], 3) for label, r in res.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
