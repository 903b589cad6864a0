"""``ws mppi run``: controllers on the same seeds, a JSON report, a plot and a video.

The first controller is the one under test (by default the learned model shipped with the
package); the others (by default oracle MPPI and zero action) run on the same episode
seeds so their rewards can be compared line by line.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ws_sim.envs import make_env

from .config import ControllerConfig
from .runner import EpisodeResult, make_controller, run_episode

__all__ = ["run_comparison", "resolve_dynamics", "write_json_atomic"]

log = logging.getLogger(__name__)

VIDEO_EVERY = 4  # keep one rendered frame every 4 control steps (31 fps for Hopper's 8 ms step)


def resolve_dynamics(env_name: str, dynamics: str) -> str:
    """Map ``"default"`` to the checkpoint shipped for ``env_name``.

    Raises:
        FileNotFoundError: no checkpoint ships for that environment.
    """
    if dynamics != "default":
        return dynamics
    from ws_worldmodel.checkpoint import DEFAULT_CHECKPOINTS

    path = DEFAULT_CHECKPOINTS.get(env_name)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no default checkpoint ships for {env_name!r}; train one with "
                                f"'ws collect' + 'ws train' and pass --dynamics PATH")
    return str(path)


def write_json_atomic(obj, path: Path) -> None:
    """Write JSON through a temporary sibling and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label.split(" (")[0])


def _save_states(path: Path, res: EpisodeResult) -> None:
    """Visited states and executed actions of one episode (usable as an MPPI reference)."""
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, states=res.states, actions=res.actions, rewards=np.asarray(res.rewards))
    os.replace(tmp, path)


