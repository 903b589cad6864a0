"""Benchmark: the 90 Hz controller loop while MPPI plans flat out (Go1; oracle or learned dynamics).

For each seed a simulation thread steps the Go1 in real time (2 ms physics steps) with the newest
command, advancing the task's waypoints as the robot reaches them; the planner thread runs MPPI
(``--dynamics oracle``, ``default`` for the shipped MLPEnsemble, or a checkpoint such as a
fine-tuned WestWorld) on the newest state as fast as it can, feeding history-conditioned models
the executed states and commands of every 20 ms control step; the tick loop emits a command at
``--rate``. An episode ends after ``--seconds`` or when the robot falls (trunk below 0.15 m or
tilted past 60 degrees, the task's termination).

Prints one JSON object: per seed the tick period p50/p99 and jitter, missed ticks, replanning
rate and planning latency, how far the robot walked, its mean forward speed and whether it fell;
and over the seeds the mean ± std of the speed and the number of falls. Not a test: nothing is
asserted. Wall-clock bound by design: an episode takes ``--seconds`` of real time.

    .venv/bin/python bench/bench_realtime.py [--seconds 20] [--seeds 0,1,2,3,4] [--rate 90] [--dynamics default]
        [--config config/mppi_go1.yaml] [--samples K] [--horizon H]
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

from ws_mppi.config import default_config, load_config
from ws_mppi.realtime import RealtimeController
from ws_mppi.report import resolve_dynamics
from ws_mppi.runner import make_controller
from ws_sim.envs import make_env


def run_seed(args, cfg, seed: int) -> dict:
    """One real-time episode from ``env.reset(seed=seed)``; the planner's noise is seeded with ``seed`` too."""
    env = make_env("go1")
    env.reset(seed=seed)
    sim_model, sim_data = env.model, env.data
    planner = make_controller(env, resolve_dynamics("go1", args.dynamics), cfg, seed=seed, nthread=args.threads)
    if hasattr(planner.mppi.dynamics, "physics_state_fn"):
        planner.mppi.dynamics.physics_state_fn = None  # plan from the published state, not the live sim
    planner.reset(seed)
    lock = threading.Lock()
    latest = {"state": env.state.copy(), "command": env.neutral_action.copy(), "t0": time.perf_counter()}
    executed = collections.deque(maxlen=1000)  # (state, command) at each 20 ms control step
    outcome = {"fell_at_s": None}
    done = threading.Event()

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

    def simulate():
        t_next = time.perf_counter()
        n, n_end = 0, int(round(args.seconds / sim_model.opt.timestep))
        while n < n_end and not done.is_set():
            if n % env.frame_skip == 0:
                with lock:
                    executed.append((np.concatenate([sim_data.qpos, sim_data.qvel]), latest["command"].copy()))
                    env.update_goal(sim_data.qpos[:2])  # the cost reads env.goal: the next waypoint once reached
                if env.fallen():
                    outcome["fell_at_s"] = round(float(sim_data.time), 3)
                    break
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
        done.set()

    sim = threading.Thread(target=simulate, daemon=True)
    sim.start()
    ctrl.start()
    done.wait()  # the episode's end is an event: its simulated seconds ran out or the robot fell
    ctrl.stop()
    sim.join()
    planner.close()
    x = float(sim_data.qpos[0])
    return {"seed": seed, **ctrl.stats(), "sim_seconds": round(float(sim_data.time), 3),
            "base_x_m": round(x, 3), "base_z_m": round(float(sim_data.qpos[2]), 3),
            "forward_speed_m_s": round(x / max(float(sim_data.time), 1e-9), 3),
            "fell": outcome["fell_at_s"] is not None, "fell_at_s": outcome["fell_at_s"],
            "waypoints_reached": int(env.goal_index)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="simulated (= wall-clock) seconds per seed")
    p.add_argument("--seeds", default="0", help="comma-separated reset and planner seeds, e.g. 0,1,2,3,4")
    p.add_argument("--rate", type=float, default=90.0, help="command rate of the tick loop, Hz")
    p.add_argument("--config", default=None, help="controller YAML (default: config/mppi_go1.yaml's settings)")
    p.add_argument("--samples", type=int, default=None, help="override the config's MPPI samples K")
    p.add_argument("--horizon", type=int, default=None, help="override the config's MPPI horizon H (control steps)")
    p.add_argument("--threads", type=int, default=1, help="torch / oracle rollout threads of the planner")
    p.add_argument("--dynamics", default="oracle", help="oracle, default (the shipped Go1 model) or a checkpoint")
    args = p.parse_args()
    if args.seconds <= 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        p.error("--seeds is empty")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, "go1") if args.config else default_config("go1")
    cfg.mppi.samples = args.samples or cfg.mppi.samples
    cfg.mppi.horizon = args.horizon or cfg.mppi.horizon
    runs = [run_seed(args, cfg, seed) for seed in seeds]
    speed = np.array([r["forward_speed_m_s"] for r in runs])
    out = {"benchmark": "realtime_controller_go1_mppi", "dynamics": args.dynamics, "config": args.config,
           "seconds": args.seconds, "rate_hz": args.rate, "samples": cfg.mppi.samples, "horizon": cfg.mppi.horizon,
           "v_des_m_s": cfg.cost.get("v_des"), "period_ms": round(1000 / args.rate, 3), "seeds": seeds,
           "forward_speed_m_s_mean": round(float(speed.mean()), 3),
           "forward_speed_m_s_std": round(float(speed.std()), 3),
           "falls": int(sum(r["fell"] for r in runs)),
           "missed_ticks_total": int(sum(r["missed_ticks"] for r in runs)),
           "tick_period_ms_p99_max": max(r["tick_period_ms_p99"] or 0.0 for r in runs), "runs": runs}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
