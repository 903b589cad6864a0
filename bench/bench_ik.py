"""Inverse kinematics for the PiPER: mink (``ws_sim.piper.solve_ik``) against the damped least
squares the project used until 2026-12-05, on the same goals in one run.

The goals are the tool positions of seeded random joint angles around ``READY_JOINTS`` (so all
are reachable), solved three ways, as the callers do: position only from ``READY_JOINTS``
(``PiperReachEnv.set_goal``), pointing down with a finger yaw from ``READY_JOINTS`` (the scripted
experts' grasps), and a 5 mm step from the joints that reach a goal (one teleoperation tick, the
scripted experts' per-step tracking). Success is the caller's tolerance met; errors are the tool's
distance from the goal after the solve; times are wall-clock per solve on one thread.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_ik.py            # 200 goals
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_ik.py --goals 50

Prints one JSON object. Results: docs/benchmarks.md ("Inverse kinematics: mink against damped
least squares").
"""

from __future__ import annotations

import argparse
import json
import time

import mujoco
import numpy as np

from ws_sim.piper import ARM_JOINTS, READY_JOINTS, IKError, check_ik_target, load_piper, solve_ik


# --- the solver used until 2026-12-05, verbatim, as the baseline -------------------------------------
def dls_solve_ik(model: mujoco.MjModel, target_pos, approach=None, q0=None, *, yaw: float | None = None,
                 tol: float = 1e-3, max_iter: int = 200, damping: float = 1e-3,
                 lock_at_limits: bool = False, best_effort: bool = False) -> np.ndarray:
    """Damped least squares, dq = J^T (J J^T + damping I)^-1 e, each step clipped to the joint ranges."""
    target, axis = check_ik_target(target_pos, approach, yaw)
    data = mujoco.MjData(model)
    jids = [model.joint(n).id for n in ARM_JOINTS]
    qadr = np.array([model.jnt_qposadr[j] for j in jids])
    dadr = np.array([model.jnt_dofadr[j] for j in jids])
    lo, hi = model.jnt_range[jids].T
    q = np.array(READY_JOINTS if q0 is None else q0, dtype=np.float64)
    site = model.site("tcp").id
    jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    err = np.inf
    for _ in range(max_iter):
        data.qpos[qadr] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        pos, rot = data.site_xpos[site], data.site_xmat[site].reshape(3, 3)
        e = [target - pos]
        mujoco.mj_jacSite(model, data, jacp, jacr, site)
        J = [jacp[:, dadr]]
        if axis is not None:
            e.append(np.cross(rot[:, 2], axis))
            J.append(jacr[:, dadr])
            if yaw is not None:
                want = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
                want -= axis * (want @ axis)
                if np.linalg.norm(want) > 1e-6:
                    e.append(np.cross(rot[:, 1], want / np.linalg.norm(want)))
                    J.append(jacr[:, dadr])
        e, J = np.concatenate(e), np.concatenate(J)
        err = float(np.max(np.abs(e)))
        if err < tol:
            return q
        dq = J.T @ np.linalg.solve(J @ J.T + damping * np.eye(len(e)), e)
        if lock_at_limits:
            pinned = ((q <= lo + 1e-9) & (dq < 0)) | ((q >= hi - 1e-9) & (dq > 0))
            if pinned.any():
                Jf = J * ~pinned  # columns of the pinned joints zeroed
                dq = Jf.T @ np.linalg.solve(Jf @ Jf.T + damping * np.eye(len(e)), e)
        q = np.clip(q + dq, lo, hi)
    if best_effort:
        return q
    raise IKError(f"no joint angles put the tool at {target.round(3).tolist()} (residual {err:.4f} after {max_iter} "
                  f"iterations): out of the PiPER's reach or joint ranges")


# --- the benchmark ------------------------------------------------------------------------------
def _tool(model, data, q):
    data.qpos[:6] = q
    mujoco.mj_kinematics(model, data)
    return data.site("tcp").xpos.copy(), data.site("tcp").xmat.reshape(3, 3).copy()


