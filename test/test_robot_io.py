"""Joint-level interface of the MuJoCo robots and the odometry conventions (no ROS needed)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from ws_ros.common import free_base_to_odom_arrays, odom_arrays_to_free_base, quat_mj_to_ros, quat_to_matrix
from ws_sim.envs import make_env
from ws_sim.go1 import JOINTS
from ws_sim.robot_io import RobotIO


def test_go1_state_round_trips_through_joint_readings_and_odometry():
    env = make_env("go1")
    env.reset(seed=0)
    env.step(env.neutral_action + 0.1)  # moving: nonzero velocities
    io = RobotIO.from_model(env.model)
    assert io.floating_base and io.base_dim == 13 and io.joint_names == JOINTS and io.command_joints == JOINTS
    state = env.state
    q, qd, base = io.split(state)
    np.testing.assert_array_equal(io.join(q, qd, base), state)
    # through ROS conventions: world-frame linear velocity <-> body-frame twist
    o = free_base_to_odom_arrays(base[:7], base[7:])
    rot = quat_to_matrix(base[3:7])
    np.testing.assert_allclose(rot @ o["linear_body"], base[7:10], atol=1e-12)
    np.testing.assert_allclose(o["orientation_xyzw"], quat_mj_to_ros(base[3:7]))
    qpos, qvel = odom_arrays_to_free_base(o["position"], o["orientation_xyzw"], o["linear_body"], o["angular_body"])
    np.testing.assert_allclose(np.r_[qpos, qvel], base, atol=1e-12)
    with pytest.raises(ValueError, match="base vector"):
        io.join(q, qd)


def test_quaternion_matrix_matches_mujoco():
    quat = np.array([0.9, 0.1, -0.3, 0.2])
    quat /= np.linalg.norm(quat)
    ref = np.zeros(9)
    mujoco.mju_quat2Mat(ref, quat)
    np.testing.assert_allclose(quat_to_matrix(quat), ref.reshape(3, 3), atol=1e-12)


def test_planar_robot_has_no_base_and_reads_its_root_joints(hopper_env):
    io = RobotIO.from_model(hopper_env.model)
    assert not io.floating_base
    assert io.joint_names == ("rootx", "rootz", "rooty", "thigh_joint", "leg_joint", "foot_joint")
    assert io.command_joints == ("thigh_joint", "leg_joint", "foot_joint")
    state = np.arange(12.0)
    q, qd, base = io.split(state)
    assert base is None
    np.testing.assert_array_equal(io.join(q, qd), state)
    with pytest.raises(ValueError, match="shape"):
        io.split(np.zeros(5))
