"""The AgileX PiPER arm in MuJoCo (issue 7): loading, its poses, kinematics.

The MJCF (``sim/assets/piper.xml``; ``piper_scene.xml`` puts it on a table with cameras) is
written in this project from the arm's published figures, each with its source in the file.
Joints ``joint1``..``joint6`` (rad) and the fingers ``joint7`` (actuated, 0..0.035 m) and
``joint8`` (its mirror); actuators ``joint1``..``joint6`` and ``gripper`` are position servos,
so a command is 6 joint targets in rad plus one finger position in m (the gripper opening is
twice that, as the SDK counts it). The tool frame is the ``tcp`` site, z along the approach
direction between the fingertips.

Inverse kinematics (:func:`solve_ik`) uses `mink <https://github.com/kevinzakka/mink>`_, a
maintained MuJoCo IK library (issue 25): the tool position and, optionally, its approach axis
and finger yaw, within the joint ranges; for goals, scripted experts and Cartesian
teleoperation. It replaced the project's own damped least squares, which ``bench/bench_ik.py``
keeps as its baseline: on the same 200 goals both meet the callers' tolerances equally often,
mink at 0.8 to 1.7 times the time (about 1 ms a solve; docs/benchmarks.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import mujoco
import numpy as np

from .errors import SimError

__all__ = ["PIPER_XML", "PIPER_SCENE_XML", "ARM_JOINTS", "JOINTS", "ACTUATORS", "COMMAND_JOINTS", "FINGER_STROKE", "HOME_JOINTS",
           "READY_JOINTS", "load_piper", "tcp_pose", "solve_ik", "IKError"]

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 7))
#: every joint reading, in ``qpos`` order (the PiPER ROS driver's names)
JOINTS = ARM_JOINTS + ("joint7", "joint8")
ACTUATORS = ARM_JOINTS + ("gripper",)
#: the joint names of a ``joint_command`` (the ``gripper`` actuator drives ``joint7``)
COMMAND_JOINTS = ARM_JOINTS + ("joint7",)
#: one finger's travel, m (S2; the SDK's 0..0.07 m opening is both fingers)
FINGER_STROKE = 0.035
#: the arm raised, tool pointing forward (MuJoCo Menagerie's ``home`` keyframe), rad
HOME_JOINTS = np.array([0.0, 1.57, -1.3485, 0.0, 0.0, 0.0])
#: above the table, tool pointing straight down, fingers opening along world y: where tasks start
#: (:func:`solve_ik` for the tcp at (0.25, 0, 0.09) m, kept here so that resets need no solver).
#: Pointing straight down, the tcp reaches only up to about 0.09 m above the table (J5's
#: +-70 degrees and the 0.26 m from the wrist to the fingertips); higher, the tool tilts.
READY_JOINTS = np.array([0.0, 1.4866, -1.0835, 0.0, 1.1675, 1.5759])


def _asset(name: str) -> Path:
    return Path(str(resources.files("ws_sim") / "assets" / name))


PIPER_XML = _asset("piper.xml")
PIPER_SCENE_XML = _asset("piper_scene.xml")


class IKError(SimError):
    """Raised when inverse kinematics cannot reach a target within tolerance."""


def load_piper(xml: str | Path | None = None) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """Compile the PiPER scene (default: ``piper_scene.xml``) with data at its ``home`` keyframe."""
    model = mujoco.MjModel.from_xml_path(str(xml or PIPER_SCENE_XML))
    data = mujoco.MjData(model)
    key = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
    if key >= 0:
        mujoco.mj_resetDataKeyframe(model, data, key)
    mujoco.mj_forward(model, data)
    return model, data


def tcp_pose(model: mujoco.MjModel, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
    """The tool frame in the world after ``mj_forward``: position ``(3,)`` m and rotation ``(3, 3)``."""
    site = data.site("tcp")
    return site.xpos.copy(), site.xmat.reshape(3, 3).copy()


def check_ik_target(target_pos, approach=None, yaw=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate an IK goal: ``(target (3,) m, unit approach axis (3,) or None)``.

    Raises:
        ValueError: a non-finite or wrongly shaped target or axis, or ``yaw`` without ``approach``.
    """
    target = np.asarray(target_pos, dtype=np.float64)
    if target.shape != (3,) or not np.all(np.isfinite(target)):
        raise ValueError(f"target_pos must be 3 finite numbers, got {target_pos!r}")
    axis = None if approach is None else np.asarray(approach, dtype=np.float64)
    if axis is not None:
        if axis.shape != (3,) or not np.all(np.isfinite(axis)) or np.linalg.norm(axis) < 1e-9:
            raise ValueError(f"approach must be a non-zero 3-vector, got {approach!r}")
        axis = axis / np.linalg.norm(axis)
    if yaw is not None and axis is None:
        raise ValueError("yaw needs an approach axis")
    return target, axis


