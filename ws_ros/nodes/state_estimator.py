"""``state_estimator``: the Go1's ``odom`` from its ``imu`` and ``joint_states``, as a real robot needs.

A thin node around :class:`ws_sim.estimator.BaseStateEstimator` (the linear Kalman filter over
base position, velocity and feet of Bloesch et al. 2013; see that module). Each ``imu`` message
(orientation, angular rate, specific force, base frame) steps the filter together with the
``joint_states`` message of the same instant (positions, velocities and efforts of the 12 leg
joints, any order, by name; stamps within ``sync_tolerance_s``), as both bridges publish them:
the two are paired by stamp, whichever arrives first, because an effort from another instant
puts a swinging foot on the ground and drags the velocity estimate down. A foot stands when the ground force its joint efforts hold pushes up harder than
``contact_force_n`` and its contact point is within ``contact_height_margin_m`` of the lowest foot's
(``LegKinematics.contact``; 0 turns the height test off). Publishes ``nav_msgs/Odometry`` on ``odom`` (pose in ``frame_id``, twist in
``base_frame_id``, as ``sim_bridge`` publishes the truth) with covariances: position and
velocity from the filter, orientation and angular rate from the IMU's (or the
``orientation_std``/``gyro_std`` parameters where the IMU leaves them unknown).

Start: the first ``imu`` message after a joint reading starts the estimate at ``x = y = 0`` with
the base as high as the standing feet put it (all four on the ground). Readings that are not
finite, IMU stamps that go backwards or jump more than ``max_dt_s`` are dropped and counted
(the estimate is kept; after a jump the next message restarts the time base), and
``/diagnostics`` reports it. A message with the previous stamp again (a paused simulation)
republishes the estimate as it is.

Parameters: ``robot`` (go1), ``contact_force_n``, ``contact_height_margin_m``, ``frame_id``, ``base_frame_id``,
``max_dt_s``, ``sync_tolerance_s``, ``orientation_std``, ``gyro_std``, ``ground_height``.
"""

from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState

from ws_ros.common import diagnostic_status, run_node, sensor_qos, stamp_to_s
from ws_sim.estimator import BaseStateEstimator, LegKinematics, quat_to_rot

__all__ = ["StateEstimatorNode", "main"]

ROBOTS = {"go1": ("FR_foot", "FL_foot", "RR_foot", "RL_foot")}


def _descriptor(text: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=True)


class StateEstimatorNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("state_estimator", **kwargs)
        p = self.declare_parameter
        robot = p("robot", "go1", _descriptor(f"legged robot: {sorted(ROBOTS)}")).value
        self.contact_force = float(p("contact_force_n", 20.0, _descriptor(
            "a foot stands when its joint efforts hold more than this upward ground force, N")).value)
        self.height_margin = float(p("contact_height_margin_m", 0.02, _descriptor(
            "a standing foot is at most this high above the lowest foot (flat ground), m; 0: no height test")).value)
        self.frame_id = p("frame_id", "odom", _descriptor("odometry frame")).value
        self.base_frame_id = p("base_frame_id", "base_link", _descriptor("robot base frame")).value
        self.max_dt = float(p("max_dt_s", 0.1, _descriptor("larger gaps between IMU stamps restart the time base")).value)
        self.orientation_std = float(p("orientation_std", 0.01, _descriptor(
            "orientation std (rad) when the IMU reports none")).value)
        self.gyro_std = float(p("gyro_std", 0.01, _descriptor("angular rate std (rad/s) when the IMU reports none")).value)
        self.sync_tol = float(p("sync_tolerance_s", 0.002, _descriptor(
            "an imu and a joint_states message this close in time are one instant")).value)
        ground = float(p("ground_height", 0.0, _descriptor("flat ground height, m")).value)
        if robot not in ROBOTS:
            raise ValueError(f"state_estimator knows robots {sorted(ROBOTS)}, not {robot!r}")
        if self.contact_force <= 0 or self.max_dt <= 0:
            raise ValueError("contact_force_n and max_dt_s must be positive")
        if self.height_margin < 0:
            raise ValueError(f"contact_height_margin_m must be >= 0, got {self.height_margin}")
        from ws_sim.envs import make_env

        env = make_env(robot)
        self.kin = LegKinematics(env.model, ROBOTS[robot])
        env.close()
        self.joint_names = [self.kin.model.joint(j).name for j in range(1, self.kin.model.njnt)]
        self.estimator = BaseStateEstimator(self.kin, ground_height=ground)
        self._joints = None  # (stamp, (q, dq, tau) in the model's order) of the newest joint_states
        self._imu = None  # the newest imu message not yet used
        self._last_stamp = None
        self.started = False
        self.updates = 0
        self.rejected = 0
        self.last_rejection = ""
        self.pub = self.create_publisher(Odometry, "odom", sensor_qos())
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointState, "joint_states", self._on_joints, sensor_qos())
        self.create_subscription(Imu, "imu", self._on_imu, sensor_qos())
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f"estimating the {robot}'s base state from imu and joint_states into {self.frame_id}")

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.last_rejection = why

    def _on_joints(self, msg: JointState) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in self.joint_names if n not in index]
        if missing or not (len(msg.position) == len(msg.velocity) == len(msg.effort) == len(msg.name)):
            self._reject(f"joint_states lacks joints {missing} or a position, velocity or effort per joint")
            return
        order = [index[n] for n in self.joint_names]
        q, dq, tau = (np.asarray(v, dtype=np.float64)[order] for v in (msg.position, msg.velocity, msg.effort))
        if not all(np.all(np.isfinite(v)) for v in (q, dq, tau)):
            self._reject("non-finite joint_states")
            return
        self._joints = (stamp_to_s(msg.header.stamp), (q, dq, tau))
        self._pair()

    def _on_imu(self, msg: Imu) -> None:
        o, w, a = msg.orientation, msg.angular_velocity, msg.linear_acceleration
        values = np.array([o.w, o.x, o.y, o.z, w.x, w.y, w.z, a.x, a.y, a.z])
        if not np.all(np.isfinite(values)) or np.linalg.norm(values[:4]) < 0.5:
            self._reject("non-finite or zero IMU reading")  # dropped on arrival: it never pairs
            return
        self._imu = msg
        self._pair()

    def _pair(self) -> None:
        """Step once an imu message and a joint_states message of the same instant have both arrived."""
        if self._imu is None or self._joints is None:
            return
        if abs(stamp_to_s(self._imu.header.stamp) - self._joints[0]) > self.sync_tol:
            return  # the other half of this instant is still on its way (or was lost: the next pair steps)
        msg, self._imu = self._imu, None
        self._step(msg, *self._joints[1])

    def _step(self, msg: Imu, q: np.ndarray, dq: np.ndarray, tau: np.ndarray) -> None:
        o, w, a = msg.orientation, msg.angular_velocity, msg.linear_acceleration
        quat = np.array([o.w, o.x, o.y, o.z])
        gyro, accel = np.array([w.x, w.y, w.z]), np.array([a.x, a.y, a.z])
        stamp = stamp_to_s(msg.header.stamp)
        rot = quat_to_rot(quat)
        if not self.started:
            r, _ = self.kin(q, np.zeros_like(q), rot)
            height = self.estimator.ground - float(np.mean((r @ rot.T)[:, 2]))  # all four feet on the ground
            self.estimator.reset(np.array([0.0, 0.0, height]), quat, q)
            self.started, self._last_stamp = True, stamp
            self._publish(msg, self.estimator.base_state(), rot)
            return
        dt = stamp - self._last_stamp
        if dt == 0.0:  # the same instant again (a paused simulation): the estimate as it is
            self._publish(msg, self.estimator.base_state(), rot)
            return
        if not 0.0 < dt <= self.max_dt:
            self._reject(f"IMU stamp step {dt:.4f} s outside (0, {self.max_dt}]")
            self._last_stamp = stamp if dt > 0 else self._last_stamp
            return
        self._last_stamp = stamp
        contact = self.kin.contact(q, tau, rot, self.contact_force, self.height_margin or None)
        state = self.estimator.step(dt, quat, gyro, accel, q, dq, contact)
        self.updates += 1
        self._publish(msg, state, rot)

    def _publish(self, imu: Imu, state: np.ndarray, rot: np.ndarray) -> None:
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id, odom.child_frame_id = imu.header.stamp, self.frame_id, self.base_frame_id
        pose, tw = odom.pose, odom.twist
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in state[:3])
        pose.pose.orientation = imu.orientation
        v_body = rot.T @ state[7:10]
        tw.twist.linear.x, tw.twist.linear.y, tw.twist.linear.z = (float(v) for v in v_body)
        tw.twist.angular = imu.angular_velocity
        cov = self.estimator.covariance
        pc = np.zeros((6, 6))
        pc[:3, :3] = cov[:3, :3]
        ori = np.asarray(imu.orientation_covariance, dtype=np.float64).reshape(3, 3)
        pc[3:, 3:] = ori if ori[0, 0] > 0 else np.eye(3) * self.orientation_std ** 2
        tc = np.zeros((6, 6))
        tc[:3, :3] = rot.T @ cov[3:6, 3:6] @ rot
        gyr = np.asarray(imu.angular_velocity_covariance, dtype=np.float64).reshape(3, 3)
        tc[3:, 3:] = gyr if gyr[0, 0] > 0 else np.eye(3) * self.gyro_std ** 2
        pose.covariance = pc.reshape(-1).tolist()
        tw.covariance = tc.reshape(-1).tolist()
        self.pub.publish(odom)

    def _publish_diagnostics(self) -> None:
        level = 0 if self.started and not self.rejected else 1
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(
            f"{self.get_name()}: base state", level,
            ("estimating" if self.started else "waiting for imu and joint_states")
            + (f"; dropped {self.rejected} reading(s): {self.last_rejection}" if self.rejected else ""),
            {"updates": self.updates, "rejected": self.rejected}, hardware_id="state_estimator")]
        self.pub_diag.publish(msg)


def main(args=None) -> None:
    run_node(StateEstimatorNode, args)
