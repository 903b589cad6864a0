"""Benchmark: our MPPI against ``pytorch-mppi`` (PyPI) driving the same learned model.

Both planners use the shipped Hopper MLPEnsemble as dynamics, the same samples K, horizon H,
temperature lambda and noise sigma, and a per-step cost of the same arithmetic (Gymnasium's
reward from the predicted state: forward velocity ``qvel[0]``, healthy bonus, control cost).
Each plans from the same state ``--iters`` times after warm-up. Prints one JSON object with
the median/p99 latency of one planning cycle of each and their ratio, measured in the same
run. Not a test: nothing is asserted. Needs the bench extra: ``pip install -e .[bench]``.

    .venv/bin/python bench/bench_pytorch_mppi.py [--samples 64] [--horizon 20] [--iters 50]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pytorch_mppi import MPPI as ReferenceMPPI

from ws_mppi.config import default_config
from ws_mppi.mppi import MPPI, MPPIConfig
from ws_mppi.report import resolve_dynamics
from ws_sim.envs import make_env
from ws_worldmodel.checkpoint import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = make_env("hopper")
    cfg = default_config("hopper").mppi
    k, h = args.samples or cfg.samples, args.horizon or cfg.horizon
    lam, sigma = cfg.temperature, cfg.noise_sigma
    model = load_checkpoint(resolve_dynamics("hopper", "default"))
    task = env.task

    def step_cost(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        z, ang, vx = s[:, task.z_index], s[:, task.angle_index], s[:, env.nq + task.x_index]
        healthy = ((z > task.healthy_z_range[0]) & (ang > task.healthy_angle_range[0])
                   & (ang < task.healthy_angle_range[1])).to(s.dtype)
        return -(task.forward_reward_weight * vx + task.healthy_reward * healthy
                 - task.ctrl_cost_weight * a.square().sum(-1))

    class OneStep:  # our MPPI's Dynamics protocol over the same one-step model
        state_dim, action_dim = model.state_dim, model.action_dim

        @torch.inference_mode()
        def rollout(self, state, actions):
            s = state.expand(actions.shape[0], -1)
            out = actions.new_empty(actions.shape[0], actions.shape[1], self.state_dim)
            for t in range(actions.shape[1]):
                s = model.predict(s, actions[:, t])
                out[:, t] = s
            return out

    def trajectory_cost(state, actions, states, t0=0):
        k_, h_, _ = states.shape
        return step_cost(states.reshape(k_ * h_, -1), actions.reshape(k_ * h_, -1)).reshape(k_, h_).sum(1)

    low, high = env.action_space.low, env.action_space.high
    ours = MPPI(OneStep(), trajectory_cost, low, high, MPPIConfig(horizon=h, samples=k, temperature=lam,
                                                                  noise_sigma=sigma), seed=0)
    ref = ReferenceMPPI(lambda s, a: model.predict(s, a), step_cost, model.state_dim,
                        noise_sigma=torch.eye(model.action_dim) * sigma ** 2, num_samples=k, horizon=h, lambda_=lam,
                        u_min=torch.as_tensor(low), u_max=torch.as_tensor(high))
    state, _ = env.reset(seed=0)
    s32 = torch.as_tensor(state, dtype=torch.float32)

    def timed(fn) -> np.ndarray:
        for _ in range(5):
            fn()
        out = []
        for _ in range(args.iters):
            tic = time.perf_counter()
            fn()
            out.append((time.perf_counter() - tic) * 1e3)
        return np.asarray(out)

    with torch.inference_mode():
        t_ours = timed(lambda: ours.plan(state))
        t_ref = timed(lambda: ref.command(s32))
    print(json.dumps({
        "benchmark": "mppi_vs_pytorch_mppi", "env": "hopper", "dynamics": "shipped MLPEnsemble",
        "samples": k, "horizon": h, "temperature": lam, "noise_sigma": sigma, "threads": args.threads,
        "ours_ms": {"median": round(float(np.median(t_ours)), 3), "p99": round(float(np.percentile(t_ours, 99)), 3)},
        "pytorch_mppi_ms": {"median": round(float(np.median(t_ref)), 3), "p99": round(float(np.percentile(t_ref, 99)), 3)},
        "ours_over_pytorch_mppi_median": round(float(np.median(t_ours) / np.median(t_ref)), 3)}, indent=2))


if __name__ == "__main__":
    main()
