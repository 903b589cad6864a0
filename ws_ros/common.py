"""ROS 2 plumbing shared by the WorldScape nodes: QoS, message conversions, diagnostics.

Outer layer (DESIGN.md, layer 2): nodes convert messages to arrays, call the core libraries
and convert back. Everything here that does not need a message class is plain NumPy and
tested without ROS; the message helpers import their packages when called.

Frames and conventions (REP 103/105): ``odom`` carries the base pose in the world (``odom``)
frame and the twist in the base (``child_frame_id``) frame. MuJoCo's free joint stores the
quaternion as ``(w, x, y, z)``, the linear velocity in the world frame and the angular
velocity in the body frame; ROS quaternions are ``(x, y, z, w)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sensor_qos", "command_qos", "latched_qos", "quat_mj_to_ros", "quat_ros_to_mj", "quat_to_matrix",
           "free_base_to_odom_arrays", "odom_arrays_to_free_base", "stamp_to_s", "s_to_stamp",
           "diagnostic_status", "run_node"]


# --- QoS (DESIGN.md: sensor data best effort, commands reliable keep-last 1, estop transient-local) ---
def sensor_qos():
    """Best effort, keep last 5, volatile: ``joint_states``, ``odom``, ``imu``, cameras."""
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSHistoryPolicy, QoSDurabilityPolicy

    return QoSProfile(depth=5, reliability=QoSReliabilityPolicy.BEST_EFFORT, history=QoSHistoryPolicy.KEEP_LAST,
                      durability=QoSDurabilityPolicy.VOLATILE)


def command_qos():
    """Reliable, keep last 1: ``joint_command`` (only the newest command matters)."""
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSHistoryPolicy, QoSDurabilityPolicy

    return QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST,
                      durability=QoSDurabilityPolicy.VOLATILE)


def latched_qos():
    """Reliable, transient local, keep last 1: ``estop`` (a late joiner still sees it)."""
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSHistoryPolicy, QoSDurabilityPolicy

    return QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST,
                      durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


# --- quaternions and the free base --------------------------------------------------------
def quat_mj_to_ros(q_wxyz: np.ndarray) -> np.ndarray:
    """MuJoCo ``(w, x, y, z)`` -> ROS ``(x, y, z, w)``."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    return np.array([q[1], q[2], q[3], q[0]])


def quat_ros_to_mj(q_xyzw: np.ndarray) -> np.ndarray:
    """ROS ``(x, y, z, w)`` -> MuJoCo ``(w, x, y, z)``."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    return np.array([q[3], q[0], q[1], q[2]])


def quat_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` (body -> world) of a unit quaternion ``(w, x, y, z)``."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def free_base_to_odom_arrays(qpos7: np.ndarray, qvel6: np.ndarray) -> dict:
    """A MuJoCo free joint's ``qpos[0:7]``, ``qvel[0:6]`` -> odometry fields.

    Returns:
        ``{"position" (3,), "orientation_xyzw" (4,), "linear_body" (3,), "angular_body" (3,)}``:
        world position, ROS quaternion, and the twist in the base frame (m/s, rad/s).
    """
    qpos7, qvel6 = np.asarray(qpos7, dtype=np.float64), np.asarray(qvel6, dtype=np.float64)
    rot = quat_to_matrix(qpos7[3:7])
    return {"position": qpos7[:3].copy(), "orientation_xyzw": quat_mj_to_ros(qpos7[3:7]),
            "linear_body": rot.T @ qvel6[:3], "angular_body": qvel6[3:6].copy()}


def odom_arrays_to_free_base(position, orientation_xyzw, linear_body, angular_body) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`free_base_to_odom_arrays`: ``(qpos (7,), qvel (6,))`` in MuJoCo's convention."""
    qw = quat_ros_to_mj(orientation_xyzw)
    rot = quat_to_matrix(qw)
    qpos = np.concatenate([np.asarray(position, dtype=np.float64), qw / np.linalg.norm(qw)])
    qvel = np.concatenate([rot @ np.asarray(linear_body, dtype=np.float64), np.asarray(angular_body, dtype=np.float64)])
    return qpos, qvel


# --- time -------------------------------------------------------------------------------------
def stamp_to_s(stamp) -> float:
    """``builtin_interfaces/Time`` -> seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def s_to_stamp(t: float):
    """Seconds -> ``builtin_interfaces/Time``."""
    from builtin_interfaces.msg import Time

    ns = int(round(float(t) * 1e9))  # whole nanoseconds first: 0.9999999999 s is 1 s, never 0 s
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# --- diagnostics ------------------------------------------------------------------------------
def diagnostic_status(name: str, level: int, message: str, values: dict, hardware_id: str = ""):
    """A ``diagnostic_msgs/DiagnosticStatus`` (level 0 OK, 1 WARN, 2 ERROR, 3 STALE)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])


# --- running a node -----------------------------------------------------------------------------
def run_node(factory, args=None) -> None:
    """``rclpy.init``, build the node, spin it on a multi-threaded executor until Ctrl-C, shut down.

    A node that fails to start (bad parameter, missing model or SDK) logs one line naming the
    problem and exits with status 2.
    """
    import sys

    status = run_nodes([factory], args)
    if status:
        sys.exit(status)


def run_nodes(factories, args=None, duration: float | None = None) -> int:
    """Several nodes in one process on one executor (``ws launch``): init, build them in order,
    spin until Ctrl-C (or ``duration`` seconds), destroy them in reverse order and shut down.

    The executor is rclpy's ``SingleThreadedExecutor``. The nodes keep their heavy work on
    threads of their own (physics, rendering, planning, the 90 Hz tick), so callbacks are
    short; rclpy's ``MultiThreadedExecutor`` hands each one to a thread pool, and that churn
    starved those threads of the GIL: measured on the Go1 graph in one process, planning took
    5-8 s per MPPI cycle instead of 13 ms and the simulation ran at 4 % of the requested
    real-time factor.

    Returns:
        0 after a clean stop; 2 when a node fails to start (one line on stderr names why;
        the nodes already built are destroyed).
    """
    import sys
    import time

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    nodes = []
    try:
        try:
            for factory in factories:
                nodes.append(factory())
        except (ValueError, FileNotFoundError, ImportError, KeyError, RuntimeError) as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        end = None if duration is None else time.monotonic() + duration
        try:
            if end is None:
                executor.spin()
            else:
                while rclpy.ok() and time.monotonic() < end:
                    executor.spin_once(timeout_sec=0.1)
        except Exception:  # a signal shut the context down under a waiting executor
            # a Ctrl-C can land inside rclpy's take (RuntimeError) just before the context is
            # marked shut down: give the shutdown up to a second to show before calling it a fault
            deadline = time.monotonic() + 1.0
            while rclpy.ok() and time.monotonic() < deadline:
                time.sleep(0.01)
            if rclpy.ok():
                raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in reversed(nodes):
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
