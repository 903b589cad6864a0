"""Simulation (installed as ``ws_sim``), the innermost core layer (imports no other WorldScape
package, no ROS): MuJoCo/Gymnasium environments (``envs``, ``go1_env``, ``piper_env``,
``piper_tasks``) and their MJCF models (``go1``, ``piper``, ``assets/``), channel metadata
(``channels``), MuJoCo's full physics state (``physics_state``) and the oracle dynamics
(``oracle``), trajectory datasets and the pretraining corpus (``dataset``, ``corpus``),
scripted-expert PiPER demonstrations (``demos``), the joint-level robot interface (``robot_io``)
and the safety layer every controller and bridge shares (``safety``)."""

from . import go1_env  # noqa: E402,F401  (registers the Gymnasium id ws/Go1Walk-v0)
from . import piper_env  # noqa: E402,F401  (registers the Gymnasium id ws/PiperReach-v0)
from . import piper_tasks  # noqa: E402,F401  (registers the Gymnasium id ws/PiperManip-v0)
