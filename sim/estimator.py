"""Base state estimation for a legged robot from its IMU, joint encoders and foot contacts.

A real Go1 measures no base position or velocity: its IMU gives orientation (from its own
attitude filter), angular rate and specific force, its encoders joint angles and rates, and
the gait (or foot force) says which feet stand. :class:`BaseStateEstimator` fuses them into the
base position and linear velocity, in the linear Kalman filter of Bloesch et al. (RSS 2013,
"State estimation for legged robots") as legged stacks run it (e.g. ``legged_control``'s
linear KF, read for its measurement layout; written here):

* state ``x = [p (3), v (3), p_foot (3 x 4)]``, world frame, orientation taken from the IMU;
* predict: ``p += v dt + a dt^2 / 2``, ``v += a dt`` with ``a = R f + g`` the IMU's specific force
  ``f`` rotated to the world, feet fixed; a foot in swing gets a large process noise (it moves);
* update, per foot: its position relative to the base from leg kinematics
  (``p_foot - p = R r(q)``), the base velocity that keeps a standing foot still
  (``v = -R (w x r + J(q) dq)``) and a standing foot's height on the ground; a swinging foot's
  measurements get a large noise, so only standing feet correct the base.

:class:`LegKinematics` computes ``r(q)`` and ``J(q) dq`` with MuJoCo on the robot's own model.
:class:`ImuModel` turns simulated motion into what a real IMU reports (white noise, a random-walk
bias, a yaw that drifts), so that the estimator can be measured against the simulator's truth.

Units: metres, seconds, radians; quaternions ``(w, x, y, z)`` (MuJoCo's order).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

__all__ = ["LegKinematics", "EstimatorNoise", "BaseStateEstimator", "ImuModel", "ImuReading", "EncoderNoise",
           "quat_to_rot", "yaw_of"]

GRAVITY = np.array([0.0, 0.0, -9.81])


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` (body to world) of a unit quaternion ``(w, x, y, z)``."""
    out = np.empty(9)
    mujoco.mju_quat2Mat(out, np.asarray(q, dtype=np.float64) / np.linalg.norm(q))
    return out.reshape(3, 3)


def yaw_of(q: np.ndarray) -> float:
    """Heading (rad) of a quaternion ``(w, x, y, z)``: the rotation about the world z axis."""
    w, x, y, z = np.asarray(q, dtype=np.float64)
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


