"""Per-channel metadata of a MuJoCo system's state and action vectors.

The planner and the world models see the full MuJoCo state ``[qpos, qvel]`` (root
coordinates included) and the actuator controls. Every scalar of those vectors is a
*channel*; :class:`Channel` says which body and joint it belongs to, what kind of
quantity it is and in which unit, and (once data has been seen) its range. The list
travels with every dataset and checkpoint so that a model can refuse data that does not
belong to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import mujoco
import numpy as np

from .errors import SimError

__all__ = ["Channel", "channels_from_model", "channels_to_records", "channels_from_records",
           "check_channels_match", "ChannelMismatchError", "data_ranges", "StateLayout", "MissingChannelError"]


class ChannelMismatchError(SimError):
    """Raised when a dataset's or checkpoint's channels do not match the environment."""


@dataclasses.dataclass(frozen=True)
class Channel:
    """One scalar channel of a state or action vector.

    Attributes:
        name: unique name, e.g. ``"qpos/rootz"``, ``"qvel/thigh_joint"``, ``"act/thigh_joint"``.
        body: name of the MuJoCo body the channel belongs to.
        joint: name of the joint (or actuator target) it belongs to.
        kind: ``"qpos"``, ``"qvel"`` or ``"action"``.
        unit: SI unit: ``"m"``, ``"rad"``, ``"m/s"``, ``"rad/s"``, ``"1"`` (quaternion or
            normalised control).
        min: lower bound (joint or control range, or data minimum; ``-inf`` if unbounded).
        max: upper bound.
    """

    name: str
    body: str
    joint: str
    kind: str
    unit: str
    min: float = -math.inf
    max: float = math.inf


_QPOS_UNITS = {
    mujoco.mjtJoint.mjJNT_FREE: ["m", "m", "m", "1", "1", "1", "1"],
    mujoco.mjtJoint.mjJNT_BALL: ["1", "1", "1", "1"],
    mujoco.mjtJoint.mjJNT_SLIDE: ["m"],
    mujoco.mjtJoint.mjJNT_HINGE: ["rad"],
}
_QVEL_UNITS = {
    mujoco.mjtJoint.mjJNT_FREE: ["m/s", "m/s", "m/s", "rad/s", "rad/s", "rad/s"],
    mujoco.mjtJoint.mjJNT_BALL: ["rad/s", "rad/s", "rad/s"],
    mujoco.mjtJoint.mjJNT_SLIDE: ["m/s"],
    mujoco.mjtJoint.mjJNT_HINGE: ["rad/s"],
}
_FREE_SUFFIX_QPOS = ["x", "y", "z", "qw", "qx", "qy", "qz"]
_FREE_SUFFIX_QVEL = ["vx", "vy", "vz", "wx", "wy", "wz"]


def _name(model: mujoco.MjModel, obj: mujoco.mjtObj, i: int, fallback: str) -> str:
    name = mujoco.mj_id2name(model, obj, i)
    return name if name else f"{fallback}{i}"


def channels_from_model(model: mujoco.MjModel) -> tuple[list[Channel], list[Channel]]:
    """Read the state and action channels of a MuJoCo model.

    Args:
        model: a compiled ``mujoco.MjModel``.

    Returns:
        ``(state_channels, action_channels)``: ``nq + nv`` state channels in the order of
        ``[qpos, qvel]``, and ``nu`` action channels in actuator order. Joint ranges are
        used as bounds of limited joints, control ranges as bounds of limited actuators.
    """
    qpos: list[Channel] = []
    qvel: list[Channel] = []
    for j in range(model.njnt):
        jtype = mujoco.mjtJoint(model.jnt_type[j])
        jname = _name(model, mujoco.mjtObj.mjOBJ_JOINT, j, "joint")
        body = _name(model, mujoco.mjtObj.mjOBJ_BODY, int(model.jnt_bodyid[j]), "body")
        limited = bool(model.jnt_limited[j]) and jtype in (mujoco.mjtJoint.mjJNT_SLIDE,
                                                           mujoco.mjtJoint.mjJNT_HINGE)
        lo, hi = (float(model.jnt_range[j, 0]), float(model.jnt_range[j, 1])) if limited else (-math.inf, math.inf)
        for k, unit in enumerate(_QPOS_UNITS[jtype]):
            suffix = f"/{_FREE_SUFFIX_QPOS[k]}" if jtype == mujoco.mjtJoint.mjJNT_FREE else (
                f"/{k}" if jtype == mujoco.mjtJoint.mjJNT_BALL else "")
            qpos.append(Channel(f"qpos/{jname}{suffix}", body, jname, "qpos", unit, lo, hi))
        for k, unit in enumerate(_QVEL_UNITS[jtype]):
            suffix = f"/{_FREE_SUFFIX_QVEL[k]}" if jtype == mujoco.mjtJoint.mjJNT_FREE else (
                f"/{k}" if jtype == mujoco.mjtJoint.mjJNT_BALL else "")
            qvel.append(Channel(f"qvel/{jname}{suffix}", body, jname, "qvel", unit))
    if len(qpos) != model.nq or len(qvel) != model.nv:
        raise AssertionError("joint walk did not cover qpos/qvel")  # pragma: no cover
    actions: list[Channel] = []
    for a in range(model.nu):
        target = int(model.actuator_trnid[a, 0])
        if int(model.actuator_trntype[a]) in (int(mujoco.mjtTrn.mjTRN_JOINT), int(mujoco.mjtTrn.mjTRN_JOINTINPARENT)) and target >= 0:
            jname = _name(model, mujoco.mjtObj.mjOBJ_JOINT, target, "joint")
            body = _name(model, mujoco.mjtObj.mjOBJ_BODY, int(model.jnt_bodyid[target]), "body")
        else:
            jname, body = "", "world"
        aname = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) or jname or f"actuator{a}"
        lo, hi = ((float(model.actuator_ctrlrange[a, 0]), float(model.actuator_ctrlrange[a, 1]))
                  if model.actuator_ctrllimited[a] else (-math.inf, math.inf))
        actions.append(Channel(f"act/{aname}", body, jname, "action", "1", lo, hi))
    return qpos + qvel, actions


def channels_to_records(channels: Sequence[Channel]) -> list[dict]:
    """Plain dicts (JSON/YAML/HDF5-attribute friendly) of a channel list."""
    return [dataclasses.asdict(c) for c in channels]


def channels_from_records(records: Iterable[dict]) -> list[Channel]:
    """Inverse of :func:`channels_to_records`.

    Raises:
        ValueError: a record misses a field.
    """
    out = []
    for r in records:
        try:
            out.append(Channel(name=str(r["name"]), body=str(r["body"]), joint=str(r["joint"]),
                               kind=str(r["kind"]), unit=str(r["unit"]),
                               min=float(r.get("min", -math.inf)), max=float(r.get("max", math.inf))))
        except KeyError as e:
            raise ValueError(f"channel record {r!r} has no field {e}") from None
    return out


def check_channels_match(expected: Sequence[Channel], got: Sequence[Channel], what: str) -> None:
    """Check that two channel lists describe the same vector (names, kinds and units).

    Ranges may differ (data ranges vs. model ranges).

    Raises:
        ChannelMismatchError: naming ``what`` and the first differing channel.
    """
    if len(expected) != len(got):
        raise ChannelMismatchError(
            f"{what} has {len(got)} channels but the environment has {len(expected)} "
            f"(expected {[c.name for c in expected]}, got {[c.name for c in got]})")
    for i, (e, g) in enumerate(zip(expected, got)):
        if (e.name, e.kind, e.unit) != (g.name, g.kind, g.unit):
            raise ChannelMismatchError(
                f"{what} channel {i} is {g.name!r} ({g.kind}, {g.unit}) but the environment "
                f"expects {e.name!r} ({e.kind}, {e.unit})")


def data_ranges(channels: Sequence[Channel], values: np.ndarray) -> list[Channel]:
    """Channels with ``min``/``max`` replaced by the data's range.

    Args:
        channels: ``C`` channels.
        values: ``(..., C)`` samples.
    """
    flat = np.asarray(values).reshape(-1, len(channels))
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    return [dataclasses.replace(c, min=float(a), max=float(b)) for c, a, b in zip(channels, lo, hi)]


class MissingChannelError(SimError):
    """Raised when a :class:`StateLayout` is asked for a quantity the environment's state lacks."""