def _aggregate(results: list[EpisodeResult]) -> dict:
    rewards = np.array([r.reward for r in results])
    lat = np.concatenate([np.asarray(r.latencies_s) for r in results]) * 1e3
    return {"episodes": len(results), "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "length_mean": float(np.mean([r.length for r in results])),
            "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99))}


def _plot(per: dict[str, list[EpisodeResult]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per)
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, n in enumerate(names):
        rewards = [r.reward for r in per[n]]
        ax0.bar(i, np.mean(rewards), color=f"C{i}", alpha=0.7)
        ax0.scatter([i] * len(rewards), rewards, color="k", s=12, zorder=3)
        for r in per[n]:
            ax1.plot(np.cumsum(r.rewards), color=f"C{i}", alpha=0.8, label=n if r is per[n][0] else None)
        lat = np.concatenate([np.asarray(r.latencies_s) for r in per[n]]) * 1e3
        if n != "zero":
            ax2.hist(lat, bins=40, color=f"C{i}", alpha=0.6, label=f"{n} (p50 {np.median(lat):.1f} ms)")
    ax0.set_xticks(range(len(names)), names, rotation=15)
    ax0.set_ylabel("accumulated reward")
    ax0.set_title("episode reward (bars: mean, dots: episodes)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("cumulative reward")
    ax1.set_title("reward over the episode")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("planner latency per step (ms)")
    ax2.set_ylabel("steps")
    ax2.set_title("planning latency")
    if ax2.has_data():
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_video(frames: list, path: Path, fps: float) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=8) as w:
        for f in frames:
            w.append_data(np.asarray(f))
    os.replace(tmp, path)


def run_comparison(env_name: str, controllers: list[str], config: ControllerConfig, episodes: int, seed: int,
                   max_steps: int, out_dir: Path | None, video: bool = True, nthread: int | None = None,
                   printer=tqdm.write, terminate_when_unhealthy: bool = True) -> dict:
    """Run each controller for ``episodes`` episodes on seeds ``seed .. seed+episodes-1``.

    Args:
        env_name: environment short name.
        controllers: ``"default"``, checkpoint paths, ``"oracle"`` or ``"zero"``; the first
            one's first episode is filmed.
        config: controller config (MPPI and cost).
        episodes, seed, max_steps: episode count, first seed, step limit.
        out_dir: report directory (created); default ``runs/mppi-<env>-<UTC time>``.
        video: render the mp4 (needs an OpenGL backend; on failure the run goes on without it).
        nthread: oracle rollout threads.
        printer: where the per-episode lines go.
        terminate_when_unhealthy: ``False`` (Hopper and Walker2d): episodes run to ``max_steps``
            after a fall, seed 003's protocol for its Table 3 (:func:`ws_sim.envs.make_env`).

    Returns:
        the report dict (also written to ``out_dir/report.json``).
    """
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    resolved = [resolve_dynamics(env_name, c) for c in controllers]
    out_dir = Path(out_dir or Path("runs") / f"mppi-{env_name}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(env_name, max_episode_steps=max_steps, terminate_when_unhealthy=terminate_when_unhealthy)
    render_env = None
    if video:
        try:
            render_env = make_env(env_name, render=True, width=480, height=360, max_episode_steps=max_steps,
                                  terminate_when_unhealthy=terminate_when_unhealthy)
            render_env.reset(seed=seed)
            render_env.render()
        except Exception as e:  # no OpenGL backend: say so, keep going
            log.warning("video disabled: offscreen rendering failed (%s: %s). On Linux without a display install "
                        "libosmesa6 and set MUJOCO_GL=osmesa.", type(e).__name__, e)
            render_env = None
    per: dict[str, list[EpisodeResult]] = {}
    labels: dict[str, str] = {}
    frames: list = []
    printer(f"{env_name}: {episodes} episode(s) per controller, seeds {seed}..{seed + episodes - 1}, "
            f"MPPI H={config.mppi.horizon} K={config.mppi.samples} lambda={config.mppi.temperature}"
            + ("" if terminate_when_unhealthy else ", no termination: episodes go on after a fall"))
    for ci, spec in enumerate(resolved):
        # the filmed controller runs every episode in the rendering environment, so that an
        # oracle reads the physics state of the very environment it controls
        film_ctrl = ci == 0 and render_env is not None
        run_env = render_env if film_ctrl else env
        ctrl = make_controller(run_env, spec, config, seed=seed, nthread=nthread)
        label = controllers[ci] if controllers[ci] in ("oracle", "zero") else ctrl.name
        if controllers[ci] == "default":
            label = f"learned ({ctrl.name.split(':', 1)[-1]})"
        labels[label] = spec
        results = []
        try:
            bar = tqdm(total=episodes * max_steps, desc=label, unit="step", leave=False)
            for e in range(episodes):
                film = film_ctrl and e == 0
                res = run_episode(run_env, ctrl, seed + e, render_every=VIDEO_EVERY if film else 0, progress=bar)
                bar.update(max_steps - res.length)
                if film:
                    frames = res.frames
                    res.frames = []
                results.append(res)
                _save_states(out_dir / f"states_{_safe(label)}_seed{res.seed}.npz", res)
                s = res.summary()
                printer(f"  {label:<34} seed {s['seed']:>4}  reward {s['reward']:9.2f}  length {s['length']:5d}  "
                        f"latency median {s['latency_ms_median']:.2f} ms  p99 {s['latency_ms_p99']:.2f} ms")
            bar.close()
        finally:
            ctrl.close()
        per[label] = results
    report = {
        "env": env_name, "episodes": episodes, "seed": seed, "max_steps": max_steps,
        "terminate_when_unhealthy": terminate_when_unhealthy,
        "config": config.to_dict(),
        "controllers": {k: {"dynamics": labels[k], **_aggregate(v), "episodes_detail": [r.summary() for r in v]}
                        for k, v in per.items()},
    }
    printer("summary (mean accumulated reward over the same seeds):")
    for k, v in report["controllers"].items():
        printer(f"  {k:<34} {v['reward_mean']:9.2f} ± {v['reward_std']:.2f}   planner p50 {v['latency_ms_median']:.2f} ms"
                f"  p99 {v['latency_ms_p99']:.2f} ms")
    if frames:
        vpath = out_dir / f"{env_name}_{_safe(next(iter(per)))}_seed{seed}.mp4"
        _write_video(frames, vpath, fps=1.0 / (env.dt * VIDEO_EVERY))
        report["video"] = str(vpath)
    _plot(per, out_dir / "report.png", f"MPPI on {env_name}")
    report["plot"] = str(out_dir / "report.png")
    write_json_atomic(report, out_dir / "report.json")
    printer(f"report: {out_dir / 'report.json'}  plot: {report['plot']}" + (f"  video: {report['video']}" if frames else ""))
    env.close()
    if render_env is not None:
        render_env.close()
    return report
