"""Scripted-expert demonstrations on the PiPER manipulation tasks, as arrays in memory.

:func:`collect_demos` runs :class:`ws_sim.piper_tasks.ScriptedExpert` in
:class:`ws_sim.piper_tasks.PiperManipEnv` with RGB-D rendering and returns one :class:`Episode`
per reset seed. The policy stores and trains on them (:mod:`ws_policy.data`, which re-exports
these names and holds the HDF5 file format) and the video world model cuts them into clips
(:mod:`ws_worldmodel.video.clips`); both sit above the simulator, so the collection lives here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import SimError

__all__ = ["Episode", "DemoError", "collect_demos", "latin_hypercube", "MAX_DEPTH"]

#: depth beyond this (the background) is stored as this, m
MAX_DEPTH = 2.0


class DemoError(SimError):
    """A missing, corrupt or inconsistent demonstration file (the message names the path)."""


@dataclasses.dataclass
class Episode:
    """One demonstration of ``T`` steps.

    Attributes:
        rgb: ``(T+1, H, W, 3)`` uint8 frames. depth: ``(T+1, H, W)`` float16, metres, clipped
            to :data:`MAX_DEPTH`. An episode recorded without images (``collect_demos(images=False)``,
            for policies that read the simulator's state) has ``H = W = 0``.
        qpos, qvel: ``(T+1, 8)`` arm and gripper joints. objects: ``(T+1, 17)`` object states.
        actions: ``(T, 7)`` commands. actor: optional ``(T,)`` int8, who acted at each step (1 a
            human or expert teleoperator, 0 the policy: recordings and DAgger data).
        wrist_rgb, wrist_depth: optional, the wrist camera's frames, as ``rgb`` and ``depth``.
        instruction, success, failure (``""`` for a competent expert), seed: as stored in
            :mod:`ws_policy.data`'s files.
    """

    rgb: np.ndarray
    depth: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    objects: np.ndarray
    actions: np.ndarray
    instruction: str
    success: bool
    failure: str = ""
    seed: int = 0
    actor: np.ndarray | None = None
    wrist_rgb: np.ndarray | None = None
    wrist_depth: np.ndarray | None = None

    @classmethod
    def from_frames(cls, frames: list[dict], actions: list[np.ndarray], instruction: str, success: bool,
                    failure: str = "", seed: int = 0, actor=None) -> "Episode":
        """An episode from ``PiperManipEnv`` observations (``T + 1`` of them, with ``render_mode="rgbd"``; the wrist
        camera's too where they have it) and the ``T`` actions taken between them; observations without
        images (``render_mode=None``) give an episode of empty ``(T+1, 0, 0)`` images."""
        wrist = "wrist_rgb" in frames[0]
        if "rgb" not in frames[0]:
            rgb, depth = np.zeros((len(frames), 0, 0, 3), np.uint8), np.zeros((len(frames), 0, 0), np.float16)
        else:
            rgb = np.stack([f["rgb"] for f in frames])
            depth = np.stack([np.minimum(f["depth"], MAX_DEPTH) for f in frames]).astype(np.float16)
        return cls(rgb=rgb, depth=depth,
                   qpos=np.stack([f["qpos"] for f in frames]).astype(np.float32),
                   qvel=np.stack([f["qvel"] for f in frames]).astype(np.float32),
                   objects=np.stack([f["objects"] for f in frames]).astype(np.float32),
                   actions=np.stack(actions).astype(np.float32), instruction=instruction, success=success,
                   failure=failure, seed=seed, actor=None if actor is None else np.asarray(actor, np.int8),
                   wrist_rgb=np.stack([f["wrist_rgb"] for f in frames]) if wrist else None,
                   wrist_depth=np.stack([np.minimum(f["wrist_depth"], MAX_DEPTH) for f in frames]).astype(np.float16)
                   if wrist else None)

    def __post_init__(self):
        t = len(self.actions)
        if (self.wrist_rgb is None) != (self.wrist_depth is None):
            raise DemoError("an episode has both wrist camera streams (rgb and depth) or neither")
        if self.wrist_rgb is not None and (len(self.wrist_rgb) != t + 1 or len(self.wrist_depth) != t + 1):
            raise DemoError(f"episode wrist frames: {len(self.wrist_rgb)} and {len(self.wrist_depth)} for {t} actions "
                            f"(needs {t + 1})")
        if self.actor is not None and len(self.actor) != t:
            raise DemoError(f"episode actor has {len(self.actor)} entries for {t} actions")
        for name in ("rgb", "depth", "qpos", "qvel", "objects"):
            if len(getattr(self, name)) != t + 1:
                raise DemoError(f"episode {name} has {len(getattr(self, name))} frames for {t} actions (needs {t + 1})")


def latin_hypercube(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, dims)`` points in [0, 1): each column has exactly one point in each of its ``n`` equal strata
    ``[k / n, (k + 1) / n)``, placed uniformly within it, the strata paired at random across columns."""
    return np.stack([(rng.permutation(n) + rng.random(n)) / n for _ in range(dims)], axis=1)


def collect_demos(task: str, episodes: int, seed: int = 0, size: int = 64, camera: str = "task",
                  failure_rate: float = 0.0, randomize: bool = True, workspace: str = "full",
                  stratified: bool = False, wrist: bool = False, images: bool = True,
                  progress=None) -> tuple[list[Episode], dict]:
    """Run the scripted expert for ``episodes`` episodes (reset seeds ``seed, seed + 1, ...``).

    Args:
        task: a :data:`ws_sim.piper_tasks.TASKS` name.
        size: square image side, px.
        failure_rate: the share of episodes whose expert fails on purpose (a random failure
            kind); they are kept, marked, for value learning and tests.
        randomize, workspace: as :class:`ws_sim.piper_tasks.PiperManipEnv`'s (kept in the
            file's attributes, so evaluations use the same setting).
        stratified: spread the layouts evenly over the workspace: a Latin hypercube over the cube's
            radius, bearing and yaw and the target's radius and bearing (each range cut into
            ``episodes`` equal strata, one episode in each stratum of every variable; McKay et al. 1979),
            instead of independent uniform draws. The rest of each episode (colours, distractor, lights)
            still comes from its reset seed.
        wrist: also record the wrist camera (``wrist_rgb``, ``wrist_depth``).
        images: False records no images (nothing is rendered, about ten times faster): joints, object
            states and actions only, for policies that read the simulator's state (a state policy, a pose
            policy's actor); the file's ``image_size`` is 0.
        progress: optional callable ``progress(done, total)``.

    Returns:
        ``(episodes, attrs)``: the episodes and the file's root attributes.

    Raises:
        ValueError: bad counts, rates or task; ``wrist`` without ``images``.
    """
    from .piper_tasks import PiperManipEnv, ScriptedExpert

    if wrist and not images:
        raise ValueError("wrist=True records the wrist camera's images: not with images=False")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
    env = PiperManipEnv(task, render_mode="rgbd" if images else None, width=size, height=size, camera=camera,
                        randomize=randomize, workspace=workspace, wrist=wrist)
    rng = np.random.default_rng(seed)
    strata = None
    if stratified:  # its own stream: the failure draws stay those of an unstratified collection
        strata = latin_hypercube(episodes, 5, np.random.default_rng([seed, 2]))
    out = []
    try:
        for i in range(episodes):
            fail = rng.random() < failure_rate
            expert = ScriptedExpert(env, failure="random" if fail else None, seed=seed + i)
            obs, info = env.reset(seed=seed + i, options=None if strata is None else {"layout_u": strata[i]})
            expert.reset()
            frames = [obs]
            actions = []
            for _ in range(env.max_episode_steps):
                a = expert.act()
                obs, _, terminated, truncated, info = env.step(a)
                frames.append(obs)
                actions.append(np.asarray(a, dtype=np.float32))
                if terminated or truncated:
                    break
            out.append(Episode.from_frames(frames, actions, info["instruction"], bool(info["success"]),
                                           failure=str(expert.failure or ""), seed=seed + i))
            if progress is not None:
                progress(i + 1, episodes)
        attrs = {"task": task, "camera": camera, "image_size": size if images else 0, "control_dt": env.dt,
                 "fovy": float(env.model.camera(camera).fovy[0]),
                 "action_low": env.action_space.low.astype(np.float64), "action_high": env.action_space.high.astype(np.float64),
                 "randomize": randomize, "workspace": workspace, "stratified": bool(stratified), "wrist": bool(wrist)}
        if wrist:
            attrs["wrist_fovy"] = float(env.model.camera("wrist").fovy[0])
    finally:
        env.close()
    return out, attrs