class LegKinematics:
    """Foot positions and velocities relative to the base, in the base frame, from joint readings.

    Args:
        model: the robot's ``MjModel`` (a floating base, then the leg joints).
        feet: the foot geoms' names, in the order the estimator uses.

    Raises:
        ValueError: the model has no floating base or no such foot geom.
    """

    def __init__(self, model: mujoco.MjModel, feet: tuple[str, ...]):
        if model.nq < 7 or model.jnt_type[0] != mujoco.mjtJoint.mjJNT_FREE:
            raise ValueError("leg kinematics need a model whose first joint is the floating base")
        self.model = model
        self.data = mujoco.MjData(model)
        self.n_joints = model.nq - 7
        try:
            self.geoms = [model.geom(name).id for name in feet]
        except KeyError as e:
            raise ValueError(f"no foot geom {e} in the model") from e
        self.bodies = [int(model.geom_bodyid[g]) for g in self.geoms]
        #: the feet's sphere radii (m): a standing foot's centre is this high above the ground
        self.radii = np.array([model.geom_size[g, 0] for g in self.geoms])
        self._jacp = np.zeros((3, model.nv))

    def __call__(self, q: np.ndarray, dq: np.ndarray, rot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(r (F, 3), r_dot (F, 3))``, base frame: each foot's ground contact point relative to the base and that
        point's velocity from the joints' motion (the base held still), for joint angles ``q`` and rates ``dq``
        (rad, rad/s) and the base orientation ``rot`` (body to world; None: upright).

        The contact point is the bottom of the foot sphere (its centre minus its radius along the world's
        down axis): a standing ball foot rolls, so its centre moves while that point stays on the ground."""
        d = self.data
        self._set(q, dq)
        down = (np.eye(3) if rot is None else np.asarray(rot)).T @ np.array([0.0, 0.0, -1.0])  # base frame
        r = d.geom_xpos[self.geoms] + self.radii[:, None] * down
        r_dot = np.empty_like(r)
        for k, b in enumerate(self.bodies):
            mujoco.mj_jac(self.model, d, self._jacp, None, r[k], b)
            r_dot[k] = self._jacp[:, 6:] @ dq
        return r, r_dot

    def foot_forces(self, q: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """``(F, 3)`` base-frame force of the ground on each foot that the joint torques ``tau`` (N m) hold, from
        ``tau = -J^T f`` per leg (the legs' own weight and inertia neglected): a foot's contact from the joints'
        efforts, as on a robot without foot sensors.

        Raises:
            ValueError: a leg whose Jacobian is singular (a straight leg)."""
        self._set(q, np.zeros_like(q))
        out = np.empty((len(self.geoms), 3))
        for k, (g, b) in enumerate(zip(self.geoms, self.bodies)):
            mujoco.mj_jac(self.model, self.data, self._jacp, None, self.data.geom_xpos[g], b)
            cols = np.flatnonzero(np.any(self._jacp[:, 6:] != 0.0, axis=0))  # this leg's joints
            jac = self._jacp[:, 6 + cols]
            if jac.shape != (3, 3) or abs(np.linalg.det(jac)) < 1e-9:
                raise ValueError(f"leg {k}: its foot Jacobian is singular or not 3x3 ({jac.shape})")
            out[k] = -np.linalg.solve(jac.T, np.asarray(tau)[cols])
        return out

    def contact(self, q: np.ndarray, tau: np.ndarray, rot: np.ndarray, force_n: float = 20.0,
                height_margin_m: float | None = 0.02) -> np.ndarray:
        """``(F,)`` bool: the feet on the ground, from the joints' efforts and the legs' geometry.

        A foot stands when the ground force its joint torques hold (:meth:`foot_forces`, world frame) pushes up
        with more than ``force_n`` newtons and, on flat ground, its contact point is within ``height_margin_m``
        of the lowest foot's (kinematics and orientation only; None: no height test). The height test
        removes swinging legs whose efforts look like ground forces: a servo's transient toward a new target
        (a command that arrives late in the control step) or a leg accelerating in swing; these legs carry
        their foot several centimetres up.

        Args:
            q, tau: joint angles (rad) and efforts (N m), the model's joint order.
            rot: base orientation (body to world).
            force_n: the upward force threshold, N.
            height_margin_m: how far above the lowest foot a standing foot may be, m.
        """
        rot = np.asarray(rot, dtype=np.float64)
        standing = (self.foot_forces(q, tau) @ rot.T)[:, 2] > force_n
        if height_margin_m is not None:
            r, _ = self(q, np.zeros_like(q), rot)
            z = (r @ rot.T)[:, 2]
            standing &= z - z.min() <= height_margin_m
        return standing

    def _set(self, q: np.ndarray, dq: np.ndarray) -> None:
        d = self.data
        d.qpos[:7] = (0, 0, 0, 1, 0, 0, 0)
        d.qpos[7:] = q
        d.qvel[:] = 0.0
        d.qvel[6:] = dq
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)


@dataclasses.dataclass
class EstimatorNoise:
    """Noise levels of :class:`BaseStateEstimator` (standard deviations; chosen here, tuned in simulation).

    Attributes:
        accel: accelerometer white noise, m/s^2 (process noise of ``v``, and of ``p`` through it).
        position: base position random walk, m/sqrt(s).
        foot_stance: a standing foot's slip, m/sqrt(s).
        foot_swing: a swinging foot's motion, m/sqrt(s) (large: its state follows the kinematics).
        kin_position: leg-kinematics foot position error, m.
        kin_velocity: leg-kinematics base velocity error, m/s.
        foot_height: a standing foot's height error, m.
        swing_scale: the factor on the measurement noise of a swinging foot.
        reference_dt: the update period (s) at which the measurement noise levels hold; at a period
            ``dt`` they are scaled by ``reference_dt / dt``.
        gate_chi2: a standing foot whose base-velocity measurement's squared Mahalanobis distance
            exceeds this (chi-square, 3 degrees of freedom; 16.3 is the 99.9 % point) counts as swinging.
    """

    accel: float = 0.5
    position: float = 0.005
    foot_stance: float = 0.01
    foot_swing: float = 10.0
    kin_position: float = 0.01
    kin_velocity: float = 0.1
    foot_height: float = 0.005
    swing_scale: float = 1e3
    reference_dt: float = 0.02
    gate_chi2: float = 16.3


class BaseStateEstimator:
    """Linear Kalman filter over base position, base velocity and foot positions (see the module docstring).

    Args:
        kinematics: the robot's :class:`LegKinematics`.
        noise: :class:`EstimatorNoise` (default levels if None).
        ground_height: the flat ground's height, m.

    Use :meth:`reset` with an initial pose, then :meth:`step` at the IMU rate.
    """

    def __init__(self, kinematics: LegKinematics, noise: EstimatorNoise | None = None, ground_height: float = 0.0):
        self.kin = kinematics
        self.noise = noise or EstimatorNoise()
        self.ground = float(ground_height)
        self.n_feet = len(kinematics.geoms)
        self.n = 6 + 3 * self.n_feet
        self.x = np.zeros(self.n)
        self.P = np.eye(self.n)
        self.quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.omega = np.zeros(3)
        #: standing feet the last update's gate counted as swinging
        self.rejected_feet = 0

    def reset(self, position: np.ndarray, quat: np.ndarray, q: np.ndarray, velocity: np.ndarray | None = None) -> None:
        """Start at base ``position`` (m, world) and orientation ``quat``, at rest unless ``velocity`` is given,
        with the feet where the kinematics put them for joint angles ``q``.

        Raises:
            ValueError: non-finite inputs.
        """
        position, quat, q = (np.asarray(v, dtype=np.float64) for v in (position, quat, q))
        velocity = np.zeros(3) if velocity is None else np.asarray(velocity, dtype=np.float64)
        if not all(np.all(np.isfinite(v)) for v in (position, quat, q, velocity)):
            raise ValueError("the estimator's initial pose must be finite")
        self.quat = quat / np.linalg.norm(quat)
        rot = quat_to_rot(self.quat)
        r, _ = self.kin(q, np.zeros_like(q), rot)
        feet = position + r @ rot.T
        self.x = np.concatenate([position, velocity, feet.reshape(-1)])
        self.P = np.diag(np.r_[np.full(3, 1e-4), np.full(3, 1e-2), np.full(3 * self.n_feet, 1e-4)])

    @property
    def position(self) -> np.ndarray:
        """Base position ``(3,)``, m, world frame."""
        return self.x[:3].copy()

    @property
    def velocity(self) -> np.ndarray:
        """Base linear velocity ``(3,)``, m/s, world frame."""
        return self.x[3:6].copy()

    def base_state(self) -> np.ndarray:
        """The current estimate in :meth:`step`'s layout ``[position, quaternion, velocity, angular rate]`` (13,)."""
        return np.concatenate([self.x[0:3], self.quat, self.x[3:6], self.omega])

    @property
    def covariance(self) -> np.ndarray:
        """``(6, 6)`` covariance of ``[position, velocity]``."""
        return self.P[:6, :6].copy()

    def step(self, dt: float, quat: np.ndarray, gyro: np.ndarray, accel: np.ndarray, q: np.ndarray, dq: np.ndarray,
             contact: np.ndarray) -> np.ndarray:
        """Propagate by ``dt`` and correct with one set of readings.

        Args:
            dt: seconds since the last step (> 0).
            quat: the IMU's orientation ``(w, x, y, z)`` (body to world).
            gyro: angular rate ``(3,)``, rad/s, body frame.
            accel: specific force ``(3,)``, m/s^2, body frame (what an accelerometer reads: ``R^T (a - g)``).
            q, dq: joint angles and rates (rad, rad/s), the model's joint order.
            contact: ``(F,)`` bool, true for feet on the ground.

        Returns:
            the state ``[qpos[:7], base velocity (world, 3), angular rate (body, 3)]`` the planners read as
            the base part of ``[qpos, qvel]`` (position, quaternion, linear and angular velocity).

        Raises:
            ValueError: non-positive ``dt`` or non-finite readings (the estimate is left unchanged).
        """
        quat, gyro, accel, q, dq = (np.asarray(v, dtype=np.float64) for v in (quat, gyro, accel, q, dq))
        contact = np.asarray(contact, dtype=bool)
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        if not all(np.all(np.isfinite(v)) for v in (quat, gyro, accel, q, dq)) or np.linalg.norm(quat) < 1e-6:
            raise ValueError("non-finite IMU or joint readings: the estimate was not updated")
        if contact.shape != (self.n_feet,):
            raise ValueError(f"contact must be {self.n_feet} flags, got shape {contact.shape}")
        nz, nf = self.noise, self.n_feet
        self.quat, self.omega = quat / np.linalg.norm(quat), gyro
        rot = quat_to_rot(self.quat)
        # predict
        acc_w = rot @ accel + GRAVITY
        F = np.eye(self.n)
        F[0:3, 3:6] = np.eye(3) * dt
        self.x[0:3] += self.x[3:6] * dt + 0.5 * dt * dt * acc_w
        self.x[3:6] += acc_w * dt
        q_diag = np.r_[np.full(3, nz.position ** 2 * dt + (0.5 * dt * dt * nz.accel) ** 2),
                       np.full(3, (nz.accel * dt) ** 2),
                       np.repeat(np.where(contact, nz.foot_stance, nz.foot_swing) ** 2 * dt, 3)]
        self.P = F @ self.P @ F.T + np.diag(q_diag)
        # update: relative foot positions (3F), base velocity from each foot (3F), foot heights (F)
        r, r_dot = self.kin(q, dq, rot)
        feet_rel = r @ rot.T  # world-frame vectors base -> foot
        v_from_foot = -(np.cross(gyro, r) + r_dot) @ rot.T
        y = np.concatenate([feet_rel.reshape(-1), v_from_foot.reshape(-1), np.full(nf, self.ground)])
        m = y.size
        H = np.zeros((m, self.n))
        for k in range(nf):
            H[3 * k:3 * k + 3, 0:3] = -np.eye(3)
            H[3 * k:3 * k + 3, 6 + 3 * k:9 + 3 * k] = np.eye(3)
            H[3 * nf + 3 * k:3 * nf + 3 * k + 3, 3:6] = np.eye(3)
            H[6 * nf + k, 6 + 3 * k + 2] = 1.0
        # a foot said to stand whose velocity measurement is far outside what the filter expects is slipping or
        # not down yet (touch-down, a contact misread from the efforts): chi-square gate, that foot counts as swing
        stand = contact.copy()
        for k in np.flatnonzero(contact):
            innov = v_from_foot[k] - self.x[3:6]
            s_k = self.P[3:6, 3:6] + np.eye(3) * nz.kin_velocity ** 2 * (nz.reference_dt / dt)
            if innov @ np.linalg.solve(s_k, innov) > nz.gate_chi2:
                stand[k] = False
        self.rejected_feet = int(contact.sum() - stand.sum())
        scale = np.where(stand, 1.0, nz.swing_scale)
        # the levels are per update at the reference period: a faster rate updates more often with errors that
        # are correlated in time (slips, touch-downs), so each update counts for less and the filter's balance
        # does not depend on the rate
        r_diag = np.r_[np.full(3 * nf, nz.kin_position ** 2),
                       np.repeat(scale, 3) * nz.kin_velocity ** 2,
                       scale * nz.foot_height ** 2] * (nz.reference_dt / dt)
        S = H @ self.P @ H.T + np.diag(r_diag)
        K = np.linalg.solve(S, H @ self.P).T
        self.x = self.x + K @ (y - H @ self.x)
        ikh = np.eye(self.n) - K @ H
        self.P = ikh @ self.P @ ikh.T + K @ np.diag(r_diag) @ K.T  # Joseph form: stays symmetric positive
        self.P = 0.5 * (self.P + self.P.T)
        return self.base_state()


@dataclasses.dataclass
class EncoderNoise:
    """What a real robot's joint readings add to the truth (white noise standard deviations; chosen here, not
    measured): joint angle ``q`` rad, rate ``dq`` rad/s, effort ``tau`` N m."""

    q: float = 1e-3
    dq: float = 0.05
    tau: float = 0.2

    def apply(self, rng: np.random.Generator, q: np.ndarray, dq: np.ndarray, tau: np.ndarray):
        """``(q, dq, tau)`` as read: each ``(n,)`` plus its noise (unchanged where the level is 0)."""
        return tuple(v + rng.normal(0.0, std, np.shape(v)) if std else np.asarray(v, dtype=np.float64)
                     for v, std in ((q, self.q), (dq, self.dq), (tau, self.tau)))


@dataclasses.dataclass
class ImuReading:
    """One IMU sample: orientation ``(w, x, y, z)``, angular rate (rad/s, body) and specific force (m/s^2, body)."""

    quat: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray


class ImuModel:
    """What a real IMU reports of the simulated motion: white noise, random-walk biases and a yaw that drifts.

    Defaults are of the order of a consumer MEMS IMU and a magnetometer-free attitude filter (the Go1's
    onboard IMU reports its own orientation; its heading drifts): chosen here, not measured on a robot.

    Args:
        rng: random generator (one per seeded run).
        gyro_noise: rad/s white noise. accel_noise: m/s^2 white noise.
        gyro_bias_walk, accel_bias_walk: random-walk rates of the biases, per sqrt(s).
        accel_bias: initial accelerometer bias scale, m/s^2 (drawn per axis).
        tilt_noise: roll/pitch noise of the reported orientation, rad.
        yaw_drift: the reported heading's random walk, rad/sqrt(s).
        ideal: report the truth (no noise, bias or drift).
    """

    def __init__(self, rng: np.random.Generator, gyro_noise: float = 0.01, accel_noise: float = 0.1,
                 gyro_bias_walk: float = 1e-4, accel_bias_walk: float = 1e-3, accel_bias: float = 0.05,
                 tilt_noise: float = 0.005, yaw_drift: float = 0.002, ideal: bool = False):
        self.rng = rng
        self.gyro_noise, self.accel_noise = gyro_noise, accel_noise
        self.gyro_bias_walk, self.accel_bias_walk = gyro_bias_walk, accel_bias_walk
        self.tilt_noise, self.yaw_drift, self.ideal = tilt_noise, yaw_drift, ideal
        self.gyro_bias = np.zeros(3)
        self.accel_bias = np.zeros(3) if ideal else rng.normal(0.0, accel_bias, 3)
        self.yaw_error = 0.0

    def measure(self, quat: np.ndarray, omega_body: np.ndarray, acc_world: np.ndarray, dt: float) -> ImuReading:
        """The reading for true orientation ``quat`` ``(4,)`` (w, x, y, z), body angular velocity ``(3,)`` rad/s
        and world linear acceleration ``(3,)`` (m/s^2, gravity not included) over a sample period ``dt`` (s)."""
        rot = quat_to_rot(quat)
        specific = rot.T @ (np.asarray(acc_world) - GRAVITY)
        if self.ideal:
            return ImuReading(np.asarray(quat, dtype=np.float64).copy(), np.asarray(omega_body, dtype=np.float64),
                              specific)
        rng = self.rng
        self.gyro_bias += rng.normal(0.0, self.gyro_bias_walk * np.sqrt(dt), 3)
        self.accel_bias += rng.normal(0.0, self.accel_bias_walk * np.sqrt(dt), 3)
        self.yaw_error += rng.normal(0.0, self.yaw_drift * np.sqrt(dt))
        err = np.r_[rng.normal(0.0, self.tilt_noise, 2), self.yaw_error]  # roll, pitch, yaw errors (rad)
        dq = np.empty(4)
        mujoco.mju_axisAngle2Quat(dq, np.array([0.0, 0.0, 1.0]), err[2])
        tilt = np.empty(4)
        angle = float(np.linalg.norm(err[:2]))
        mujoco.mju_axisAngle2Quat(tilt, np.r_[err[:2], 0.0] / angle if angle > 0 else np.array([1.0, 0, 0]), angle)
        reported = np.empty(4)
        mujoco.mju_mulQuat(reported, dq, np.asarray(quat, dtype=np.float64))  # heading error about world z
        out = np.empty(4)
        mujoco.mju_mulQuat(out, reported, tilt)
        gyro = np.asarray(omega_body) + self.gyro_bias + rng.normal(0.0, self.gyro_noise, 3)
        accel = specific + self.accel_bias + rng.normal(0.0, self.accel_noise, 3)
        return ImuReading(out / np.linalg.norm(out), gyro, accel)
