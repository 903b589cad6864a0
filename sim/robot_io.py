"""How a MuJoCo robot's state and commands map to joint readings (for bridges and controllers).

A planner state is MuJoCo's ``[qpos, qvel]``. On the wire (ROS 2 ``joint_states``/``odom``,
or a robot SDK) it arrives as named 1-dof joint readings plus, for a floating-base robot,
the base pose and twist. :class:`RobotIO` holds the mapping both ways, read from the
``MjModel``, so the simulator bridge and the controller agree by construction.

Base vector (floating base only), 13 values in MuJoCo's convention: position ``(3,)`` m in
the world frame, quaternion ``(w, x, y, z)``, linear velocity ``(3,)`` m/s in the world frame,
angular velocity ``(3,)`` rad/s in the body frame (the free joint's ``qpos[0:7]``, ``qvel[0:6]``).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

__all__ = ["RobotIO"]

BASE_DIM = 13


@dataclasses.dataclass(frozen=True)
class RobotIO:
    """The joint-level interface of one MuJoCo model.

    Attributes:
        joint_names: every hinge/slide joint, in ``qpos`` order.
        qpos_index, qvel_index: ``(n,)`` addresses of those joints in ``qpos`` / ``qvel``.
        floating_base: the model's first joint is a free joint (state carries the base vector).
        command_joints: the joints the actuators drive, in actuator (``ctrl``) order.
        nq, nv: sizes of ``qpos`` and ``qvel``.
    """

    joint_names: tuple[str, ...]
    qpos_index: np.ndarray
    qvel_index: np.ndarray
    floating_base: bool
    command_joints: tuple[str, ...]
    nq: int
    nv: int

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> "RobotIO":
        """Read the mapping from an ``MjModel``.

        Free joints of other bodies than the robot (objects on a table) are not robot joints:
        they are left out of the readings, and :meth:`join` leaves their state at zero.

        Raises:
            ValueError: a free joint inside the robot other than at its root, a ball joint, or
                an actuator that does not drive a named 1-dof joint.
        """
        names, qpos_idx, qvel_idx = [], [], []
        floating = False
        for j in range(model.njnt):
            kind = model.jnt_type[j]
            if kind == mujoco.mjtJoint.mjJNT_FREE:
                if j == 0 and model.jnt_qposadr[j] == 0 and model.jnt_bodyid[j] == 1:
                    floating = True  # the robot's own base
                elif model.body_rootid[model.jnt_bodyid[j]] == model.body_rootid[1] and model.jnt_bodyid[j] != 1:
                    raise ValueError("only a free joint at the robot's root (qpos[0:7]) is supported")
                continue  # a free object in the scene (a cube on the table): not part of the robot's reading
            if kind == mujoco.mjtJoint.mjJNT_BALL:
                raise ValueError("ball joints have no 1-dof joint reading")
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
            if not name:
                raise ValueError(f"joint {j} has no name")
            names.append(name)
            qpos_idx.append(int(model.jnt_qposadr[j]))
            qvel_idx.append(int(model.jnt_dofadr[j]))
        cmd = []
        for a in range(model.nu):
            if model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
                raise ValueError(f"actuator {a} does not drive a joint")
            cmd.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(model.actuator_trnid[a, 0])))
        return cls(tuple(names), np.array(qpos_idx), np.array(qvel_idx), floating, tuple(cmd), model.nq, model.nv)

    @property
    def base_dim(self) -> int:
        """13 for a floating base, else 0."""
        return BASE_DIM if self.floating_base else 0

    def split(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``[qpos, qvel]`` -> ``(q (n,), qd (n,), base (13,) or None)``."""
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (self.nq + self.nv,):
            raise ValueError(f"state has shape {s.shape}, expected ({self.nq + self.nv},)")
        qpos, qvel = s[:self.nq], s[self.nq:]
        base = np.concatenate([qpos[:7], qvel[:6]]) if self.floating_base else None
        return qpos[self.qpos_index].copy(), qvel[self.qvel_index].copy(), base

    def join(self, q: np.ndarray, qd: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        """``(q, qd, base)`` in :attr:`joint_names` order -> ``[qpos, qvel]``.

        Raises:
            ValueError: wrong sizes, or a missing base for a floating-base robot.
        """
        q, qd = np.asarray(q, dtype=np.float64), np.asarray(qd, dtype=np.float64)
        n = len(self.joint_names)
        if q.shape != (n,) or qd.shape != (n,):
            raise ValueError(f"expected {n} joint positions and velocities, got {q.shape} and {qd.shape}")
        qpos, qvel = np.zeros(self.nq), np.zeros(self.nv)
        if self.floating_base:
            if base is None or np.shape(base) != (BASE_DIM,):
                raise ValueError(f"a floating-base robot needs a base vector of {BASE_DIM} values")
            b = np.asarray(base, dtype=np.float64)
            qpos[:7], qvel[:6] = b[:7], b[7:]
        qpos[self.qpos_index] = q
        qvel[self.qvel_index] = qd
        return np.concatenate([qpos, qvel])