def solve_ik(model: mujoco.MjModel, target_pos, approach=None, q0=None, *, yaw: float | None = None,
             tol: float = 1e-3, max_iter: int = 200, damping: float = 1e-3,
             lock_at_limits: bool = False, best_effort: bool = False) -> np.ndarray:
    """Arm joint angles that put the ``tcp`` site at ``target_pos``.

    Solved with `mink <https://github.com/kevinzakka/mink>`_: each iteration is one of its
    differential-IK quadratic programs (the tasks' Jacobians, Levenberg-Marquardt ``damping``,
    the joint ranges as :class:`mink.ConfigurationLimit` constraints, solver DAQP), integrated
    over a unit step on a scratch configuration, until the residual is within ``tol``.

    Args:
        model: a PiPER model.
        target_pos: ``(3,)`` tool position in the world, m.
        approach: optional ``(3,)`` direction the tool's z axis should point along (e.g.
            ``(0, 0, -1)``: straight down); the error is the cross product of the two axes.
        q0: ``(6,)`` start (default :data:`READY_JOINTS`), clipped to the joint ranges.
        yaw: optional rotation of the fingers about the approach axis: the tool's y axis
            (the fingers' opening direction) is turned to ``(-sin yaw, cos yaw, 0)``
            projected off the approach axis (for top-down grasps; needs ``approach``).
        tol: position tolerance in m (orientation: the same number in rad).
        max_iter: iterations before giving up.
        damping: the Levenberg-Marquardt damping.
        lock_at_limits: kept for callers; the joint ranges are always constraints of the
            quadratic program, so a joint at a limit stays there while the others make up for it.
        best_effort: return the last iterate instead of raising when the tolerance is not met
            (the closest the solver got within the joint ranges; for teleoperation).

    Returns:
        ``(6,)`` joint angles in rad, within the joint ranges.

    Raises:
        IKError: the target is out of reach (residual above ``tol`` after ``max_iter``).
        ValueError: non-finite or wrongly shaped targets.
    """
    import mink

    target, axis = check_ik_target(target_pos, approach, yaw)
    want = None
    if yaw is not None:
        want = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        want -= axis * (want @ axis)
        want = want / np.linalg.norm(want) if np.linalg.norm(want) > 1e-6 else None
    jids = [model.joint(n).id for n in ARM_JOINTS]
    qadr = np.array([model.jnt_qposadr[j] for j in jids])
    lo, hi = model.jnt_range[jids].T
    qfull = model.qpos0.copy()
    qfull[qadr] = np.clip(np.array(READY_JOINTS if q0 is None else q0, dtype=np.float64), lo, hi)
    config = mink.Configuration(model, qfull)
    site = model.site("tcp").id
    # the tool's position; its z axis along the approach; its y axis (the fingers) along the yaw
    tasks = [mink.FrameTask("tcp", "site", position_cost=1.0, orientation_cost=0.0)]
    tasks[0].set_target(mink.SE3.from_translation(target))
    for local, world in (((0.0, 0.0, 1.0), axis), ((0.0, 1.0, 0.0), want)):
        if world is not None:
            tasks.append(mink.AxisAlignTask("tcp", "site", axis=local, cost=1.0))
            tasks[-1].set_target(world)
    limits = [_configuration_limit(model)]
    err = np.inf
    for _ in range(max_iter + 1):
        data = config.data
        pos, rot = data.site_xpos[site], data.site_xmat[site].reshape(3, 3)
        e = [target - pos]
        if axis is not None:
            e.append(np.cross(rot[:, 2], axis))
            if want is not None:
                e.append(np.cross(rot[:, 1], want))
        err = float(np.max(np.abs(np.concatenate(e))))
        q = np.clip(data.qpos[qadr], lo, hi)
        if err < tol:
            return q
        if _ == max_iter:
            break
        vel = mink.solve_ik(config, tasks, dt=1.0, solver="daqp", damping=damping, limits=limits)
        config.integrate_inplace(vel, 1.0)
    if best_effort:
        return q
    raise IKError(f"no joint angles put the tool at {target.round(3).tolist()} (residual {err:.4f} after {max_iter} "
                  f"iterations): out of the PiPER's reach or joint ranges")


#: the joint-range constraints of the last few models (building them costs a quarter of a solve)
_LIMITS: dict[int, tuple] = {}


def _configuration_limit(model: mujoco.MjModel):
    """The joint-range constraints for ``model``, cached for the last 8 models."""
    import mink

    hit = _LIMITS.get(id(model))
    if hit is None or hit[0] is not model:
        while len(_LIMITS) >= 8:
            del _LIMITS[next(iter(_LIMITS))]
        hit = _LIMITS[id(model)] = (model, mink.ConfigurationLimit(model))
    return hit[1]
