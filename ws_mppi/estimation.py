"""MPPI on the Go1 with its base state estimated as a real robot must, measured against the simulator's truth.

A real Go1 reports its IMU, joint encoders and joint efforts, not its base position or velocity.
:class:`Go1Sensors` turns the simulated robot into those readings (noise, biases, a drifting heading:
:class:`ws_sim.estimator.ImuModel`), decides which feet stand from the joint efforts
(:meth:`ws_sim.estimator.LegKinematics.foot_forces`), and runs
:class:`ws_sim.estimator.BaseStateEstimator`; :func:`walk` walks the robot with a controller either on
the true state (the estimator riding along, to measure it) or on the estimated one (closed loop), and
:func:`evaluate` does both over seeds (``ws mppi estimate``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ws_sim.estimator import (BaseStateEstimator, EncoderNoise, EstimatorNoise, ImuModel, LegKinematics, quat_to_rot,
                              yaw_of)

__all__ = ["Go1Sensors", "walk", "evaluate", "CONTACT_FORCE_N", "CONTACT_HEIGHT_MARGIN_M"]

#: a foot stands when the ground pushes it up with more than this (N), from the joint efforts
CONTACT_FORCE_N = 20.0
#: a standing foot is at most this high above the lowest foot, m (``LegKinematics.contact``)
CONTACT_HEIGHT_MARGIN_M = 0.02
FEET = ("FR_foot", "FL_foot", "RR_foot", "RL_foot")


class Go1Sensors:
    """The Go1's own readings of a simulated step and the base state estimated from them.

    Args:
        env: a ``Go1WalkEnv``.
        rng: random generator of the sensor noise.
        ideal: noiseless IMU and encoders (the estimator's own error only).
        noise: :class:`ws_sim.estimator.EstimatorNoise` of the filter.
    """

    def __init__(self, env, rng: np.random.Generator, ideal: bool = False, noise: EstimatorNoise | None = None):
        self.env = env
        self.rng = rng
        self.ideal = ideal
        self.imu = ImuModel(rng, ideal=ideal)
        self.sensor_noise = EncoderNoise(0.0, 0.0, 0.0) if ideal else EncoderNoise()
        self.kin = LegKinematics(env.model, FEET)
        self.estimator = BaseStateEstimator(self.kin, noise)
        self._v_before = None

    def reset(self, state: np.ndarray) -> np.ndarray:
        """Start the estimate at the robot's initial pose (a robot starts standing where its odometry starts);
        returns the estimated state."""
        self.imu = ImuModel(self.rng, ideal=self.ideal)
        self.estimator.reset(state[:3], state[3:7], state[7:19])
        self._v_before = state[19:22].copy()
        return state.copy()

    def before_step(self) -> None:
        """Call just before ``env.step``: the IMU integrates the velocity change over the step."""
        self._v_before = self.env.data.qvel[:3].copy()

    def after_step(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Readings of the step just taken; returns ``(estimated state [qpos, qvel], contact (4,) bool)``."""
        env, sn, rng = self.env, self.sensor_noise, self.rng
        acc_world = (state[19:22] - self._v_before) / env.dt  # the mean acceleration over the step
        reading = self.imu.measure(state[3:7], state[22:25], acc_world, env.dt)
        q, dq, tau = sn.apply(rng, state[7:19], state[25:37], env.data.actuator_force.copy())
        rot = quat_to_rot(reading.quat)
        contact = self.kin.contact(q, tau, rot, CONTACT_FORCE_N, CONTACT_HEIGHT_MARGIN_M)
        base = self.estimator.step(env.dt, reading.quat, reading.gyro, reading.accel, q, dq, contact)
        return np.concatenate([base[:7], q, base[7:13], dq]), contact


def walk(env, controller, seed: int, steps: int, closed_loop: bool, ideal: bool = False) -> dict:
    """Walk ``steps`` control steps from ``env.reset(seed=seed)``, the controller reading the true state
    (``closed_loop`` False: the estimator runs alongside) or the estimated one.

    Returns:
        ``{"progress_m", "steps", "fell", "velocity_rmse", "velocity_rmse_xyz", "height_error_max",
        "height_rmse", "yaw_drift_rad", "trace"}``: forward progress of the true base (m), the estimate's base
        velocity RMSE (m/s, norm and per axis), height error (m, largest and RMSE), the heading error at the
        end (rad), and per-step true and estimated base velocity and height (``trace``).
    """
    state, _ = env.reset(seed=seed)
    if hasattr(controller, "reset"):
        controller.reset()
    sensors = Go1Sensors(env, np.random.default_rng(10_000 + seed), ideal=ideal)
    est = sensors.reset(state)
    x0 = state[0]
    true_v, est_v, true_h, est_h = [], [], [], []
    fell = False
    t = 0
    for t in range(steps):
        seen = est if closed_loop else state
        action = controller.plan(seen, t)
        if hasattr(controller, "observe"):  # history-conditioned models keep what the controller saw
            controller.observe(seen, action)
        sensors.before_step()
        state, _, terminated, truncated, _ = env.step(action)
        est, _ = sensors.after_step(state)
        true_v.append(state[19:22].copy())
        est_v.append(est[19:22].copy())
        true_h.append(state[2])
        est_h.append(est[2])
        if terminated:
            fell = True
            break
        if truncated:
            break
    err_v = np.asarray(est_v) - np.asarray(true_v)
    err_h = np.asarray(est_h) - np.asarray(true_h)
    yaw = float(np.angle(np.exp(1j * (yaw_of(est[3:7]) - yaw_of(state[3:7])))))
    return {"progress_m": float(state[0] - x0), "steps": t + 1, "fell": fell,
            "velocity_rmse": float(np.sqrt(np.mean(np.sum(err_v ** 2, axis=1)))),
            "velocity_rmse_xyz": np.sqrt(np.mean(err_v ** 2, axis=0)).round(4).tolist(),
            "height_error_max": float(np.abs(err_h).max()), "height_rmse": float(np.sqrt(np.mean(err_h ** 2))),
            "yaw_drift_rad": yaw,
            "trace": {"true_v": np.asarray(true_v).tolist(), "est_v": np.asarray(est_v).tolist(),
                      "true_h": true_h, "est_h": est_h}}


def _mean_std(values) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return [float(v.mean()), float(v.std())]


def evaluate(make_controller_fn, env, seeds, seconds: float, out_dir: str | os.PathLike | None = None,
             ideal: bool = False, progress: bool = True) -> dict:
    """Per seed, a walk on the true state (the estimator measured alongside) and one on the estimated state.

    Args:
        make_controller_fn: ``() -> controller`` (a fresh planner per walk, the same seed each time).
        env: a ``Go1WalkEnv``.
        seeds: episode seeds (the units of the mean and std).
        seconds: walk length (``seconds / env.dt`` control steps).
        out_dir: where ``estimation.json`` and ``estimation.png`` (seed 0's velocity and height) go.
        ideal: noiseless sensors.

    Returns:
        the summary written to ``estimation.json`` (per seed and mean ± std over seeds).
    """
    from tqdm import tqdm

    steps = int(round(seconds / env.dt))
    rows = {}
    for seed in tqdm(list(seeds), desc="estimator walks", unit="seed", disable=not progress):
        ctrl = make_controller_fn()
        truth = walk(env, ctrl, seed, steps, closed_loop=False, ideal=ideal)
        getattr(ctrl, "close", lambda: None)()
        ctrl = make_controller_fn()
        closed = walk(env, ctrl, seed, steps, closed_loop=True, ideal=ideal)
        getattr(ctrl, "close", lambda: None)()
        rows[int(seed)] = {"on_true_state": truth, "on_estimate": closed}
    keys = ("velocity_rmse", "height_error_max", "height_rmse", "yaw_drift_rad")
    summary = {
        "seeds": [int(s) for s in seeds], "seconds": seconds, "ideal_sensors": ideal,
        "estimator_on_true_state_walk": {k: _mean_std([r["on_true_state"][k] for r in rows.values()]) for k in keys},
        "estimator_on_closed_loop_walk": {k: _mean_std([r["on_estimate"][k] for r in rows.values()]) for k in keys},
        "progress_on_true_state_m": _mean_std([r["on_true_state"]["progress_m"] for r in rows.values()]),
        "progress_on_estimate_m": _mean_std([r["on_estimate"]["progress_m"] for r in rows.values()]),
        "progress_ratio": _mean_std([r["on_estimate"]["progress_m"] / max(1e-9, r["on_true_state"]["progress_m"])
                                     for r in rows.values()]),
        "falls_on_true_state": sum(r["on_true_state"]["fell"] for r in rows.values()),
        "falls_on_estimate": sum(r["on_estimate"]["fell"] for r in rows.values()),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        per_seed = {s: {m: {k: v for k, v in r[m].items() if k != "trace"} for m in r} for s, r in rows.items()}
        (out / "estimation.json").write_text(json.dumps({"summary": summary, "per_seed": per_seed}, indent=1))
        _plot(rows[int(next(iter(seeds)))]["on_true_state"]["trace"], env.dt, out / "estimation.png")
    return summary


def _plot(trace: dict, dt: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tv, ev = np.asarray(trace["true_v"]), np.asarray(trace["est_v"])
    t = np.arange(len(tv)) * dt
    fig, axes = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    for k, (name, c) in enumerate(zip("xyz", ("C0", "C1", "C2"))):
        axes[0].plot(t, tv[:, k], c=c, lw=1.2, label=f"v{name} true")
        axes[0].plot(t, ev[:, k], c=c, lw=0.8, ls="--", label=f"v{name} estimated")
    axes[0].set_ylabel("base velocity (m/s)")
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].plot(t, trace["true_h"], lw=1.2, label="true")
    axes[1].plot(t, trace["est_h"], lw=0.8, ls="--", label="estimated")
    axes[1].set_ylabel("base height (m)")
    axes[1].set_xlabel("time (s)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Go1 base state estimated from IMU, encoders and efforts (first seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
