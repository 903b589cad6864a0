"""Benchmark: teacher vs student, PyTorch vs ONNX Runtime (CPU): forward latency and MPPI cycle.

For each model (``LABEL=PATH``, a ``.pt`` checkpoint or a ``.onnx`` export of one system):
the forward latency of one prediction at MPPI batch sizes, and the latency of a whole MPPI
cycle (sample, predict, weigh) at the environment's default K and H (an export's own H), plus a sweep of K and
H to find the largest that fit a period (default 11.1 ms, 90 Hz). Prints one JSON object;
asserts nothing. Control quality comes from ``ws eval control`` (see README).

    .venv/bin/python bench/bench_distill.py --env hopper --threads 2 \\
        --models teacher=teacher.pt,teacher_ort=teacher.onnx,student=student.pt,student_ort=student.onnx
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from ws_mppi.config import default_config, load_config
from ws_mppi.runner import make_controller
from ws_sim.envs import make_env


def _load(path: str, threads: int, providers: list[str] | None = None):
    if path.endswith(".onnx"):
        from ws_distill.export import OnnxSequenceModel

        return OnnxSequenceModel(path, providers=providers, threads=threads)
    from ws_worldmodel.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _pct(x) -> dict:
    x = np.asarray(x) * 1e3
    return {"median_ms": round(float(np.median(x)), 3), "p99_ms": round(float(np.percentile(x, 99)), 3)}


def forward_latency(model, system: str, batch: int, horizon: int, repeats: int) -> dict:
    meta = model.systems[system]
    cs, ca, th = len(meta["state_channels"]), len(meta["action_channels"]), model.history
    rng = np.random.default_rng(0)
    s, a = rng.uniform(size=(batch, th, cs)), rng.uniform(size=(batch, th + horizon, ca))
    model.predict(system, s, a)  # warm up
    lat = []
    for _ in range(repeats):
        tic = time.perf_counter()
        model.predict(system, s, a)
        lat.append(time.perf_counter() - tic)
    return _pct(lat)


def mppi_latency(env, path: str, samples: int, horizon: int, iters: int, nthread: int, base=None) -> dict:
    cfg = copy.deepcopy(base) if base is not None else default_config(env.name)
    cfg.mppi.samples, cfg.mppi.horizon = samples, horizon
    ctrl = make_controller(env, path, cfg, seed=0, nthread=nthread)
    state, _ = env.reset(seed=0)
    ctrl.plan(state, 0)
    lat = []
    for i in range(iters):
        tic = time.perf_counter()
        ctrl.plan(state, i)
        lat.append(time.perf_counter() - tic)
    ctrl.close()
    return _pct(lat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="hopper")
    p.add_argument("--models", required=True, help="comma-separated LABEL=PATH (.pt or .onnx)")
    p.add_argument("--batches", default="1,16,64,128", help="forward-pass batch sizes")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--iters", type=int, default=10, help="MPPI cycles per setting")
    p.add_argument("--sweep", default="16,32,64:5,10,20", help="K1,K2,...:H1,H2,... for the budget search (.pt/.onnx "
                                                            "exports are fixed to their H: swept over K only)")
    p.add_argument("--budget-ms", type=float, default=1000 / 90)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--config", default=None, help="controller YAML (default: the environment's built-in config; "
                                                  "2026-11-22 figures: config/mppi_short_horizon.yaml)")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="ONNX Runtime providers for the forward benchmark, e.g. "
                        "TensorrtExecutionProvider,CUDAExecutionProvider on an NVIDIA GPU")
    args = p.parse_args()
    nthread = args.threads or os.cpu_count() or 1
    torch.set_num_threads(nthread)
    env = make_env(args.env)
    cfg = load_config(args.config, args.env) if args.config else default_config(args.env)
    models = dict(spec.split("=", 1) for spec in args.models.split(","))
    ks, hs = ([int(v) for v in part.split(",")] for part in args.sweep.split(":"))
    out = {"benchmark": "distill_teacher_student_runtimes", "env": args.env, "threads": nthread,
           "providers": args.providers,
           "default_samples": cfg.mppi.samples, "default_horizon": cfg.mppi.horizon, "budget_ms": round(args.budget_ms, 3),
           "models": {}}
    for label, path in models.items():
        model = _load(path, nthread, args.providers.split(","))
        params = sum(q.numel() for q in model.net.parameters()) if hasattr(model, "net") else None
        h_fixed = getattr(model, "horizon", None) if path.endswith(".onnx") else None
        res = {"path": path, "parameters": params,
               "forward": {str(b): forward_latency(model, args.env, b, h_fixed or cfg.mppi.horizon, args.repeats)
                           for b in (int(v) for v in args.batches.split(","))},
               "mppi_default": {"samples": cfg.mppi.samples, "horizon": h_fixed or cfg.mppi.horizon,
                                **mppi_latency(env, path, cfg.mppi.samples, h_fixed or cfg.mppi.horizon, args.iters,
                                               nthread, cfg)}}
        fits = []
        for k in ks:
            for h in ([h_fixed] if h_fixed else hs):
                r = mppi_latency(env, path, k, h, args.iters, nthread, cfg)
                if r["p99_ms"] <= args.budget_ms:
                    fits.append({"samples": k, "horizon": h, **r})
        res["fits_budget"] = fits
        out["models"][label] = res
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
