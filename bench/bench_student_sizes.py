"""Benchmark: the MPPI cycle of a WestWorld against students of several sizes, PyTorch and ONNX Runtime.

What a student may cost: for each size (``LABEL:key=value,...`` over ``WestWorldConfig`` fields, on top
of the teacher's config) an untrained WestWorld is built for the environment's channels (latency does
not depend on the weights), saved, exported to ONNX (one shared history, as ``ws export`` writes it) and
planned with in MPPI at ``--samples`` K and ``--horizon`` H: the whole cycle (sample, predict, weigh),
median and p99 over ``--iters`` cycles after warm-up. The teacher's size runs first, also with a history
per sample (``teacher_per_sample``: what every sequence model ran before 2026-12-06), and every row has
its ratio to the teacher's shared-history PyTorch cycle in the same run. Each cycle is also split into the
time inside the model's ``rollout`` and the rest (sampling, costs, weighting); ``--scans`` times the ONNX
export with each way of writing the selective scan (``ws export --scan``) and counts its nodes, and
``--fixed-batch`` the export with its batch fixed at K (``ws export --batch``). Prints one JSON object; asserts
nothing. Controller: ``config/mppi_short_horizon.yaml`` (the Go1's own config on the Go1) with ``--samples``
and ``--horizon`` (64 and 20 by default) and no policy samples.

    .venv/bin/python bench/bench_student_sizes.py --env hopper --threads 2 \\
        --sizes "paper:n_blocks=2,d_model=16,expert_hidden=32;small:n_blocks=2,d_model=8,expert_hidden=8,d_state=2,n_heads=1"
    .venv/bin/python bench/bench_student_sizes.py --env hopper --threads 2 \\
        --sizes "step:n_blocks=2,tokens=step"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ws_mppi.config import default_config, load_config
from ws_mppi.runner import make_controller
from ws_sim.channels import data_ranges
from ws_sim.envs import make_env
from ws_worldmodel.checkpoint import load_checkpoint
from ws_worldmodel.checkpoint_io import atomic_torch_save
from ws_worldmodel.pretrain import TrajectoryWorldModel
from ws_worldmodel.structure import channel_structure, structure_from_model
from ws_worldmodel.westworld import WestWorld

DEFAULT_TEACHER = Path(__file__).resolve().parents[1] / "ws_worldmodel" / "checkpoints" / "hopper_westworld.pt"


def _value(v: str):
    v = v.strip()
    return int(v) if v.lstrip("-").isdigit() else v


def _sizes(spec: str) -> dict[str, dict]:
    """``"a:k=v,k=v;b:..."`` -> ``{"a": {"k": v}}`` (integer values, or words such as ``tokens=step``)."""
    out = {}
    for part in filter(None, spec.split(";")):
        label, _, kvs = part.partition(":")
        out[label.strip()] = {k.strip(): _value(v) for k, v in (kv.split("=") for kv in filter(None, kvs.split(",")))}
    return out


def _model_for(env, cfg, history: int, horizon: int) -> TrajectoryWorldModel:
    """An untrained WestWorld that knows ``env``'s system: its channels with ranges from 200 random-action
    steps, and its kinematic structure."""
    rng = np.random.default_rng(0)
    state, _ = env.reset(seed=0)
    states, actions = [state], []
    for _ in range(200):
        actions.append(rng.uniform(env.action_space.low, env.action_space.high))
        state, _, terminated, truncated, _ = env.step(actions[-1])
        states.append(state)
        if terminated or truncated:
            state, _ = env.reset()
    structure = structure_from_model(env.model)
    s_idx = channel_structure(structure, list(env.state_channels))
    a_idx = channel_structure(structure, list(env.action_channels))
    s_idx[:, 0] += 1
    a_idx[:, 0] += 1
    meta = {"state_channels": data_ranges(env.state_channels, np.stack(states)),
            "action_channels": data_ranges(env.action_channels, np.stack(actions)),
            "state_struct": s_idx, "action_struct": a_idx}
    return TrajectoryWorldModel(WestWorld(cfg).eval(), {env.name: meta}, history, horizon)


def _cycle(env, path: str, cfg, iters: int, threads: int, shared: bool = True) -> dict:
    """Median and p99 of the whole MPPI cycle, and of the time spent in the model's ``rollout`` within it
    (``model_*``; the rest of the cycle, sampling, costs and weighting, is ``overhead_median_ms``)."""
    ctrl = make_controller(env, path, cfg, seed=0, nthread=threads)
    dyn = ctrl.mppi.dynamics
    if not shared:  # the history run for every sample, as before the shared-history path
        dyn.model.share_history = False
    rollout, spent = dyn.rollout, [0.0]

    def timed_rollout(*a, **k):  # the instance's own rollout, timed
        tic = time.perf_counter()
        try:
            return rollout(*a, **k)
        finally:
            spent[0] += time.perf_counter() - tic

    dyn.rollout = timed_rollout
    state, _ = env.reset(seed=0)
    for _ in range(2):
        ctrl.plan(state, 0)
    lat, model = [], []
    for i in range(iters):
        spent[0] = 0.0
        tic = time.perf_counter()
        ctrl.plan(state, i)
        lat.append((time.perf_counter() - tic) * 1e3)
        model.append(spent[0] * 1e3)
    ctrl.close()
    r = lambda x: round(float(x), 2)  # noqa: E731
    return {"median_ms": r(np.median(lat)), "p99_ms": r(np.percentile(lat, 99)),
            "model_median_ms": r(np.median(model)), "model_p99_ms": r(np.percentile(model, 99)),
            "overhead_median_ms": r(np.median(np.subtract(lat, model)))}


def _onnx_nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="hopper", help="hopper, walker2d or go1")
    p.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="WestWorld checkpoint whose config and history "
                                                                     "the sizes start from")
    p.add_argument("--sizes", default="paper:n_blocks=2,d_model=16,expert_hidden=32",
                   help="LABEL:field=value,...;LABEL:... (WestWorldConfig fields changed from the teacher's)")
    p.add_argument("--config", default=None, help="controller YAML whose settings but K and H are used (default: "
                                                  "config/mppi_short_horizon.yaml, the Go1's own config on the Go1)")
    p.add_argument("--samples", type=int, default=64, help="MPPI samples K")
    p.add_argument("--horizon", type=int, default=20, help="MPPI horizon H (steps)")
    p.add_argument("--iters", type=int, default=30, help="timed MPPI cycles per row")
    p.add_argument("--threads", type=int, default=None, help="PyTorch and ONNX Runtime threads (default: all cores)")
    p.add_argument("--budget-ms", type=float, default=1000 / 90, help="the cycle that fits 90 Hz")
    p.add_argument("--scans", default="unrolled", help="comma-separated ONNX scans to time for every size "
                                                         "(ws export --scan): unrolled, vectorised, parallel")
    p.add_argument("--fixed-batch", action="store_true",
                   help="also time each size exported with its batch fixed at K (ws export --batch K; row "
                        "onnxruntime_fixed_batch), beside the dynamic-batch export in the same run")
    args = p.parse_args()
    from ws_distill.export import SCANS

    scans = [x.strip() for x in args.scans.split(",") if x.strip()]
    if not scans or any(x not in SCANS for x in scans):
        p.error(f"--scans: each of {list(SCANS)}, got {args.scans!r}")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    from ws_distill.export import export_onnx

    env = make_env(args.env)
    teacher = load_checkpoint(args.teacher)
    root = Path(__file__).resolve().parents[1]
    config = args.config or (None if args.env == "go1" else str(root / "config" / "mppi_short_horizon.yaml"))
    base = load_config(config, args.env) if config else default_config(args.env)
    cfg = dataclasses.replace(base, mppi=dataclasses.replace(base.mppi, samples=args.samples, horizon=args.horizon,
                                                             policy_samples=0))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, changes in {"teacher": {}, **_sizes(args.sizes)}.items():
            model = _model_for(env, dataclasses.replace(teacher.net.cfg, **changes), teacher.history, args.horizon)
            pt = Path(tmp) / f"{label}.pt"
            atomic_torch_save(model.payload(), pt)
            row = {"changes": changes, "parameters": sum(q.numel() for q in model.net.parameters()),
                   "torch": _cycle(env, str(pt), cfg, args.iters, threads)}
            for scan in scans:
                onnx = export_onnx(model, env.name, args.horizon, Path(tmp) / f"{label}_{scan}.onnx", scan=scan)
                key = "onnxruntime" if scan == "unrolled" else f"onnxruntime_{scan}"
                row[key] = {**_cycle(env, str(onnx), cfg, args.iters, threads), "onnx_nodes": _onnx_nodes(onnx)}
            if args.fixed_batch:
                onnx = export_onnx(model, env.name, args.horizon, Path(tmp) / f"{label}_fixed.onnx", batch=args.samples)
                row["onnxruntime_fixed_batch"] = {**_cycle(env, str(onnx), cfg, args.iters, threads),
                                                  "onnx_nodes": _onnx_nodes(onnx)}
            if label == "teacher":
                row["torch_per_sample_history"] = _cycle(env, str(pt), cfg, args.iters, threads, shared=False)
            rows[label] = row
    ref = rows["teacher"]["torch"]["median_ms"]
    for row in rows.values():
        for runtime in [k for k in row if k.startswith(("torch", "onnxruntime"))]:
            if isinstance(row[runtime], dict):
                row[runtime]["over_teacher_torch"] = round(row[runtime]["median_ms"] / ref, 3)
                row[runtime]["fits_budget_p99"] = row[runtime]["p99_ms"] <= args.budget_ms
    print(json.dumps({"benchmark": "student_sizes_mppi_cycle", "env": args.env, "samples": args.samples,
                      "horizon": args.horizon, "history": teacher.history, "config": config or "default", "threads": threads,
                      "cpu": platform.processor() or platform.machine(), "budget_ms": round(args.budget_ms, 3),
                      "teacher": args.teacher, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
