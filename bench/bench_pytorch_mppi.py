"""Benchmark: our MPPI against ``pytorch-mppi`` (PyPI) driving the same learned model.

Both planners use the shipped Hopper MLPEnsemble as dynamics, the same samples K, horizon H,
temperature lambda and noise sigma, and a per-step cost of the same arithmetic (Gymnasium's
reward from the predicted state: forward velocity ``qvel[0]``, healthy bonus, control cost).
Ours rolls the model out through :class:`ws_mppi.dynamics.LearnedDynamics` (the fused
``MLPEnsemble.rollout``: one call per cycle); pytorch-mppi calls ``model.predict`` once per
step with a ``(K, nx)`` batch, as a user of that package would. Each plans from the same state
``--iters`` times after warm-up, for every ``--settings`` entry and every ``--threads`` value.

The timing loops are interleaved (one cycle of each planner per iteration, the order rotated
every iteration), so that load from other processes on the machine hits all of them alike.
Besides the two planners, the same loop times ``matmul_floor``: only the batched matmuls of
the elites' square (hidden x hidden) layers for the ``H`` steps (no input layer, activation,
head or MPPI), work no exact float32 implementation can skip; so
``pytorch_mppi_over_floor_median`` bounds the ratio any exact implementation could reach on
this machine in float32. ``rollout_floor`` is one fused H-step rollout of the model alone
(``LearnedDynamics.rollout`` on fixed actions: all its matmuls and SiLU activations, no sampling,
cost or update): the work any MPPI that uses the model's exact float32 arithmetic with PyTorch's
kernels must do each cycle, so ``pytorch_mppi_over_rollout_floor_median`` is the most such a
planner could reach over pytorch-mppi here, and ``ours_over_rollout_floor_median`` what our
planning adds on top of the model. ``ours_bf16`` is our MPPI with the model's matmuls in bfloat16
(``LearnedDynamics(model, precision="bfloat16")``, states in float32; ``model_precision`` in the
controller config; timed here even where the CPU emulates bfloat16, which the JSON's
``bfloat16_native`` tells, and where a planner would run float32 instead), and
``matmul_floor_bf16`` that floor in bfloat16. ``--also`` adds
``ours_stepwise`` (our MPPI over the old per-step ``predict`` loop) and
``pytorch_mppi_cached_step`` (pytorch-mppi over one step of the fused rollout, i.e. over a
``predict`` that keeps its stacked elite weights) and ``pytorch_mppi_bf16`` (pytorch-mppi
driving a bfloat16 copy of the model, ``model.to(torch.bfloat16)``, as a user would make it:
each step's state and action rounded to bfloat16 going in, the next state back to float32).

Prints one JSON object: per setting the median and p90 latency (ms) of one planning cycle of
each, and the ratio pytorch_mppi / ours of the medians. Not a test: nothing is asserted.
Needs the bench extra: ``pip install -e .[bench]``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pytorch_mppi.py [--settings 64x20 256x100]
        [--threads 1] [--iters 30] [--also ours_stepwise pytorch_mppi_cached_step]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from pytorch_mppi import MPPI as ReferenceMPPI

from ws_mppi.config import short_horizon_config
from ws_mppi.dynamics import LearnedDynamics, native_bfloat16
from ws_mppi.mppi import MPPI, MPPIConfig
from ws_mppi.report import resolve_dynamics
from ws_sim.envs import make_env
from ws_worldmodel.checkpoint import load_checkpoint

EXTRAS = ("ours_stepwise", "pytorch_mppi_cached_step", "pytorch_mppi_bf16")


def _setting(text: str) -> tuple[int, int]:
    try:
        k, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is KxH, e.g. 64x20; got {text!r}") from None
    if k < 2 or h < 1:
        raise argparse.ArgumentTypeError(f"need K >= 2 and H >= 1, got {text!r}")
    return k, h


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=_setting, nargs="+", default=[(64, 20), (256, 100)],
                   help="KxH pairs (samples x horizon); default: 64x20 256x100")
    p.add_argument("--samples", type=int, default=None, help="one setting with this K (with --horizon)")
    p.add_argument("--horizon", type=int, default=None, help="one setting with this H (with --samples)")
    p.add_argument("--iters", type=int, default=30, help="timed cycles per planner and setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed cycles per planner and setting first")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op threads (each value in turn)")
    p.add_argument("--also", nargs="*", default=[], choices=EXTRAS, help="extra timed variants (see above)")
    args = p.parse_args()
    settings = args.settings
    if args.samples is not None or args.horizon is not None:
        cfg0 = short_horizon_config().mppi
        settings = [(args.samples or cfg0.samples, args.horizon or cfg0.horizon)]

    env = make_env("hopper")
    cfg = short_horizon_config().mppi
    lam, sigma = cfg.temperature, cfg.noise_sigma
    model = load_checkpoint(resolve_dynamics("hopper", "default"))
    task = env.task
    low, high = env.action_space.low, env.action_space.high

    def step_cost(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        z, ang, vx = s[:, task.z_index], s[:, task.angle_index], s[:, env.nq + task.x_index]
        healthy = ((z > task.healthy_z_range[0]) & (ang > task.healthy_angle_range[0])
                   & (ang < task.healthy_angle_range[1])).to(s.dtype)
        return -(task.forward_reward_weight * vx + task.healthy_reward * healthy
                 - task.ctrl_cost_weight * a.square().sum(-1))

    def trajectory_cost(state, actions, states, t0=0):
        k_, h_, _ = states.shape
        return step_cost(states.reshape(k_ * h_, -1), actions.reshape(k_ * h_, -1)).reshape(k_, h_).sum(1)

    def cached_step(s, a):  # one step of the fused rollout: predict with stacked elite weights
        return model.rollout(s.reshape(-1, model.state_dim), a.reshape(-1, 1, model.action_dim))[:, 0]

    state, _ = env.reset(seed=0)
    s32 = torch.as_tensor(state, dtype=torch.float32)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for k, h in settings:
            mcfg = MPPIConfig(horizon=h, samples=k, temperature=lam, noise_sigma=sigma)
            ours = MPPI(LearnedDynamics(model), trajectory_cost, low, high, mcfg, seed=0)
            ours_bf16 = MPPI(LearnedDynamics(model, precision="bfloat16", emulated_bfloat16=True), trajectory_cost, low, high, mcfg, seed=0)

            def reference(dyn):
                return ReferenceMPPI(dyn, step_cost, model.state_dim,
                                     noise_sigma=torch.eye(model.action_dim) * sigma ** 2, num_samples=k,
                                     horizon=h, lambda_=lam, u_min=torch.as_tensor(low), u_max=torch.as_tensor(high))

            ref = reference(lambda s, a: model.predict(s, a))
            c = model._elite_tensors()
            x = torch.randn(len(c["w"][0]), k, c["w"][1].shape[1])

            def floor(x=x, ws=c["w"][1:], h=h):
                for _ in range(h):
                    for w in ws:
                        torch.bmm(x, w)

            fixed = torch.randn(k, h, model.action_dim, generator=torch.Generator().manual_seed(0)) * sigma
            rollout = LearnedDynamics(model)
            planners = {"ours": lambda: ours.plan(state), "ours_bf16": lambda: ours_bf16.plan(state),
                        "pytorch_mppi": lambda: ref.command(s32), "matmul_floor": floor,
                        "rollout_floor": lambda: rollout.rollout(s32, fixed),
                        "matmul_floor_bf16": lambda: floor(x.to(torch.bfloat16), c["lp"]["w"][1:])}
            if "pytorch_mppi_bf16" in args.also:
                low_model = copy.deepcopy(model).to(torch.bfloat16)
                ref_bf16 = reference(lambda s, a: low_model.predict(s.bfloat16(), a.bfloat16()).float())
                planners["pytorch_mppi_bf16"] = lambda: ref_bf16.command(s32)
            if "ours_stepwise" in args.also:
                old = MPPI(LearnedDynamics(model, fused=False), trajectory_cost, low, high, mcfg, seed=0)
                planners["ours_stepwise"] = lambda: old.plan(state)
            if "pytorch_mppi_cached_step" in args.also:
                ref_cached = reference(cached_step)
                planners["pytorch_mppi_cached_step"] = lambda: ref_cached.command(s32)
            names = list(planners)
            times = {n: [] for n in names}
            with torch.inference_mode():
                for i in range(args.warmup + args.iters):
                    for j in range(len(names)):  # rotate the order every iteration
                        name = names[(i + j) % len(names)]
                        tic = time.perf_counter()
                        planners[name]()
                        if i >= args.warmup:
                            times[name].append((time.perf_counter() - tic) * 1e3)
            row = {"samples": k, "horizon": h, "threads": threads}
            row.update({f"{n}_ms": _stats(times[n]) for n in names})
            med = {n: float(np.median(times[n])) for n in names}
            ratio = lambda a, b: round(med[a] / med[b], 3)  # noqa: E731
            row["pytorch_mppi_over_ours_median"] = ratio("pytorch_mppi", "ours")
            row["pytorch_mppi_over_ours_bf16_median"] = ratio("pytorch_mppi", "ours_bf16")
            row["pytorch_mppi_over_floor_bf16_median"] = ratio("pytorch_mppi", "matmul_floor_bf16")
            if "pytorch_mppi_bf16" in med:
                row["pytorch_mppi_bf16_over_ours_bf16_median"] = ratio("pytorch_mppi_bf16", "ours_bf16")
            row["pytorch_mppi_over_floor_median"] = ratio("pytorch_mppi", "matmul_floor")
            row["pytorch_mppi_over_rollout_floor_median"] = ratio("pytorch_mppi", "rollout_floor")
            row["ours_over_rollout_floor_median"] = ratio("ours", "rollout_floor")
            if "ours_stepwise" in med:
                row["pytorch_mppi_over_ours_stepwise_median"] = ratio("pytorch_mppi", "ours_stepwise")
            if "pytorch_mppi_cached_step" in med:
                row["pytorch_mppi_cached_step_over_ours_median"] = ratio("pytorch_mppi_cached_step", "ours")
            results.append(row)
    try:
        ref_version = version("pytorch-mppi")
    except PackageNotFoundError:  # pragma: no cover
        ref_version = "unknown"
    print(json.dumps({
        "benchmark": "mppi_vs_pytorch_mppi", "env": "hopper", "dynamics": "shipped MLPEnsemble",
        "pytorch_mppi_version": ref_version, "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bfloat16_native": native_bfloat16(),
        "temperature": lam, "noise_sigma": sigma, "iters": args.iters, "warmup": args.warmup,
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
