"""MPPI on the Go1 across the sim-to-real gap: the evaluation simulator's physics randomised per episode.

:func:`evaluate` walks each controller on the nominal Go1 and on randomised ones
(:class:`ws_sim.randomisation.RandomisedGo1Env`, one draw per seed), the planner knowing only the
nominal model (the oracle plans with the MJCF's values, a learned model with what it was trained
on), and reports forward progress and falls per controller, seeds as units (``ws mppi randomised``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ws_sim.randomisation import Go1Randomisation, RandomisedGo1Env

__all__ = ["walk", "evaluate"]


def walk(env, controller, seed: int, steps: int, on_estimate: bool = False) -> dict:
    """``steps`` control steps from ``env.reset(seed=seed)`` on the true state (or, ``on_estimate``, on the
    state estimated from simulated IMU, encoder and effort readings, whose IMU biases are drawn per walk:
    :func:`ws_mppi.estimation.walk`): ``{"progress_m", "steps", "fell"}`` (the base's forward progress along x)."""
    if on_estimate:
        from .estimation import walk as walk_on_estimate

        res = walk_on_estimate(env, controller, seed, steps, closed_loop=True)
        return {k: res[k] for k in ("progress_m", "steps", "fell")} | {"velocity_rmse": res["velocity_rmse"]}
    state, _ = env.reset(seed=seed)
    controller.reset()
    x0, fell, t = state[0], False, 0
    for t in range(steps):
        action = controller.plan(state, t)
        controller.observe(state, action)
        state, _, terminated, truncated, _ = env.step(action)
        if terminated:
            fell = True
            break
        if truncated:
            break
    return {"progress_m": float(state[0] - x0), "steps": t + 1, "fell": fell}


def _draw_json(draw: dict | None) -> dict | None:
    if draw is None:
        return None
    return {k: (np.round(v, 4).tolist() if isinstance(v, np.ndarray) else round(v, 4)) for k, v in draw.items()}


def evaluate(controllers: dict, seeds, seconds: float, randomisation: Go1Randomisation | None = None,
             out_dir: str | os.PathLike | None = None, progress: bool = True, on_estimate: bool = False) -> dict:
    """Walk every controller on the nominal and on a randomised Go1 for each seed.

    Args:
        controllers: label -> ``(env, oracle_model) -> controller`` (a fresh planner for ``env``; an oracle
            plans with ``oracle_model``, the nominal MJCF).
        seeds: episode seeds; seed ``s`` also draws its randomised physics (``default_rng(s)``).
        seconds: walk length.
        randomisation: the ranges (default :class:`Go1Randomisation`).
        out_dir: where ``randomised.json`` goes.
        on_estimate: the controllers plan on the estimated base state (:func:`walk`).

    Returns:
        ``{label: {"nominal": {...}, "randomised": {...}}}`` with the progress (m, mean and std over seeds),
        falls and per-seed rows (and each seed's draw).
    """
    from tqdm import tqdm

    randomisation = randomisation or Go1Randomisation()
    seeds = [int(s) for s in seeds]
    out = {}
    jobs = [(label, kind, seed) for label in controllers for kind in ("nominal", "randomised") for seed in seeds]
    rows = {label: {"nominal": [], "randomised": []} for label in controllers}
    for label, kind, seed in tqdm(jobs, desc="walks", unit="walk", disable=not progress):
        draw = randomisation.sample(np.random.default_rng(seed)) if kind == "randomised" else None
        env = RandomisedGo1Env(draw)
        steps = int(round(seconds / env.dt))
        ctrl = controllers[label](env, env.nominal_model)
        try:
            res = walk(env, ctrl, seed, steps, on_estimate=on_estimate)
        finally:
            getattr(ctrl, "close", lambda: None)()
            env.close()
        rows[label][kind].append({"seed": seed, **res, "draw": _draw_json(draw)})
    for label, kinds in rows.items():
        out[label] = {}
        for kind, rs in kinds.items():
            prog = np.array([r["progress_m"] for r in rs])
            out[label][kind] = {"progress_m": [float(prog.mean()), float(prog.std())],
                                "falls": int(sum(r["fell"] for r in rs)), "walks": len(rs), "per_seed": rs}
    summary = {"seeds": seeds, "seconds": seconds, "on_estimate": on_estimate, "ranges": {k: v for k, v in vars(randomisation).items()},
               "controllers": out}
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "randomised.json").write_text(json.dumps(summary, indent=1))
    return summary
