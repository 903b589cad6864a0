"""The Unitree Go1 in MuJoCo (issue 4, seed 003 App. D.3.3): model loading and its standing pose.

The MJCF (``sim/assets/go1.xml``) is written in this project from the robot's published
figures; each figure names its source in the file. State as App. D.3.3: ``qpos`` = base
position (m), orientation quaternion (w, x, y, z), 12 joint angles (rad); ``qvel`` = base
linear velocity (m/s, world frame), angular velocity (rad/s, body frame), 12 joint
velocities (rad/s). Joints and actuators are ordered FR, FL, RR, RL x hip (abduction),
thigh, calf.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import mujoco
import numpy as np

__all__ = ["GO1_XML", "LEGS", "JOINTS", "load_go1", "HOME_JOINTS", "TORQUE_LIMITS"]

LEGS = ("FR", "FL", "RR", "RL")
JOINTS = tuple(f"{leg}_{part}_joint" for leg in LEGS for part in ("hip", "thigh", "calf"))
#: N·m per joint, hip / thigh / calf (issue 4: 23.7 N·m hip and thigh, 35.55 N·m knee)
TORQUE_LIMITS = np.tile([23.7, 23.7, 35.55], 4)
#: the standing pose of the ``home`` keyframe, rad
HOME_JOINTS = np.tile([0.0, 0.8, -1.6], 4)


def _xml_path() -> Path:
    return Path(str(resources.files("ws_sim") / "assets" / "go1.xml"))


GO1_XML = _xml_path()


def load_go1() -> tuple[mujoco.MjModel, mujoco.MjData]:
    """Compile the Go1 model and return it with data reset to the ``home`` keyframe."""
    model = mujoco.MjModel.from_xml_path(str(GO1_XML))
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    mujoco.mj_forward(model, data)
    return model, data


class TrotGait:
    """A trotting gait reference: per-joint position targets over time.

    Diagonal leg pairs (FR+RL, FL+RR) alternate in antiphase with period ``period``; each
    leg swings for half the period. In swing the foot lifts (thigh +0.25 ``lift``, knee
    -0.5 ``lift`` rad raise it about 8.5 cm) and the thigh sweeps forward; in stance it sweeps
    back, which moves the body forward. This is the kind of scheduler-made joint reference
    of seed 003 App. D.3.3 and its reference [3] (Alvarez-Padilla et al., ICRA 2025);
    the shape and numbers are chosen here.

    Args:
        period: gait cycle in seconds.
        stride: thigh sweep amplitude in rad (0 marks time in place).
        lift: swing height factor in [0, 1].
    """

    #: phase offsets in cycles: FR, FL, RR, RL (diagonals together)
    OFFSETS = np.array([0.0, 0.5, 0.5, 0.0])

    def __init__(self, period: float = 0.4, stride: float = 0.15, lift: float = 1.0):
        if period <= 0:
            raise ValueError(f"gait period must be positive, got {period}")
        self.period, self.stride, self.lift = float(period), float(stride), float(lift)

    def phase(self, t: float | np.ndarray) -> np.ndarray:
        """Per-leg phase in [0, 1): ``(..., 4)``; below 0.5 is swing."""
        return np.mod(np.asarray(t, dtype=np.float64)[..., None] / self.period + self.OFFSETS, 1.0)

    def swing(self, t: float | np.ndarray) -> np.ndarray:
        """Per-leg swing flag ``(..., 4)``."""
        return self.phase(t) < 0.5

    def reference(self, t: float | np.ndarray) -> np.ndarray:
        """Joint position targets ``(..., 12)`` in rad at time(s) ``t`` (seconds)."""
        ph = self.phase(t)
        in_swing = ph < 0.5
        s = np.where(in_swing, ph * 2.0, (ph - 0.5) * 2.0)  # progress within the half cycle
        sweep = np.where(in_swing, self.stride * np.cos(np.pi * s), -self.stride * np.cos(np.pi * s))
        up = np.where(in_swing, np.sin(np.pi * s), 0.0) * self.lift
        ref = np.broadcast_to(HOME_JOINTS, ph.shape[:-1] + (12,)).copy()
        ref[..., 1::3] += sweep + 0.25 * up
        ref[..., 2::3] -= 0.5 * up
        return ref


def progress_reward(p_before: np.ndarray, p_after: np.ndarray, goal: np.ndarray, eps: float = 0.1) -> float:
    """Goal-directed forward progress of one step (seed 003 eqs. 32-35).

    ``d = g - p_before``; ``d_hat = d / |d|`` when ``|d| > eps`` else 0; reward
    ``= (p_after - p_before) . d_hat`` in metres, planar (x, y) positions.
    """
    d = np.asarray(goal, dtype=np.float64)[:2] - np.asarray(p_before, dtype=np.float64)[:2]
    n = float(np.linalg.norm(d))
    if n <= eps:
        return 0.0
    return float(np.dot(np.asarray(p_after, dtype=np.float64)[:2] - np.asarray(p_before, dtype=np.float64)[:2], d / n))
