"""Gymnasium MuJoCo environments as the planner sees them: full state and channel metadata.

Gymnasium's ``Hopper-v5`` and ``Walker2d-v5`` observe ``qpos[1:]`` and a clipped ``qvel``.
A planner that predicts the future needs the whole MuJoCo state instead, the root x
coordinate included, so :class:`StateEnv` observes ``state = [qpos, qvel]`` (shape
``(nq + nv,)``; metres, radians, m/s, rad/s) and carries per-channel metadata. Rewards,
termination and truncation are Gymnasium's own, untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from .channels import channels_from_model
from .physics_state import full_physics_state
from .errors import SimError

__all__ = ["ENVIRONMENTS", "LocomotionTask", "StateEnv", "make_env", "UnknownEnvironmentError",
           "NonFiniteStateError", "check_state"]


class UnknownEnvironmentError(SimError):
    """Raised for an environment name WorldScape does not know."""


class NonFiniteStateError(SimError):
    """Raised when a state vector holds NaN or infinite values."""


# short name -> Gymnasium id. Held out of pretraining later (seed 003, section 5).
ENVIRONMENTS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


@dataclasses.dataclass(frozen=True)
class LocomotionTask:
    """Gymnasium's locomotion reward, as numbers the MPPI cost can use.

    The per-step reward (Gymnasium Hopper/Walker2d v5; seed 003 eqs. 17-20 and 24-27) is
    ``forward_reward_weight * (x' - x) / dt + healthy_reward * healthy(s') -
    ctrl_cost_weight * |a|^2``, and the episode terminates once ``s'`` is unhealthy.

    Attributes:
        dt: control period in seconds (``timestep * frame_skip``).
        x_index, z_index, angle_index: indices in the state vector of root x (m), root z (m)
            and the torso pitch (rad).
        healthy_z_range, healthy_angle_range: open intervals of a healthy z and pitch.
        healthy_state_range: open interval every entry of ``state[2:]`` must stay in
            (Hopper only; ``None`` for Walker2d).
    """

    dt: float
    forward_reward_weight: float
    ctrl_cost_weight: float
    healthy_reward: float
    x_index: int
    z_index: int
    angle_index: int
    healthy_z_range: tuple[float, float]
    healthy_angle_range: tuple[float, float]
    healthy_state_range: tuple[float, float] | None = None

    def is_healthy(self, state: np.ndarray) -> bool:
        """Gymnasium's health check on a full state ``(nq + nv,)``."""
        z, angle = state[self.z_index], state[self.angle_index]
        ok = (self.healthy_z_range[0] < z < self.healthy_z_range[1]
              and self.healthy_angle_range[0] < angle < self.healthy_angle_range[1])
        if self.healthy_state_range is not None:
            rest = state[2:]
            ok = ok and bool(np.all((self.healthy_state_range[0] < rest) & (rest < self.healthy_state_range[1])))
        return bool(ok)

    def reward(self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray) -> float:
        """Gymnasium's per-step reward for one transition (used to label datasets)."""
        fwd = self.forward_reward_weight * (next_state[self.x_index] - state[self.x_index]) / self.dt
        return float(fwd + self.healthy_reward * self.is_healthy(next_state)
                     - self.ctrl_cost_weight * float(np.sum(np.square(action))))


def check_state(state: np.ndarray, nstate: int, what: str = "state") -> np.ndarray:
    """Validate a state vector before it reaches a planner.

    Returns:
        the state as a float64 array of shape ``(nstate,)``.

    Raises:
        ValueError: wrong shape.
        NonFiniteStateError: NaN or infinite entries (their channel indices are named).
    """
    s = np.asarray(state, dtype=np.float64)
    if s.shape != (nstate,):
        raise ValueError(f"{what} has shape {s.shape}, expected ({nstate},)")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise NonFiniteStateError(f"{what} holds non-finite values at channels {bad.tolist()}: "
                                  f"{s[bad].tolist()}")
    return s


