"""``ws/Go1Walk-v0``: the Go1 walks straight on flat ground through planar waypoints.

Seed 003 App. D.3.3 (after its reference [3]). Observation: the full state
``[qpos (19), qvel (18)]`` (see :mod:`ws_sim.go1`). Action: 12 joint position targets in
rad, clipped to the joint ranges, held for ``frame_skip`` physics steps (0.002 s each; the
default 10 gives a 0.02 s control step). Reward: the goal-directed forward progress of
eqs. (32)-(35) in metres; the episode's sum is eq. (36). Waypoints lie every
``waypoint_spacing`` metres along +x; the current one advances once the base is within
``goal_radius``. ``info["gait_reference"]`` gives the trot reference for the next step.
The episode terminates when the trunk falls below 0.15 m or tilts more than 60 degrees.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import mujoco
import numpy as np

from .channels import channels_from_model
from .physics_state import full_physics_state
from .go1 import HOME_JOINTS, TrotGait, load_go1, progress_reward

__all__ = ["Go1WalkEnv", "Go1Task"]


@dataclasses.dataclass
class Go1Task:
    """What planners, collectors and reports need to know of the task.

    Attributes:
        dt: control step in seconds.
        goal_fn: returns the current planar goal ``(2,)``.
        progress_eps: the epsilon of eq. (33), metres.
        x_index: where the forward coordinate sits in the state.
    """

    dt: float
    goal_fn: object = None
    progress_eps: float = 0.1
    x_index: int = 0

    @staticmethod
    def is_healthy(state: np.ndarray) -> bool:
        """Not fallen: trunk at least 0.15 m high and tilted less than 60 degrees."""
        x, y = state[4], state[5]
        return bool(state[2] >= 0.15 and 1.0 - 2.0 * (x * x + y * y) >= 0.5)

    def reward(self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray) -> float:
        """Eq. (35) toward the current goal (labels collected transitions)."""
        return progress_reward(state[:2], next_state[:2], self.goal_fn(), self.progress_eps)


class Go1WalkEnv(gym.Env):
    """Go1 straight walking through waypoints (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, frame_skip: int = 10, waypoint_spacing: float = 1.0, n_waypoints: int = 30,
                 goal_radius: float = 0.2, progress_eps: float = 0.1, gait: TrotGait | None = None,
                 render_mode: str | None = None, width: int = 480, height: int = 360, reset_noise: float = 0.02,
                 max_episode_steps: int | None = None):
        self.model, self.data = load_go1()
        self.max_episode_steps = max_episode_steps
        self._steps = 0
        self.frame_skip = int(frame_skip)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.waypoints = np.stack([np.arange(1, n_waypoints + 1) * waypoint_spacing, np.zeros(n_waypoints)], axis=1)
        self.goal_radius, self.progress_eps, self.reset_noise = goal_radius, progress_eps, reset_noise
        self.gait = gait or TrotGait()
        self.state_channels, self.action_channels = channels_from_model(self.model)
        nx = self.model.nq + self.model.nv
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (nx,), np.float64)
        lo, hi = self.model.actuator_ctrlrange.T
        self.action_space = gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), (12,), np.float32)
        self.render_mode = render_mode
        self._renderer = mujoco.Renderer(self.model, height, width) if render_mode == "rgb_array" else None
        self.goal_index = 0
        self.name = "go1"
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.task = Go1Task(dt=self.dt, goal_fn=lambda: self.goal, progress_eps=progress_eps)
        #: what "doing nothing" means for a position-controlled robot: hold the standing pose
        self.neutral_action = HOME_JOINTS.copy()

    @property
    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    @property
    def goal(self) -> np.ndarray:
        return self.waypoints[min(self.goal_index, len(self.waypoints) - 1)]

    def update_goal(self, base_xy: np.ndarray) -> None:
        """Advance to the next waypoint once the base is within ``goal_radius`` of the current one."""
        if np.linalg.norm(np.asarray(base_xy) - self.goal) < self.goal_radius and self.goal_index < len(self.waypoints):
            self.goal_index += 1

    def _info(self) -> dict:
        return {"goal": self.goal.copy(), "goal_index": self.goal_index, "time": float(self.data.time),
                "gait_reference": self.gait.reference(self.data.time + self.dt)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetDataKeyframe(self.model, self.data, self.model.key("home").id)
        self.data.qpos[7:] += self.np_random.uniform(-self.reset_noise, self.reset_noise, 12)
        self.data.ctrl[:] = HOME_JOINTS
        mujoco.mj_forward(self.model, self.data)
        self.goal_index = 0
        self._steps = 0
        return self.state, self._info()

    def physics_state(self) -> np.ndarray:
        """MuJoCo's full physics state (``mjSTATE_FULLPHYSICS``) for exact oracle rollouts."""
        return full_physics_state(self.model, self.data)

    def fallen(self) -> bool:
        """Trunk below 0.15 m, or its up axis more than 60 degrees from vertical."""
        return not Go1Task.is_healthy(self.state)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (12,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 12 finite joint targets, got shape {a.shape}")
        ctrl = np.clip(a, self.model.actuator_ctrlrange[:, 0], self.model.actuator_ctrlrange[:, 1])
        p_before = self.data.qpos[:2].copy()
        goal = self.goal.copy()
        self._advance(ctrl)
        reward = progress_reward(p_before, self.data.qpos[:2], goal, self.progress_eps)
        self.update_goal(self.data.qpos[:2])
        terminated = self.fallen()
        self._steps += 1
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        return self.state, reward, terminated, bool(truncated), self._info()

    def _advance(self, ctrl: np.ndarray) -> None:
        """Apply ``ctrl`` and step the physics over one control step (a subclass may delay it)."""
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)

    def render(self):
        if self._renderer is None:
            return None
        self._renderer.update_scene(self.data, camera="tracking")
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


gym.register(id="ws/Go1Walk-v0", entry_point="ws_sim.go1_env:Go1WalkEnv", max_episode_steps=2000)
