"""Benchmark: the 90 Hz controller loop while MPPI plans flat out (Go1; oracle or learned dynamics).

A simulation thread steps the Go1 in real time (2 ms physics steps) with the newest
command; the planner thread runs MPPI (``--dynamics oracle``, ``default`` for the shipped
MLPEnsemble, or a checkpoint such as a fine-tuned WestWorld) on the newest state as fast as
it can, feeding history-conditioned models the executed states and commands of every 20 ms
control step; the
tick loop emits a command at 90 Hz. Prints one JSON object: tick period p50/p99 and jitter,
missed ticks, achieved replanning rate and planning latency, and how far the robot walked.
Not a test: nothing is asserted.

    .venv/bin/python bench/bench_realtime.py [--seconds 5] [--rate 90] [--samples 32] [--horizon 15] [--dynamics oracle]
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time

import mujoco
import numpy as np
import torch

from ws_mppi.config import default_config
from ws_mppi.realtime import RealtimeController
from ws_mppi.report import resolve_dynamics
from ws_mppi.runner import make_controller
from ws_sim.envs import make_env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=90.0)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch / oracle rollout threads of the planner")
    p.add_argument("--dynamics", default="oracle", help="oracle, default (the shipped Go1 model) or a checkpoint")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = make_env("go1")
    cfg = default_config("go1")
    cfg.mppi.samples = args.samples or cfg.mppi.samples
    cfg.mppi.horizon = args.horizon or cfg.mppi.horizon
    env.reset(seed=0)
    sim_model, sim_data = env.model, env.data
    planner = make_controller(env, resolve_dynamics("go1", args.dynamics), cfg, seed=0, nthread=args.threads)
    if hasattr(planner.mppi.dynamics, "physics_state_fn"):
        planner.mppi.dynamics.physics_state_fn = None  # plan from the published state, not the live sim
    lock = threading.Lock()
    latest = {"state": env.state.copy(), "command": env.neutral_action.copy(), "t0": time.perf_counter()}
    executed = collections.deque(maxlen=1000)  # (state, command) at each 20 ms control step

    def get_state():
        with lock:
            s = latest["state"].copy()
        step = int((time.perf_counter() - latest["t0"]) / env.dt)
        return s, step

    def plan(state, t):
        while executed:
            planner.observe(*executed.popleft())
        planner.plan(state, t)
        return planner.last.nominal

    def send(cmd):
        with lock:
            latest["command"][:] = cmd

    ctrl = RealtimeController(plan, get_state, send, horizon=cfg.mppi.horizon, action_dim=12, plan_dt=env.dt,
                              rate_hz=args.rate, hold_action=env.neutral_action)
    stop = threading.Event()

    def simulate():
        t_next = time.perf_counter()
        n = 0
        while not stop.is_set():
            if n % env.frame_skip == 0:
                with lock:
                    executed.append((np.concatenate([sim_data.qpos, sim_data.qvel]), latest["command"].copy()))
            n += 1
            with lock:
                sim_data.ctrl[:] = np.clip(latest["command"], sim_model.actuator_ctrlrange[:, 0],
                                           sim_model.actuator_ctrlrange[:, 1])
            mujoco.mj_step(sim_model, sim_data)
            with lock:
                latest["state"][:] = np.concatenate([sim_data.qpos, sim_data.qvel])
            t_next += sim_model.opt.timestep
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    sim = threading.Thread(target=simulate, daemon=True)
    sim.start()
    ctrl.start()
    time.sleep(args.seconds)
    ctrl.stop()
    stop.set()
    sim.join()
    planner.close()
    out = {"benchmark": "realtime_controller_go1_mppi", "dynamics": planner.name, "seconds": args.seconds,
           "rate_hz": args.rate,
           "samples": cfg.mppi.samples, "horizon": cfg.mppi.horizon, "period_ms": round(1000 / args.rate, 3),
           **ctrl.stats(), "base_x_m": round(float(sim_data.qpos[0]), 3), "base_z_m": round(float(sim_data.qpos[2]), 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
