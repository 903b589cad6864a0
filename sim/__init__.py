"""Simulation (installed as ``ws_sim``): MuJoCo/Gymnasium environments, channel metadata,
the MuJoCo oracle dynamics and trajectory datasets (core layer, no ROS)."""

from . import go1_env  # noqa: E402,F401  (registers the Gymnasium id ws/Go1Walk-v0)
from . import piper_env  # noqa: E402,F401  (registers the Gymnasium id ws/PiperReach-v0)
from . import piper_tasks  # noqa: E402,F401  (registers the Gymnasium id ws/PiperManip-v0)
