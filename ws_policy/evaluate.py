"""Closed-loop evaluation of a policy on a PiPER task: success rate with a confidence interval,
latency percentiles, videos of a success and a failure (``ws policy eval``)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["wilson_interval", "evaluate_policy", "offline_action_error"]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % for ``z`` = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _write_video(frames, path: Path, fps: float) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=8) as w:
        for f in frames:
            w.append_data(np.kron(f, np.ones((4, 4, 1), dtype=np.uint8)))  # the policy's own view, 4x
    os.replace(tmp, path)


LIFTED_M = 0.03  # a cube raised this far off the table was grasped (the experts carry it 6-7 cm up)
CLOSING_M = 0.02  # a finger command below this (m; open is 0.035) is a grasp being closed
APPROACH_EVERY = 4  # steps between two checks of where the object head places the cube as the arm approaches


def evaluate_policy(policy, task: str, episodes: int, seed: int, size: int, camera: str = "task",
                    replan_every: int | None = None, chunk: int | None = None, latency: str | int = "measured",
                    ensemble_m: float | None = 0.1, out_dir: Path | None = None, video: bool = True,
                    progress=None, name: str = "policy", workspace: str = "full", record: list | None = None,
                    record_every: int = 1) -> dict:
    """Run ``policy`` (``obs -> (chunk, 7)``, or ``"scripted"`` for the scripted expert) for
    ``episodes`` episodes on seeds ``seed ..``; see :class:`ws_policy.executor.ChunkExecutor`
    for ``replan_every``, ``latency`` and ``ensemble_m``; ``workspace`` as
    :class:`ws_sim.piper_tasks.PiperManipEnv`'s (the setting the policy was trained in).

    Returns:
        the report: success rate, its 95 % Wilson interval, per-episode results (with how high
        cube A was lifted and its final distance to the target, m), latency percentiles (ms),
        the video paths and, for pick-and-place, the failures split into grasps missed (cube
        never lifted :data:`LIFTED_M`) and places missed (with the median miss, m); for a policy
        with the object-position head, how far from the task's cube and the target it places them
        in each episode's first frame (``start_cube_error_m``, ``start_target_error_m``: per episode,
        and their median and maximum) and, as the arm approaches, the median of its cube error every
        :data:`APPROACH_EVERY` steps until the cube is lifted (``approach_cube_error_m``: per episode, then the
        median and maximum over them and the medians of the episodes that lifted the cube and of those that never
        did), and for pick and place
        the medians of its target and cube errors as often while the cube is lifted (``carry_target_error_m``,
        ``carry_cube_error_m``: per episode that lifted it, then the median and maximum over them and the
        medians of the placed and the not placed ones). Per episode also its layout (``cube_yaw_deg``,
        ``cube_bearing_deg``, ``goal_bearing_deg``) and, for pick-and-place and stack, where the fingers were
        as the first grasp closed (``grasp_offset_m``, ``grasp_yaw_error_deg``); over the episodes
        ``successes_by_layout`` (``[successes, episodes]`` by the sign of the cube's yaw and the goal's side
        of the arm) and the medians of the grasp figures (all, lifted, never lifted). Also written to
        ``out_dir/report.json``.

    ``record``: a list that gets every ``record_every``-th frame the policy saw, labelled with the true object
    state (:func:`ws_policy.perception.labelled_frame`): training frames for a perception from the states the
    policy itself visits, mistakes included (DAgger's idea, with labels the simulator gives for free).
    """
    from ws_sim.piper_tasks import PiperManipEnv, ScriptedExpert

    from .executor import ChunkExecutor
    from .perception import labelled_frame

    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    wrist = bool(getattr(getattr(policy, "cfg", None), "wrist", False))  # a policy that reads the wrist camera
    # a state policy and the scripted expert read no images: render only for a video or recorded frames
    blind = policy == "scripted" or bool(getattr(policy, "state_only", False))
    images = video or record is not None or not blind
    env = PiperManipEnv(task, render_mode="rgbd" if images else None, width=size, height=size, camera=camera,
                        workspace=workspace, wrist=wrist)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results, videos = [], {}
    executor = None
    if policy != "scripted":
        executor = ChunkExecutor(policy, chunk=chunk, replan_every=replan_every or max(1, chunk // 2),
                                 ensemble_m=ensemble_m, latency_steps=latency, dt=env.dt, hold=env.neutral_action)
    t_start = time.perf_counter()
    gaps = 0
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            expert = None
            if executor is None:
                expert = ScriptedExpert(env, seed=seed + i)
                expert.reset()
            else:
                executor.reset()
            frames = [obs["rgb"]] if images else []
            z0, z_max = obs["objects"][2], obs["objects"][2]  # cube A's height (objects: env.objects)
            located = _locate(policy, obs)  # where the object head places the cube and target in the first frame
            layout = _layout(obs["objects"], task)
            grasp = None  # where the fingers are when the first grasp closes
            approach = []  # the head's cube error every APPROACH_EVERY steps until the cube is lifted
            carry, carry_cube = [], []  # and its target and cube errors every APPROACH_EVERY steps while lifted
            for step in range(env.max_episode_steps):
                if record is not None and step % record_every == 0:
                    record.append(labelled_frame(obs, info["instruction"]))
                if located and step % APPROACH_EVERY == 0:
                    if obs["objects"][2] - z0 < LIFTED_M:
                        approach.append(_locate(policy, obs)["start_cube_error_m"])
                    elif task == "pick_place":
                        seen = _locate(policy, obs)
                        carry.append(seen["start_target_error_m"])
                        carry_cube.append(seen["start_cube_error_m"])
                action = expert.act() if expert is not None else executor.act(step, obs)
                if (grasp is None and task != "push" and action is not None and action[6] < CLOSING_M
                        and obs["objects"][2] - z0 < LIFTED_M):
                    grasp = _grasp(env)
                obs, _, terminated, truncated, info = env.step(action)
                if images:
                    frames.append(obs["rgb"])
                z_max = max(z_max, obs["objects"][2])
                if terminated or truncated:
                    break
            gaps += executor.gaps if executor is not None else 0
            ok = bool(info["success"])
            o = obs["objects"]
            results.append({"seed": seed + i, "success": ok, "steps": step + 1, "instruction": info["instruction"],
                            "cube_lift_m": round(float(z_max - z0), 4),
                            "cube_to_target_m": None if task == "stack"  # no target disc: cube B is the goal
                            else round(float(np.linalg.norm(o[:2] - o[14:16])), 4), **layout, **(grasp or {}),
                            **located})
            if approach:
                results[-1]["approach_cube_error_m"] = round(float(np.median(approach)), 4)
            if carry:
                results[-1]["carry_target_error_m"] = round(float(np.median(carry)), 4)
                results[-1]["carry_cube_error_m"] = round(float(np.median(carry_cube)), 4)
            key = "success" if ok else "failure"
            if video and out_dir is not None and key not in videos:
                path = Path(out_dir) / f"{task}_{name}_{key}_seed{seed + i}.mp4"
                try:
                    _write_video(frames, path, fps=1.0 / env.dt)
                    videos[key] = str(path)
                except Exception as e:  # no encoder: the evaluation still counts
                    videos[key] = f"not written: {e}"
            if progress is not None:
                progress(i + 1, episodes, sum(r["success"] for r in results))
    finally:
        if executor is not None:
            executor.wait_for_inference()
        env.close()
    wins = sum(r["success"] for r in results)
    lo, hi = wilson_interval(wins, len(results))
    failed = [r for r in results if not r["success"]]
    modes = {}
    if task == "pick_place" and failed:  # where it went wrong: the grasp, or the place
        lost = sum(r["cube_lift_m"] < LIFTED_M for r in failed)
        misses = [r["cube_to_target_m"] for r in failed if r["cube_lift_m"] >= LIFTED_M]
        modes = {"cube_not_lifted": lost, "lifted_not_placed": len(failed) - lost,
                 "median_miss_m": round(float(np.median(misses)), 4) if misses else None}
    where = {}
    if task != "push" and results:  # where in the band it fails, and how far off the fingers closed
        where["successes_by_layout"] = {
            f"cube_yaw_{ys}_goal_{side}": [sum(r["success"] for r in cell), len(cell)]
            for ys, yf in (("below_0", lambda y: y < 0), ("0_or_more", lambda y: y >= 0))
            for side, sf in (("left", lambda b: b >= 0), ("right", lambda b: b < 0))
            for cell in ([r for r in results if yf(r["cube_yaw_deg"]) and sf(r["goal_bearing_deg"])],)}
        closed = [r for r in results if "grasp_offset_m" in r]
        for key in ("grasp_offset_m", "grasp_yaw_error_deg") if closed else ():
            where[key] = {f"median_{k}": round(float(np.median([abs(r[key]) for r in v])), 4) for k, v in (
                ("all", closed), ("lifted", [r for r in closed if r["cube_lift_m"] >= LIFTED_M]),
                ("never_lifted", [r for r in closed if r["cube_lift_m"] < LIFTED_M])) if v}
    start = {}
    if results and "start_cube_error_m" in results[0]:  # the object head's localisation at each episode's start
        start = {f"start_{k}_error_m": {"median": round(float(np.median([r[f"start_{k}_error_m"] for r in results])), 4),
                                        "max": round(float(np.max([r[f"start_{k}_error_m"] for r in results])), 4)}
                 for k in ("cube", "target")}
        approached = [r for r in results if "approach_cube_error_m" in r]
        start["approach_cube_error_m"] = {
            "median": round(float(np.median([r["approach_cube_error_m"] for r in approached])), 4),
            "max": round(float(np.max([r["approach_cube_error_m"] for r in approached])), 4),
            **{f"median_{k}": round(float(np.median(v)), 4) for k, v in (
                ("lifted", [r["approach_cube_error_m"] for r in approached if r["cube_lift_m"] >= LIFTED_M]),
                ("never_lifted", [r["approach_cube_error_m"] for r in approached if r["cube_lift_m"] < LIFTED_M])) if v}}
        carried = [r for r in results if "carry_target_error_m" in r]
        for what in ("target", "cube") if carried else ():  # placing: where the head puts them while carrying
            key = f"carry_{what}_error_m"
            start[key] = {"median": round(float(np.median([r[key] for r in carried])), 4),
                          "max": round(float(np.max([r[key] for r in carried])), 4),
                          **{f"median_{k}": round(float(np.median(v)), 4) for k, v in (
                              ("placed", [r[key] for r in carried if r["success"]]),
                              ("not_placed", [r[key] for r in carried if not r["success"]])) if v}}
    report = {"policy": name, "task": task, "workspace": workspace, "episodes": len(results), "seed": seed,
              "successes": wins, "failure_modes": modes, **where, **start,
              "success_rate": wins / len(results), "ci95": [round(lo, 3), round(hi, 3)],
              "latency": executor.latency_percentiles() if executor is not None else {},
              "gaps": gaps, "wall_s": round(time.perf_counter() - t_start, 1),
              "videos": videos, "episodes_detail": results}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(out_dir) / ".report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, Path(out_dir) / "report.json")
    return report


def _layout(objects, task: str) -> dict:
    """The episode's layout from the first ``objects`` ((17,), :attr:`ws_sim.piper_tasks.PiperManipEnv.objects`):
    cube A's yaw and bearing from the arm's base, and the goal's bearing (the target disc; cube B for stack),
    degrees (bearing > 0: left of the arm). The expert's finger yaw and J6's travel depend on these."""
    o = np.asarray(objects, dtype=np.float64)
    goal = o[7:9] if task == "stack" else o[14:16]
    return {"cube_yaw_deg": round(float(np.degrees(2.0 * np.arctan2(o[6], o[3]))), 2),
            "cube_bearing_deg": round(float(np.degrees(np.arctan2(o[1], o[0]))), 2),
            "goal_bearing_deg": round(float(np.degrees(np.arctan2(goal[1], goal[0]))), 2)}


def _grasp(env) -> dict:
    """Where the fingers are as the first grasp closes: ``grasp_offset_m``, the tool centre's horizontal distance
    from cube A's centre (m), and ``grasp_yaw_error_deg``, the fingers' yaw minus the cube's, wrapped to
    [-45, 45) degrees (a cube looks the same every 90; 0: fingers square to its faces). The fingers' yaw is
    that of the tool's y axis, ``(-sin yaw, cos yaw, 0)`` as in :func:`ws_sim.piper.solve_ik`."""
    e = env.unwrapped
    cube = e.objects[:7]
    y_axis = e.data.site("tcp").xmat.reshape(3, 3)[:, 1]
    fingers = np.degrees(np.arctan2(-y_axis[0], y_axis[1]))
    yaw = np.degrees(2.0 * np.arctan2(cube[6], cube[3]))
    return {"grasp_offset_m": round(float(np.linalg.norm(e.tcp[:2] - cube[:2])), 4),
            "grasp_yaw_error_deg": round(float((fingers - yaw + 45.0) % 90.0 - 45.0), 2)}


def _locate(policy, obs: dict) -> dict:
    """``{"start_cube_error_m", "start_target_error_m"}``: how far from the task's cube and the target the
    policy's object-position head (:meth:`ws_policy.train.PolicyRunner.object_positions`) places them in
    ``obs``; empty for a policy without the head (or the scripted expert)."""
    if not bool(getattr(getattr(policy, "cfg", None), "object_aux", 0)) or not hasattr(policy, "object_positions"):
        return {}
    where = policy.object_positions(obs)
    return {"start_cube_error_m": round(float(np.linalg.norm(where["cube"] - obs["objects"][:3])), 4),
            "start_target_error_m": round(float(np.linalg.norm(where["target"] - obs["objects"][14:17])), 4)}


def offline_action_error(runner, episodes, windows_per_episode: int = 6, seed: int = 0) -> dict:
    """How far a policy's chunks are from the expert's, on recorded episodes (no simulation).

    For random steps of each successful episode: the mean absolute error of the predicted
    chunk's arm joints against the expert's next actions (rad), beside the same error of
    holding the current joint positions (a policy must beat that to be moving the right way).
    A policy trained with the object-position auxiliary also gets the median distance (m) from
    where its head places the task's cube and the target to where they are
    (:meth:`ws_policy.train.PolicyRunner.object_positions`).
    """
    rng = np.random.default_rng(seed)
    err, hold, cube, target = [], [], [], []
    locate = bool(getattr(getattr(runner, "cfg", None), "object_aux", 0))
    for e in (e for e in episodes if e.success):
        for t in rng.integers(0, len(e.actions), windows_per_episode):
            obs = {"rgb": e.rgb[t], "depth": e.depth[t].astype(np.float32), "qpos": e.qpos[t],
                   "objects": e.objects[t], "instruction": e.instruction}
            if e.wrist_rgb is not None:
                obs.update(wrist_rgb=e.wrist_rgb[t], wrist_depth=e.wrist_depth[t].astype(np.float32))
            chunk = runner(obs)
            true = e.actions[t:t + len(chunk), :6]
            err.append(np.abs(chunk[:len(true), :6] - true).mean())
            hold.append(np.abs(e.qpos[t][:6] - true).mean())
            if locate:
                where = runner.object_positions(obs)
                cube.append(np.linalg.norm(where["cube"] - e.objects[t][:3]))
                target.append(np.linalg.norm(where["target"] - e.objects[t][14:17]))
    out = {"windows": len(err), "chunk_error_rad": round(float(np.mean(err)), 4),
           "hold_still_error_rad": round(float(np.mean(hold)), 4)}
    if locate:
        out.update(cube_position_error_m=round(float(np.median(cube)), 4),
                   target_position_error_m=round(float(np.median(target)), 4))
    return out