def _cases(model, data, n: int, seed: int):
    """``(name, kwargs)`` per solve, the same for both solvers; kwargs as the callers pass them."""
    rng = np.random.default_rng(seed)
    lo, hi = model.jnt_range[:6].T
    cases = {"reach": [], "grasp": [], "teleop_step": [], "expert_step": []}
    for _ in range(n):
        q = np.clip(READY_JOINTS + rng.uniform(-0.5, 0.5, 6), lo, hi)
        goal, _r = _tool(model, data, q)
        cases["reach"].append(dict(target_pos=goal))  # PiperReachEnv.set_goal
        step = rng.normal(size=3)
        step *= 0.005 / np.linalg.norm(step)
        # TeleopController.step: one tick from joints that reach the goal
        cases["teleop_step"].append(dict(target_pos=goal + step, q0=q, tol=2e-4, max_iter=30, lock_at_limits=True))
        # ScriptedExpert: a grasp pointing down (its yaw) and one 5 mm tracking step from there
        yaw = float(rng.uniform(-1.0, 1.0))
        q_down = READY_JOINTS.copy()
        q_down[[0, 1, 2]] += rng.uniform(-0.3, 0.3, 3)
        q_down[4] = READY_JOINTS[4]
        q_down[5] = READY_JOINTS[5] + yaw + q_down[0]
        q_down = np.clip(q_down, lo, hi)
        point = np.array([rng.uniform(0.2, 0.35), rng.uniform(-0.15, 0.15), rng.uniform(0.02, 0.09)])
        q0 = READY_JOINTS.copy()
        q0[5] = np.clip(READY_JOINTS[5] + yaw, -2.0, 2.0)
        cases["grasp"].append(dict(target_pos=point, approach=[0, 0, -1], yaw=yaw, q0=q0, tol=2e-3, max_iter=100))
        cases["expert_step"].append(dict(target_pos=point + step, approach=[0, 0, -1], yaw=yaw, tol=2e-3,
                                         max_iter=60, _from=len(cases["grasp"]) - 1))
    return cases


def _residual(model, data, q, kw):
    """Position error (m) and the solver's own residual (max of position and axis cross products)."""
    pos, rot = _tool(model, data, q)
    e = [kw["target_pos"] - pos]
    if kw.get("approach") is not None:
        axis = np.asarray(kw["approach"], dtype=float)
        axis /= np.linalg.norm(axis)
        e.append(np.cross(rot[:, 2], axis))
        if kw.get("yaw") is not None:
            want = np.array([-np.sin(kw["yaw"]), np.cos(kw["yaw"]), 0.0])
            want -= axis * (want @ axis)
            e.append(np.cross(rot[:, 1], want / np.linalg.norm(want)))
    return float(np.linalg.norm(kw["target_pos"] - pos)), float(np.max(np.abs(np.concatenate(e))))


def _run(solver, model, data, cases):
    out = {}
    grasp_q = []
    for name in ("reach", "grasp", "teleop_step", "expert_step"):
        errs, times, ok = [], [], []
        for kw in cases[name]:
            kw = dict(kw)
            src = kw.pop("_from", None)
            if src is not None:  # track from this solver's own grasp solution
                if grasp_q[src] is None:
                    continue
                kw["q0"] = grasp_q[src]
            t0 = time.perf_counter()
            q = solver(model, best_effort=True, **kw)
            times.append(time.perf_counter() - t0)
            err, res = _residual(model, data, q, kw)
            tol = kw.get("tol", 1e-3)
            errs.append(err)
            ok.append(res < tol)
            if name == "grasp":
                grasp_q.append(q if res < tol else None)
        errs, times = np.array(errs), np.array(times) * 1e3
        out[name] = {"solves": len(errs), "success_rate": float(np.mean(ok)),
                     "pos_err_mm_median": float(np.median(errs) * 1e3), "pos_err_mm_p99": float(np.quantile(errs, 0.99) * 1e3),
                     "pos_err_mm_p99_of_successes": float(np.quantile(errs[np.array(ok)], 0.99) * 1e3) if any(ok) else None,
                     "time_ms_median": float(np.median(times)), "time_ms_p99": float(np.quantile(times, 0.99))}
    return out


def main(argv=None) -> dict:
    import os
    import platform

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--goals", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model, data = load_piper()
    cases = _cases(model, data, args.goals, args.seed)
    load0 = os.getloadavg()
    solve_ik(model, cases["reach"][0]["target_pos"])  # warm up the import and the limit cache
    result = {"goals": args.goals, "seed": args.seed}
    result["dls"] = _run(dls_solve_ik, model, data, cases)
    result["mink"] = _run(solve_ik, model, data, cases)
    result["mink_over_dls_time_median"] = {k: round(result["mink"][k]["time_ms_median"] / result["dls"][k]["time_ms_median"], 2)
                                           for k in result["dls"]}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "mujoco": mujoco.__version__, "loadavg_before": [round(x, 2) for x in load0],
                         "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
