"""The sim-to-real gap as the evaluation simulator's randomised physics (the Go1).

What differs between the MJCF and a real Go1, drawn per episode (ranges from the hardware issue;
seed 003 App. G deploys on a physical Go1 without listing them): actuator latency, the PD gains
of the position servos, joint damping and friction, the trunk's mass and centre of mass, and the
ground's friction. :class:`RandomisedGo1Env` is a ``Go1WalkEnv`` whose model carries one draw (its
``nominal_model`` keeps the MJCF's values, for a planner that knows only those) and whose
commands reach the motors ``latency`` later. IMU bias is the estimator's concern
(:class:`ws_sim.estimator.ImuModel`).
"""

from __future__ import annotations

import copy
import dataclasses

import mujoco
import numpy as np

from .go1_env import Go1WalkEnv

__all__ = ["Go1Randomisation", "RandomisedGo1Env"]


@dataclasses.dataclass
class Go1Randomisation:
    """Ranges (uniform) of the randomised physics; ``scale`` 0 gives the nominal model, 1 these ranges.

    Attributes:
        latency_s: command latency, s (rounded to physics steps; at most one control step).
        pd_gain_scale: factor on each servo's stiffness kp and damping kv (drawn per joint and gain).
        joint_damping: N m s / rad per joint (the MJCF: 0.5).
        joint_friction: dry friction, N m per joint (the MJCF: none).
        trunk_mass_kg: added to the trunk's mass.
        trunk_com_m: shift of the trunk's centre of mass per axis.
        ground_friction: sliding friction coefficient of the floor and the feet.
    """

    latency_s: tuple[float, float] = (0.0, 0.02)
    pd_gain_scale: tuple[float, float] = (0.8, 1.2)
    joint_damping: tuple[float, float] = (0.2, 1.0)
    joint_friction: tuple[float, float] = (0.0, 0.3)
    trunk_mass_kg: tuple[float, float] = (-1.0, 1.0)
    trunk_com_m: float = 0.02
    ground_friction: tuple[float, float] = (0.4, 1.0)

    def sample(self, rng: np.random.Generator, n_joints: int = 12) -> dict:
        """One draw: ``{"latency_s", "kp_scale" (n,), "kv_scale" (n,), "joint_damping" (n,),
        "joint_friction" (n,), "trunk_mass_kg", "trunk_com_m" (3,), "ground_friction"}``."""
        u = rng.uniform
        return {"latency_s": float(u(*self.latency_s)),
                "kp_scale": u(*self.pd_gain_scale, n_joints), "kv_scale": u(*self.pd_gain_scale, n_joints),
                "joint_damping": u(*self.joint_damping, n_joints), "joint_friction": u(*self.joint_friction, n_joints),
                "trunk_mass_kg": float(u(*self.trunk_mass_kg)), "trunk_com_m": u(-self.trunk_com_m, self.trunk_com_m, 3),
                "ground_friction": float(u(*self.ground_friction))}


class RandomisedGo1Env(Go1WalkEnv):
    """A ``Go1WalkEnv`` on one draw of :class:`Go1Randomisation` (see the module docstring).

    Args:
        draw: a :meth:`Go1Randomisation.sample` (None: the nominal model, no latency).
        **kwargs: ``Go1WalkEnv``'s.

    Raises:
        ValueError: a latency longer than one control step, or a non-positive mass or friction.
    """

    def __init__(self, draw: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.nominal_model = copy.copy(self.model)  # MjModel copies are deep
        self.draw = draw
        self.latency_steps = 0
        if draw is not None:
            self._apply(draw)
        self._prev_ctrl = self.data.ctrl.copy()

    def _apply(self, d: dict) -> None:
        m = self.model
        self.latency_steps = int(round(d["latency_s"] / m.opt.timestep))
        if not 0 <= self.latency_steps <= self.frame_skip:
            raise ValueError(f"latency {d['latency_s']} s is longer than a control step ({self.dt} s)")
        m.actuator_gainprm[:, 0] *= d["kp_scale"]
        m.actuator_biasprm[:, 1] *= d["kp_scale"]
        m.actuator_biasprm[:, 2] *= d["kv_scale"]
        dofs = m.jnt_dofadr[m.actuator_trnid[:, 0]]
        m.dof_damping[dofs] = d["joint_damping"]
        m.dof_frictionloss[dofs] = d["joint_friction"]
        trunk = m.body("trunk").id
        m.body_mass[trunk] += d["trunk_mass_kg"]
        m.body_ipos[trunk] += d["trunk_com_m"]
        if m.body_mass[trunk] <= 0 or d["ground_friction"] <= 0:
            raise ValueError("the draw gives a non-positive trunk mass or ground friction")
        for name in ("floor", "FR_foot", "FL_foot", "RR_foot", "RL_foot"):
            m.geom_friction[m.geom(name).id, 0] = d["ground_friction"]
        mujoco.mj_setConst(m, self.data)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        out = super().reset(seed=seed, options=options)
        self._prev_ctrl = self.data.ctrl.copy()
        return out

    def _advance(self, ctrl: np.ndarray) -> None:
        """The previous command for ``latency_steps`` physics steps, then the new one."""
        if self.latency_steps:
            self.data.ctrl[:] = self._prev_ctrl
            mujoco.mj_step(self.model, self.data, nstep=self.latency_steps)
        self.data.ctrl[:] = ctrl
        if self.frame_skip - self.latency_steps:
            mujoco.mj_step(self.model, self.data, nstep=self.frame_skip - self.latency_steps)
        self._prev_ctrl = ctrl.copy()