def _span(indices: Sequence[int]) -> slice | list[int]:
    """A ``slice`` over contiguous indices (so that indexing gives the same view as a literal
    slice), else the index list."""
    idx = list(indices)
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[-1] + 1)
    return idx


class StateLayout:
    """Named views into a state vector ``[qpos, qvel]``, resolved from its :class:`Channel` list.

    Costs index states with these instead of literal positions, e.g.
    ``states[..., layout.root_vel_x]`` for the root's forward velocity. Groups of channels come back
    as a ``slice`` when contiguous (``[..., 19:21]`` and ``[..., layout.base_vel_xy]`` are the same
    view), single channels as an ``int``. Asking for a quantity the state has no channel for
    raises :class:`MissingChannelError` naming the environment, the channel and the channels it has.

    Planar root (Hopper, Walker2d: slide ``rootx``, slide ``rootz``, hinge ``rooty``):
    ``root_x``, ``root_z``, ``root_pitch``, ``root_vel_x`` and ``non_root_xz`` (every channel but
    the root's x and z positions, Gymnasium Hopper's healthy-state range).

    Floating base (Go1: one free joint, channels ``qpos/<j>/x..qz``, ``qvel/<j>/vx..wz``):
    ``base_pos``, ``base_xy``, ``base_z``, ``base_quat`` (``qw, qx, qy, qz``), ``base_linvel``,
    ``base_vel_xy``, ``base_angvel``.

    Arm (PiPER): ``arm_q`` and ``arm_qd``, the positions and velocities of the revolute joints
    (channel unit ``rad``) that do not belong to a floating or planar root.
    """

    def __init__(self, channels: Sequence[Channel], env: str | None = None):
        self.channels = tuple(channels)
        self.env = env
        self._index = {c.name: i for i, c in enumerate(self.channels)}

    @classmethod
    def from_channels(cls, channels: Sequence[Channel], env: str | None = None) -> "StateLayout":
        return cls(channels, env)

    def __len__(self) -> int:
        return len(self.channels)

    def _who(self) -> str:
        return f"environment {self.env!r}" if self.env else "the state"

    def index(self, name: str, what: str | None = None) -> int:
        """Position of the channel called ``name``.

        Raises:
            MissingChannelError: no such channel.
        """
        try:
            return self._index[name]
        except KeyError:
            raise MissingChannelError(
                f"{self._who()} has no state channel {name!r}" + (f" ({what})" if what else "")
                + f"; its state channels are {list(self._index)}") from None

    def span(self, names: Sequence[str], what: str | None = None) -> slice | list[int]:
        """Positions of several channels: a ``slice`` when contiguous, else a list."""
        return _span([self.index(n, what) for n in names])

    # --- planar root ---------------------------------------------------------------------------
    @property
    def root_x(self) -> int:
        return self.index("qpos/rootx", "the root's forward position")

    @property
    def root_z(self) -> int:
        return self.index("qpos/rootz", "the root's height")

    @property
    def root_pitch(self) -> int:
        return self.index("qpos/rooty", "the root's pitch")

    @property
    def root_vel_x(self) -> int:
        return self.index("qvel/rootx", "the root's forward velocity")

    @property
    def non_root_xz(self) -> slice | list[int]:
        xz = {self.root_x, self.root_z}
        return _span([i for i in range(len(self.channels)) if i not in xz])

    # --- floating base -------------------------------------------------------------------------
    def _free_joint(self) -> str:
        joints = [c.joint for c in self.channels if c.kind == "qpos" and c.name == f"qpos/{c.joint}/qw"]
        if len(joints) != 1:
            raise MissingChannelError(
                f"{self._who()} has {len(joints)} floating bases (free joints: {joints}); a floating-base "
                f"view needs exactly one; its state channels are {list(self._index)}")
        return joints[0]

    def _base(self, kind: str, parts: str, what: str) -> slice | list[int]:
        j = self._free_joint()
        return self.span([f"{kind}/{j}/{p}" for p in parts.split()], what)

    @property
    def base_pos(self) -> slice | list[int]:
        return self._base("qpos", "x y z", "the base position")

    @property
    def base_xy(self) -> slice | list[int]:
        return self._base("qpos", "x y", "the base's planar position")

    @property
    def base_z(self) -> int:
        return self.index(f"qpos/{self._free_joint()}/z", "the base height")

    @property
    def base_quat(self) -> slice | list[int]:
        return self._base("qpos", "qw qx qy qz", "the base orientation")

    @property
    def base_linvel(self) -> slice | list[int]:
        return self._base("qvel", "vx vy vz", "the base's linear velocity")

    @property
    def base_vel_xy(self) -> slice | list[int]:
        return self._base("qvel", "vx vy", "the base's planar velocity")

    @property
    def base_angvel(self) -> slice | list[int]:
        return self._base("qvel", "wx wy wz", "the base's angular velocity")

    # --- arm -----------------------------------------------------------------------------------
    def arm_joints(self) -> list[str]:
        """Revolute joints (one ``rad`` position channel ``qpos/<joint>``) off the root body."""
        root_bodies = {c.body for c in self.channels
                       if c.kind == "qpos" and (c.name in ("qpos/rootx", "qpos/rootz")
                                                or c.name == f"qpos/{c.joint}/qw")}
        joints = [c.joint for c in self.channels
                  if c.kind == "qpos" and c.unit == "rad" and c.name == f"qpos/{c.joint}" and c.body not in root_bodies]
        if not joints:
            raise MissingChannelError(f"{self._who()} has no arm joints (revolute joints off a root body); "
                                      f"its state channels are {list(self._index)}")
        return joints

    @property
    def arm_q(self) -> slice | list[int]:
        return self.span([f"qpos/{j}" for j in self.arm_joints()], "an arm joint angle")

    @property
    def arm_qd(self) -> slice | list[int]:
        return self.span([f"qvel/{j}" for j in self.arm_joints()], "an arm joint velocity")