class StateEnv(gym.Wrapper):
    """A Gymnasium MuJoCo locomotion environment observing the full state ``[qpos, qvel]``.

    ``reset`` and ``step`` return the state of shape ``(nq + nv,)`` as the observation;
    reward, ``terminated``, ``truncated`` and ``info`` are Gymnasium's. The original
    observation is kept in ``info["gym_obs"]``.

    Attributes:
        name: WorldScape short name (``"hopper"``, ``"walker2d"``).
        state_channels, action_channels: per-channel metadata (:class:`~ws_sim.channels.Channel`).
        task: the reward definition as a :class:`LocomotionTask`.
    """

    def __init__(self, env: gym.Env, name: str):
        super().__init__(env)
        self.name = name
        u = env.unwrapped
        self.model: mujoco.MjModel = u.model
        self.data: mujoco.MjData = u.data
        self.frame_skip: int = int(u.frame_skip)
        self.state_channels, self.action_channels = channels_from_model(self.model)
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.nq + self.nv,), np.float64)
        names = [c.name for c in self.state_channels]
        state_range = getattr(u, "_healthy_state_range", None)
        self.task = LocomotionTask(
            dt=float(u.dt),
            forward_reward_weight=float(u._forward_reward_weight),
            ctrl_cost_weight=float(u._ctrl_cost_weight),
            healthy_reward=float(u._healthy_reward),
            x_index=names.index("qpos/rootx"),
            z_index=names.index("qpos/rootz"),
            angle_index=names.index("qpos/rooty"),
            healthy_z_range=tuple(float(v) for v in u._healthy_z_range),
            healthy_angle_range=tuple(float(v) for v in u._healthy_angle_range),
            healthy_state_range=None if state_range is None else tuple(float(v) for v in state_range),
        )

    @property
    def dt(self) -> float:
        """Control period in seconds."""
        return self.task.dt

    @property
    def state(self) -> np.ndarray:
        """The current full state ``[qpos, qvel]``, shape ``(nq + nv,)``."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def physics_state(self) -> np.ndarray:
        """MuJoCo's full physics state (``mjSTATE_FULLPHYSICS``) for exact oracle rollouts."""
        return full_physics_state(self.model, self.data)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        info["gym_obs"] = obs
        return self.state, info

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.nu,):
            raise ValueError(f"action has shape {a.shape}, expected ({self.nu},)")
        if not np.all(np.isfinite(a)):
            raise NonFiniteStateError(f"action holds non-finite values: {a.tolist()}")
        obs, reward, terminated, truncated, info = self.env.step(a)
        info["gym_obs"] = obs
        return self.state, float(reward), bool(terminated), bool(truncated), info


def make_env(name: str, *, render: bool = False, width: int = 480, height: int = 360,
             max_episode_steps: int | None = None, terminate_when_unhealthy: bool = True) -> StateEnv:
    """Create a WorldScape environment by short name.

    Args:
        name: one of :data:`ENVIRONMENTS` (``"hopper"``, ``"walker2d"``), ``"go1"``
            (:class:`ws_sim.go1_env.Go1WalkEnv`, 1000 steps of 0.02 s by default) or
            ``"piper"`` (:class:`ws_sim.piper_env.PiperReachEnv`, 500 steps of 0.02 s), or
            ``"piper_<task>"`` (:class:`ws_sim.piper_tasks.PiperManipEnv`: ``piper_pick_place``,
            ``piper_push``, ``piper_stack``; dict observations, for the policy); the
            Gymnasium id (``"Hopper-v5"``, ``"ws/Go1Walk-v0"``, ``"ws/PiperReach-v0"``) is
            accepted too.
        render: create it with ``render_mode="rgb_array"`` (set ``MUJOCO_GL=osmesa`` on a
            machine without a display).
        width, height: rendered frame size in pixels.
        max_episode_steps: truncation length (Gymnasium's default, 1000, when ``None``).
        terminate_when_unhealthy: Hopper and Walker2d only: ``False`` runs an episode to its step
            limit after a fall (Gymnasium's option of the same name; a fallen robot still earns
            its forward and control reward, not the healthy bonus). Seed 003's code plans this way
            with a world model, so its Table 3 figures include reward after a fall.

    Raises:
        UnknownEnvironmentError: the name is not a WorldScape environment.
        ValueError: ``terminate_when_unhealthy=False`` for an environment other than Hopper and
            Walker2d.
    """
    key = name.lower()
    if not terminate_when_unhealthy and key not in ("hopper", "walker2d", "hopper-v5", "walker2d-v5"):
        raise ValueError(f"terminate_when_unhealthy=False is for Hopper and Walker2d, not {name!r}")
    if key.startswith("piper_"):
        from .piper_tasks import TASKS, PiperManipEnv

        task = key.removeprefix("piper_")
        if task not in TASKS:
            raise UnknownEnvironmentError(f"unknown PiPER task {task!r}; choose one of {[f'piper_{t}' for t in TASKS]}")
        return PiperManipEnv(task, render_mode="rgb_array" if render else None, width=width, height=height,
                             max_episode_steps=max_episode_steps)
    if key in ("piper", "ws/piperreach-v0"):
        from .piper_env import PiperReachEnv

        return PiperReachEnv(render_mode="rgb_array" if render else None, width=width, height=height,
                             max_episode_steps=500 if max_episode_steps is None else int(max_episode_steps))
    if key in ("go1", "ws/go1walk-v0"):
        from .go1_env import Go1WalkEnv

        return Go1WalkEnv(render_mode="rgb_array" if render else None, width=width, height=height,
                          max_episode_steps=1000 if max_episode_steps is None else int(max_episode_steps))
    by_id = {v.lower(): k for k, v in ENVIRONMENTS.items()}
    key = by_id.get(key, key)
    if key not in ENVIRONMENTS:
        raise UnknownEnvironmentError(
            f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS) + ['go1', 'piper']}")
    kwargs: dict[str, Any] = {}
    if render:
        kwargs.update(render_mode="rgb_array", width=width, height=height)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if not terminate_when_unhealthy:
        kwargs["terminate_when_unhealthy"] = False
    return StateEnv(gym.make(ENVIRONMENTS[key], **kwargs), key)

