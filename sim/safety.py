"""The controller's safety layer: state validation, watchdog, latched e-stop, command limits.

Safety is the controller's job (``../shared/DESIGN.md``): a stale or malformed state never
reaches the planner; the controller then commands a safe hold and reports ERROR; commands
are clamped to the joint and torque limits of the MJCF; nothing non-finite is ever sent.
This module is plain NumPy and MuJoCo so that every rule is tested without ROS; the ROS 2
nodes (``mppi_controller``, ``policy_executor``, ``sim_bridge``, ``go1_bridge``, ``piper_bridge``)
only convert messages and call it. It sits in ``ws_sim``, beside :mod:`ws_sim.robot_io`, so that
every controller and bridge shares it without importing the planner (``ws_mppi.safety`` re-exports
it for old imports).

* :class:`JointLimits`: position range, torque limit and PD gains of each actuated joint,
  read from an ``MjModel`` (:meth:`JointLimits.from_model`).
* :class:`StateValidator`: a joint-state reading (names, positions, velocities, stamp) ->
  arrays in the model's joint order, or :class:`InvalidState` with a reason code; every
  rejection is counted by reason.
* :class:`CommandLimiter`: clamps a position command to the joint range and to the
  positions whose PD torque ``kp (q_cmd - q) - kd qd`` stays within the torque limit.
* :class:`SafetySupervisor`: the decision every control tick: run the plan's command, hold
  (no valid state for longer than ``state_timeout_s``, or a non-finite plan), or e-stop
  (latched until :meth:`SafetySupervisor.release_estop`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Sequence

import numpy as np

from .errors import SimError

__all__ = ["JointLimits", "InvalidState", "StateValidator", "CommandLimiter", "Mode", "Decision",
           "SafetySupervisor", "REJECT_REASONS"]

#: reason codes of :class:`InvalidState`, the keys of :attr:`StateValidator.rejected`
REJECT_REASONS = ("non_finite", "length_mismatch", "unknown_joint", "missing_joint", "duplicate_joint",
                  "out_of_range", "future_stamp", "stale", "missing_base")


@dataclasses.dataclass(frozen=True)
class JointLimits:
    """Per-joint limits, in the order states are read and commands are sent.

    Attributes:
        names: joint names.
        position_min, position_max: ``(n,)`` joint range, rad (or m for slides; ``±inf``
            where unlimited).
        torque_max: ``(n,)`` actuator force limit, N·m (``inf`` where unlimited or unactuated).
        kp, kd: ``(n,)`` PD gains of position servos, N·m/rad and N·m·s/rad (0 for motors
            and unactuated joints).
        ctrl_min, ctrl_max: ``(n,)`` the actuator's control range (``±inf`` if none).
        command: ``"position"`` (servo set-points, e.g. the Go1) or ``"effort"`` (motor
            controls in the actuator's ``ctrlrange``, e.g. Gymnasium's Hopper).
    """

    names: tuple[str, ...]
    position_min: np.ndarray
    position_max: np.ndarray
    torque_max: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    ctrl_min: np.ndarray | None = None
    ctrl_max: np.ndarray | None = None
    command: str = "position"

    def __post_init__(self):
        n = len(self.names)
        if self.ctrl_min is None:
            object.__setattr__(self, "ctrl_min", np.full(n, -np.inf))
        if self.ctrl_max is None:
            object.__setattr__(self, "ctrl_max", np.full(n, np.inf))
        for f in ("position_min", "position_max", "torque_max", "kp", "kd", "ctrl_min", "ctrl_max"):
            v = np.asarray(getattr(self, f), dtype=np.float64)
            if v.shape != (n,):
                raise ValueError(f"{f} has shape {v.shape}; expected ({n},) for joints {self.names}")
            object.__setattr__(self, f, v)
        if np.any(self.position_min > self.position_max):
            raise ValueError("position_min exceeds position_max")
        if self.command not in ("position", "effort"):
            raise ValueError(f"command must be 'position' or 'effort', got {self.command!r}")

    @classmethod
    def from_model(cls, model, joint_names: Sequence[str] | None = None,
                   require_actuator: bool = True) -> "JointLimits":
        """Limits of a ``mujoco.MjModel``'s joints.

        Reads each joint's range (``jnt_range``; unlimited joints get ``±inf``) and, where an
        actuator drives it, ``actuator_forcerange`` (unlimited: ``inf``), ``ctrlrange`` and the
        PD gains of a position actuator (``gainprm[0]`` = kp, ``-biasprm[2]`` = kd, MuJoCo's
        convention). A model whose actuators all have a position bias (``biasprm[1] < 0``)
        takes position commands, otherwise effort.

        Args:
            model: the ``MjModel``.
            joint_names: the order to return (default: the actuated joints, actuator order).
            require_actuator: raise if a named joint has no actuator (command limits); False
                for state validation over every joint.

        Raises:
            ValueError: a named joint does not exist, or has no actuator when required.
        """
        import mujoco

        by_joint = {}
        for a in range(model.nu):
            if model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
                continue
            j = int(model.actuator_trnid[a, 0])
            by_joint[mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)] = a
        names = list(joint_names) if joint_names is not None else list(by_joint)
        ids = {n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in names}
        unknown = [n for n, j in ids.items() if j < 0]
        if unknown:
            raise ValueError(f"joints {unknown} do not exist in the model")
        missing = [n for n in names if n not in by_joint]
        if require_actuator and missing:
            raise ValueError(f"joints {missing} have no actuator in the model (actuated: {sorted(by_joint)})")
        cols = {k: [] for k in ("lo", "hi", "tmax", "kp", "kd", "cmin", "cmax")}
        for n in names:
            j, a = ids[n], by_joint.get(n)
            limited = bool(model.jnt_limited[j])
            cols["lo"].append(model.jnt_range[j, 0] if limited else -np.inf)
            cols["hi"].append(model.jnt_range[j, 1] if limited else np.inf)
            if a is None:
                for k, v in (("tmax", np.inf), ("kp", 0.0), ("kd", 0.0), ("cmin", -np.inf), ("cmax", np.inf)):
                    cols[k].append(v)
                continue
            cols["tmax"].append(max(abs(model.actuator_forcerange[a, 0]), abs(model.actuator_forcerange[a, 1]))
                                if model.actuator_forcelimited[a] else np.inf)
            servo = model.actuator_biasprm[a, 1] < 0
            cols["kp"].append(model.actuator_gainprm[a, 0] if servo else 0.0)
            cols["kd"].append(-model.actuator_biasprm[a, 2] if servo else 0.0)
            ctrl_limited = bool(model.actuator_ctrllimited[a])
            cols["cmin"].append(model.actuator_ctrlrange[a, 0] if ctrl_limited else -np.inf)
            cols["cmax"].append(model.actuator_ctrlrange[a, 1] if ctrl_limited else np.inf)
        servo_all = model.nu > 0 and bool(np.all(model.actuator_biasprm[:, 1] < 0))
        return cls(tuple(names), *(np.array(cols[k], dtype=np.float64) for k in ("lo", "hi", "tmax", "kp", "kd")),
                   ctrl_min=np.array(cols["cmin"], dtype=np.float64), ctrl_max=np.array(cols["cmax"], dtype=np.float64),
                   command="position" if servo_all else "effort")


class InvalidState(SimError):
    """A joint-state reading was rejected; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class StateValidator:
    """Checks joint-state readings before they reach the planner.

    Args:
        limits: the expected joints and their ranges.
        range_margin: tolerance beyond the joint range before a position counts as out of
            range (encoders overshoot the soft limits a little), rad.
        max_age_s: a reading older than this (``now - stamp``) is stale.
        max_future_s: a stamp more than this ahead of ``now`` is rejected (clock fault).
        max_velocity: ``|qd|`` above this is rejected as a sensor fault, rad/s.
    """

    def __init__(self, limits: JointLimits, range_margin: float = 0.1, max_age_s: float = 0.1,
                 max_future_s: float = 0.01, max_velocity: float = 100.0):
        self.limits = limits
        self.range_margin = float(range_margin)
        self.max_age_s = float(max_age_s)
        self.max_future_s = float(max_future_s)
        self.max_velocity = float(max_velocity)
        self._index = {n: i for i, n in enumerate(limits.names)}
        self.rejected = {r: 0 for r in REJECT_REASONS}
        self.accepted = 0
        self._recent: collections.deque[tuple[float, str | None]] = collections.deque(maxlen=100_000)
        self._now_s = 0.0

    def _reject(self, reason: str, message: str) -> InvalidState:
        self.rejected[reason] += 1
        self._recent.append((self._now_s, reason))
        return InvalidState(reason, message)

    def recent(self, now_s: float, window_s: float = 1.0) -> tuple[int, int, str | None]:
        """Readings of the last ``window_s`` seconds (on the clock ``check`` was given):
        ``(checked, rejected, top_reason)``, ``top_reason`` the most frequent rejection reason
        in the window (None if none was rejected)."""
        while self._recent and self._recent[0][0] < now_s - window_s:
            self._recent.popleft()
        reasons = collections.Counter(r for _, r in self._recent if r is not None)
        top = reasons.most_common(1)[0][0] if reasons else None
        return len(self._recent), sum(reasons.values()), top

    def check(self, names: Sequence[str], position: Sequence[float], velocity: Sequence[float], stamp_s: float,
              now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Validate one reading; return ``(q, qd)`` in the order of ``limits.names``.

        Args:
            names: joint names of the reading, any order; extra joints are rejected.
            position, velocity: values in the order of ``names`` (rad, rad/s).
            stamp_s: the reading's time stamp, s; ``now_s``: the controller's clock, s.

        Raises:
            InvalidState: with its reason code (also counted in :attr:`rejected`).
        """
        self._now_s = float(now_s) if np.isfinite(now_s) else self._now_s
        q = np.asarray(position, dtype=np.float64)
        qd = np.asarray(velocity, dtype=np.float64)
        if q.ndim != 1 or len(q) != len(names) or qd.shape != q.shape:
            raise self._reject("length_mismatch", f"{len(names)} names, {q.size} positions, {qd.size} velocities")
        if not np.isfinite(stamp_s):
            raise self._reject("non_finite", f"stamp {stamp_s}")
        bad = ~(np.isfinite(q) & np.isfinite(qd))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise self._reject("non_finite", f"joint {names[i]}: position {q[i]}, velocity {qd[i]}"
                               + (f" (and {int(bad.sum()) - 1} more)" if bad.sum() > 1 else ""))
        if len(set(names)) != len(names):
            raise self._reject("duplicate_joint", f"joint names repeat: {list(names)}")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise self._reject("unknown_joint", f"unknown joints {unknown}")
        missing = [n for n in self.limits.names if n not in set(names)]
        if missing:
            raise self._reject("missing_joint", f"missing joints {missing}")
        if stamp_s - now_s > self.max_future_s:
            raise self._reject("future_stamp", f"stamp {stamp_s - now_s:.3f} s in the future")
        if now_s - stamp_s > self.max_age_s:
            raise self._reject("stale", f"reading {now_s - stamp_s:.3f} s old (limit {self.max_age_s} s)")
        where = {n: i for i, n in enumerate(names)}
        order = np.array([where[n] for n in self.limits.names])
        q, qd = q[order], qd[order]
        lo, hi = self.limits.position_min - self.range_margin, self.limits.position_max + self.range_margin
        bad = (q < lo) | (q > hi) | (np.abs(qd) > self.max_velocity)
        if np.any(bad):
            which = ", ".join(f"{self.limits.names[i]} q={q[i]:.4g} rad (range [{lo[i]:.4g}, {hi[i]:.4g}]) "
                              f"qd={qd[i]:.4g} rad/s (limit {self.max_velocity:g})" for i in np.flatnonzero(bad)[:3])
            raise self._reject("out_of_range", f"outside range or velocity limit: {which}")
        self.accepted += 1
        self._recent.append((self._now_s, None))
        return q, qd


class CommandLimiter:
    """Clamp commands to what the joints and actuators allow.

    Position commands: a servo applies ``tau = kp (q_cmd - q) - kd qd``; keeping
    ``|tau| <= torque_max`` bounds ``q_cmd`` to ``q + (±torque_max + kd qd) / kp``. Both
    clamps are applied, the joint range last, so the command is always inside the range.
    Effort commands are clipped to the actuator's control range.
    """

    def __init__(self, limits: JointLimits):
        self.limits = limits
        self.clamped = 0

    def __call__(self, q_cmd: np.ndarray, q: np.ndarray | None = None, qd: np.ndarray | None = None) -> np.ndarray:
        """The clamped command ``(n,)`` (``q``, ``qd``: the measured joint state, for the torque bound).

        Raises:
            ValueError: a non-finite or wrongly sized command (never clamp NaN into a number).
        """
        lim = self.limits
        cmd = np.asarray(q_cmd, dtype=np.float64)
        if cmd.shape != (len(lim.names),):
            raise ValueError(f"command has shape {cmd.shape}; expected ({len(lim.names)},)")
        if not np.all(np.isfinite(cmd)):
            raise ValueError("non-finite command")
        out = cmd.copy()
        if lim.command == "effort":
            out = np.clip(out, lim.ctrl_min, lim.ctrl_max)
            if not np.array_equal(out, cmd):
                self.clamped += 1
            return out
        if q is not None:
            qd = np.zeros_like(out) if qd is None else np.asarray(qd, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                span_lo = np.where(lim.kp > 0, (-lim.torque_max + lim.kd * qd) / lim.kp, -np.inf)
                span_hi = np.where(lim.kp > 0, (lim.torque_max + lim.kd * qd) / lim.kp, np.inf)
            out = np.clip(out, q + span_lo, q + span_hi)
        out = np.clip(out, lim.position_min, lim.position_max)
        if not np.array_equal(out, cmd):
            self.clamped += 1
        return out


class Mode(str, enum.Enum):
    RUN = "run"
    HOLD = "hold"
    ESTOP = "estop"


@dataclasses.dataclass
class Decision:
    """What to send this tick.

    Attributes:
        mode: ``run`` (the plan's command), ``hold`` (hold the last valid position; the
            servo's damping brakes) or ``estop`` (the same hold, latched).
        command: ``(n,)`` position command, finite; None when no valid state was ever seen
            (nothing safe to command: send nothing).
        level: diagnostic level, 0 OK, 1 WARN, 2 ERROR (``diagnostic_msgs/DiagnosticStatus``).
        message: why.
    """

    mode: Mode
    command: np.ndarray | None
    level: int
    message: str


class SafetySupervisor:
    """Decide every tick between the plan's command, a safe hold and the latched e-stop.

    Args:
        limits: limits of the commanded joints (clamping, hold).
        state_timeout_s: no valid state for longer than this -> hold and ERROR (watchdog).
        validator: the :class:`StateValidator` of incoming readings; it may cover more joints
            than are commanded (e.g. Hopper's unactuated root joints). Default: one over
            ``limits``.
        base_dim: length of the floating-base vector each reading must come with (13 for a
            MuJoCo free joint: position, quaternion ``(w, x, y, z)``, linear and angular
            velocity), 0 for fixed or planar bases.

    The safe hold: position-commanded joints hold the last valid position (the servo's
    damping brakes them); effort-commanded joints get zero effort (clipped to the control range).

    Raises:
        ValueError: a commanded joint is not among the validated ones.
    """

    def __init__(self, limits: JointLimits, state_timeout_s: float = 0.1, validator: StateValidator | None = None,
                 base_dim: int = 0):
        self.limits = limits
        self.state_timeout_s = float(state_timeout_s)
        self.validator = validator or StateValidator(limits)
        names = self.validator.limits.names
        missing = [n for n in limits.names if n not in names]
        if missing:
            raise ValueError(f"commanded joints {missing} are not validated (validator joints: {names})")
        self._cmd_idx = np.array([names.index(n) for n in limits.names], dtype=int)
        self.base_dim = int(base_dim)
        self.limiter = CommandLimiter(limits)
        self._q: np.ndarray | None = None
        self._qd: np.ndarray | None = None
        self._base: np.ndarray | None = None
        self._last_valid_s: float | None = None
        self.valid_updates = 0  # readings accepted so far (a planner can skip states it has planned from)
        self.state_stamp_s: float | None = None  # the header stamp of the newest valid reading
        self._estop = False
        self._estop_reason = ""
        self.last_rejection = ""

    # --- inputs -------------------------------------------------------------------------------
    def update_state(self, names, position, velocity, stamp_s: float, now_s: float,
                     base: np.ndarray | None = None, base_stamp_s: float | None = None) -> bool:
        """Offer a reading; True if it was valid (it becomes the planner's state).

        ``base`` (``(base_dim,)``) and its stamp come from odometry for floating-base robots;
        they pass the same finiteness and age checks, and the quaternion must be unit within 0.1.
        """
        try:
            q, qd = self.validator.check(names, position, velocity, stamp_s, now_s)
            if self.base_dim:
                v = self.validator
                if base is None or base_stamp_s is None:
                    raise v._reject("missing_base", "no odometry received yet")
                b = np.asarray(base, dtype=np.float64)
                if b.shape != (self.base_dim,):
                    raise v._reject("length_mismatch", f"base has {b.size} values, expected {self.base_dim}")
                if not np.all(np.isfinite(b)):
                    raise v._reject("non_finite", "NaN or infinite odometry")
                if abs(np.linalg.norm(b[3:7]) - 1.0) > 0.1:
                    raise v._reject("out_of_range", f"odometry quaternion norm {np.linalg.norm(b[3:7]):.3f}")
                if now_s - base_stamp_s > v.max_age_s:
                    raise v._reject("stale", f"odometry {now_s - base_stamp_s:.3f} s old")
                if base_stamp_s - now_s > v.max_future_s:
                    raise v._reject("future_stamp", f"odometry stamp {base_stamp_s - now_s:.3f} s in the future")
                self._base = b.copy()
        except InvalidState as e:
            self.last_rejection = str(e)
            return False
        self._q, self._qd = q, qd
        self._last_valid_s = now_s
        self.state_stamp_s = float(stamp_s)
        self.valid_updates += 1
        return True

    def engage_estop(self, reason: str = "estop") -> None:
        """Latch the e-stop; only :meth:`release_estop` clears it."""
        self._estop, self._estop_reason = True, reason

    def release_estop(self) -> None:
        """Explicitly release the latched e-stop."""
        self._estop, self._estop_reason = False, ""

    @property
    def estopped(self) -> bool:
        return self._estop

    def state(self, now_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """``(q, qd, base)`` the planner may use now (validator joint order), or None (no valid
        state yet, or older than the timeout)."""
        if self._last_valid_s is None or now_s - self._last_valid_s > self.state_timeout_s:
            return None
        return self._q.copy(), self._qd.copy(), None if self._base is None else self._base.copy()

    def limit_plan(self, steps: np.ndarray, predicted_q: np.ndarray | None = None,
                   predicted_qd: np.ndarray | None = None) -> np.ndarray | None:
        """The later steps of a plan ``(n, nu)``, step ``j`` clamped like a command against the
        state predicted for the moment it starts (``predicted_q[j]``, ``predicted_qd[j]``: ``(n, nu)``
        in the commanded joints' order, e.g. the planner's predicted trajectory), since the
        torque bound of a position servo depends on where the joint will be then, not where it
        is now.

        Returns None (only the command for now goes out) when there is no valid state, any step
        is non-finite, or a position-commanded plan comes without a finite prediction of the
        right shape. Effort commands need no prediction (their clamp is the control range).
        """
        steps = np.asarray(steps, dtype=np.float64)
        if self._q is None or steps.ndim != 2 or not np.all(np.isfinite(steps)):
            return None
        if not len(steps):
            return np.zeros((0, steps.shape[-1]))
        if self.limits.command == "effort":
            return np.stack([self.limiter(u) for u in steps])
        if predicted_q is None or predicted_qd is None:
            return None
        pq, pqd = np.asarray(predicted_q, dtype=np.float64), np.asarray(predicted_qd, dtype=np.float64)
        if pq.shape != steps.shape or pqd.shape != steps.shape or not (np.all(np.isfinite(pq)) and np.all(np.isfinite(pqd))):
            return None
        return np.stack([self.limiter(u, q, qd) for u, q, qd in zip(steps, pq, pqd)])

    def tracking_prediction(self, command: np.ndarray, steps: np.ndarray,
                            dt: float) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """The states a position servo is predicted to be in at the starts of a plan's later
        ``steps`` ``(n, nu)`` when it tracks its targets: at the start of step ``j`` the joints
        are where the previous point sent them (``command`` for ``j = 0``), moving at that
        point's rate ``(point_{j-1} - point_{j-2}) / dt`` (the newest valid position before
        ``command``). For plans that carry no state prediction of their own (a policy's action
        chunk); MPPI passes its model's prediction instead. ``(None, None)`` without a valid
        state."""
        if self._q is None:
            return None, None
        steps = np.asarray(steps, dtype=np.float64)
        pts = np.vstack([self._q[self._cmd_idx], np.asarray(command, dtype=np.float64)[None], steps])
        return pts[1:-1], (pts[1:-1] - pts[:-2]) / float(dt)

    def hold_command(self) -> np.ndarray | None:
        """The safe-hold command, or None before any valid state (position joints)."""
        if self.limits.command == "effort":
            return self.limiter(np.zeros(len(self.limits.names)))
        return None if self._q is None else self.limiter(self._q[self._cmd_idx])

    # --- the tick -------------------------------------------------------------------------------
    def decide(self, now_s: float, planned_command: np.ndarray | None) -> Decision:
        """The command for this tick; ``planned_command`` is the plan's command for now (None
        if no plan yet)."""
        hold = self.hold_command()
        if self._estop:
            return Decision(Mode.ESTOP, hold, 2, f"e-stop latched ({self._estop_reason}); release explicitly")
        if self.state(now_s) is None:
            why = f"; last rejection: {self.last_rejection}" if self.last_rejection else ""
            if self._last_valid_s is None:
                # a position robot has no safe position to hold before its first valid reading: send nothing
                action = "holding" if hold is not None else "not commanding"
                return Decision(Mode.HOLD, hold, 2, f"no valid state yet: {action}{why}")
            return Decision(Mode.HOLD, hold, 2,
                            f"no valid state (last valid {now_s - self._last_valid_s:.3f} s ago){why}: holding")
        if planned_command is None:
            return Decision(Mode.HOLD, hold, 1, "no plan yet: holding")
        try:
            cmd = self.limiter(planned_command, self._q[self._cmd_idx], self._qd[self._cmd_idx])
        except ValueError as e:
            return Decision(Mode.HOLD, hold, 2, f"rejected plan command ({e}): holding")
        return Decision(Mode.RUN, cmd, 0, "running")
