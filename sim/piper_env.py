"""``ws/PiperReach-v0``: the PiPER moves its tool to a goal point above the table.

The arm-only task the trajectory side (MPPI, ROS graphs, bridges) runs on the PiPER; the
manipulation tasks of the policy build on the same scene. Observation: the full state
``[qpos (8), qvel (8)]`` (joints 1-6 in rad, fingers in m; see :mod:`ws_sim.piper`). Action:
7 position targets (joints 1-6 in rad, the finger in m), clipped to the actuators' ranges,
held for ``frame_skip`` physics steps of 2 ms (default 10: a 0.02 s control step). Reward: the
negative distance from the ``tcp`` site to the goal in metres; ``info["success"]`` once it is
within ``success_radius``. The goal is drawn at reset from a box of points the tool can
reach (checked by inverse kinematics), or set with :meth:`PiperReachEnv.set_goal`; it is
drawn as a translucent green sphere (no collision). The episode never terminates early.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import mujoco
import numpy as np

from .channels import channels_from_model
from .physics_state import full_physics_state
from .piper import READY_JOINTS, IKError, load_piper, solve_ik

__all__ = ["PiperReachEnv", "PiperReachTask", "GOAL_BOX"]

#: (low, high) corners of the goal box, m (table top at z = 0, the arm's base at the origin)
GOAL_BOX = (np.array([0.15, -0.25, 0.05]), np.array([0.45, 0.25, 0.30]))


@dataclasses.dataclass
class PiperReachTask:
    """What planners and reports need to know of the task.

    Attributes:
        dt: control step, s.
        goal_fn: returns the goal point ``(3,)``, m.
        joint_goal_fn: returns arm joint angles ``(6,)`` that put the tool on the goal (by IK).
        success_radius: m.
    """

    dt: float
    goal_fn: object = None
    joint_goal_fn: object = None
    success_radius: float = 0.02

    @staticmethod
    def is_healthy(state: np.ndarray) -> bool:
        """An arm on a table does not fall: always True (the safety layer guards its limits)."""
        return True


class PiperReachEnv(gym.Env):
    """PiPER reaching (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, frame_skip: int = 10, success_radius: float = 0.02, reset_noise: float = 0.02,
                 render_mode: str | None = None, width: int = 480, height: int = 360, camera: str = "scene",
                 max_episode_steps: int | None = None):
        self.model, self.data = load_piper()
        self.frame_skip = int(frame_skip)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.max_episode_steps = max_episode_steps
        self.reset_noise = float(reset_noise)
        self.name = "piper"
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.state_channels, self.action_channels = channels_from_model(self.model)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.nq + self.nv,), np.float64)
        lo, hi = self.model.actuator_ctrlrange.T
        self.action_space = gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), (self.nu,), np.float32)
        self._goal = np.array([0.3, 0.0, 0.15])
        self._joint_goal = READY_JOINTS.copy()
        self.task = PiperReachTask(dt=self.dt, goal_fn=lambda: self._goal, joint_goal_fn=lambda: self._joint_goal,
                                   success_radius=success_radius)
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._tcp = self.model.site("tcp").id
        self.render_mode, self.camera = render_mode, camera
        self._renderer = mujoco.Renderer(self.model, height, width) if render_mode == "rgb_array" else None
        self._steps = 0
        #: what "doing nothing" means for a position-servo arm: hold the ready pose, gripper open
        self.neutral_action = np.r_[READY_JOINTS, 0.035]

    # --- goal ---------------------------------------------------------------------------------
    @property
    def goal(self) -> np.ndarray:
        return self._goal

    def set_goal(self, point) -> None:
        """Put the goal at ``point`` ``(3,)`` m (world frame, table top at z = 0).

        Raises:
            ws_sim.piper.IKError: the tool cannot reach it.
            ValueError: not 3 finite numbers.
        """
        p = np.asarray(point, dtype=np.float64)
        q = solve_ik(self.model, p, q0=self.data.qpos[:6].copy())
        self._goal, self._joint_goal = p.copy(), q
        self.data.mocap_pos[self._goal_mocap] = p

    def update_goal(self, _state=None) -> None:
        """The goal does not move by itself (the controller node calls this for every robot)."""

    @property
    def tcp(self) -> np.ndarray:
        """The tool position now, m."""
        return self.data.site_xpos[self._tcp].copy()

    # --- gym ----------------------------------------------------------------------------------
    @property
    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def physics_state(self) -> np.ndarray:
        """MuJoCo's full physics state (``mjSTATE_FULLPHYSICS``) for exact oracle rollouts."""
        return full_physics_state(self.model, self.data)

    def _info(self) -> dict:
        dist = float(np.linalg.norm(self.tcp - self._goal))
        return {"goal": self._goal.copy(), "tcp": self.tcp, "distance": dist,
                "success": dist < self.task.success_radius, "time": float(self.data.time)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:6] = READY_JOINTS + self.np_random.uniform(-self.reset_noise, self.reset_noise, 6)
        self.data.qpos[6:8] = (0.035, -0.035)
        self.data.ctrl[:] = self.neutral_action
        mujoco.mj_forward(self.model, self.data)
        goal = None if options is None else options.get("goal")
        if goal is not None:
            self.set_goal(goal)
        else:
            for _ in range(100):
                try:
                    self.set_goal(self.np_random.uniform(*GOAL_BOX))
                    break
                except IKError:
                    continue
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        return self.state, self._info()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.nu,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {self.nu} finite position targets, got shape {a.shape}")
        self.data.ctrl[:] = np.clip(a, self.model.actuator_ctrlrange[:, 0], self.model.actuator_ctrlrange[:, 1])
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        info = self._info()
        self._steps += 1
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        return self.state, -info["distance"], False, bool(truncated), info

    def render(self):
        if self._renderer is None:
            return None
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


gym.register(id="ws/PiperReach-v0", entry_point="ws_sim.piper_env:PiperReachEnv", max_episode_steps=500)
