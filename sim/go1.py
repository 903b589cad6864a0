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
