"""``sim_bridge``: a MuJoCo robot behind the same ROS 2 topics as the real one.

Steps a WorldScape environment's MuJoCo model (``go1``, ``hopper``, ``walker2d``, ``piper``) on its own
thread, in real time (``real_time_factor`` 1) or in simulated time with ``/clock``
(``publish_clock: true``, as fast as ``real_time_factor`` allows; 0 means unthrottled).
Publishes ``joint_states`` (every hinge/slide joint; effort = actuator force) and, for a
floating base, ``odom`` (pose in ``odom``, twist in ``base_link``) and ``imu`` (orientation,
body angular velocity, proper acceleration). Executes ``joint_command``
(``trajectory_msgs/JointTrajectory``): ``positions`` for position-servo robots (the MJCF's
PD with its force limits does the rest), ``effort`` for motor-driven ones, each clipped to
the actuator's ``ctrlrange``; the trajectory starts at its header stamp and each point is
held from its ``time_from_start`` until the next (MPPI's piecewise-constant actions), the
last one after the end; a newer message replaces it. A malformed command (unknown or
missing joints, wrong length, NaN anywhere, decreasing times) is dropped and counted; the
last good one stays in force.

Pausing: with ``start_paused`` the simulation holds its initial state (still publishing it, and
``/clock`` frozen) until the ``unpause_physics`` service (``std_srvs/Empty``, Gazebo's name) is
called; ``pause_physics`` stops it again. The sim graphs of motor-driven robots (Hopper,
Walker2d, which fall without control) start paused and ``mppi_controller`` unpauses them once
its first plan exists.

PiPER tasks (``env: piper_pick_place``, ``piper_push``, ``piper_stack``) publish their
instruction once on ``instruction`` (``std_msgs/String``, transient local) for the policy.

Cameras: with ``camera`` set to one of the model's cameras, a rendering thread publishes
``camera/color/image_raw`` (``rgb8``), ``camera/depth/image_raw`` (``32FC1``, metres along the
optical axis) and ``camera/color/camera_info`` (pinhole intrinsics from the camera's
``fovy``) at ``camera_rate_hz`` (with ``wrist_camera`` also a second camera's, under
``wrist_camera/``, rendered from the same state), rendering a copy of the state offscreen so that the physics
thread never waits for it (``MUJOCO_GL=osmesa`` on a machine without a GPU).

Hardware-like sensors (``sensors: hardware``): only what a real robot measures, ``imu`` with white
noise, random-walk biases and a drifting heading (:class:`ws_sim.estimator.ImuModel`; its specific
force the mean over the publishing interval) and ``joint_states`` with encoder and effort noise;
no ``odom`` (``state_estimator`` makes it, as on the robot).

Parameters (``config/ros/*.yaml``): ``env``, ``seed``, ``sensors``, ``real_time_factor``,
``publish_clock``, ``clock_rate_hz``, ``start_paused``, ``publish_rate_hz``, ``frame_id``/``base_frame_id``, ``camera``,
``camera_rate_hz``, ``camera_width``/``camera_height``, ``wrist_camera``.
"""

from __future__ import annotations

import threading
import time

import mujoco
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, Imu, JointState
from std_msgs.msg import String
from std_srvs.srv import Empty
from trajectory_msgs.msg import JointTrajectory

from ws_ros.common import (command_qos, diagnostic_status, free_base_to_odom_arrays, latched_qos, quat_to_matrix,
                           run_node, s_to_stamp, sensor_qos)
from ws_sim.envs import make_env
from ws_sim.robot_io import RobotIO
from ws_sim.safety import JointLimits

__all__ = ["SimBridge", "main"]


def _descriptor(text: str, read_only: bool = True) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only)


class SimBridge(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("sim_bridge", **kwargs)
        p = self.declare_parameter
        self.env_name = p("env", "go1", _descriptor(
            "environment: go1, hopper, walker2d, piper, or a PiPER task: piper_pick_place, piper_push, piper_stack")).value
        seed = p("seed", 0, _descriptor("reset seed")).value
        self.rtf = float(p("real_time_factor", 1.0,
                           _descriptor("simulated seconds per wall second; 0 = as fast as possible")).value)
        self.publish_clock = bool(p("publish_clock", False,
                                    _descriptor("publish /clock with simulated time (use_sim_time)")).value)
        rate = float(p("publish_rate_hz", 100.0, _descriptor("joint_states/odom/imu rate, Hz")).value)
        clock_rate = float(p("clock_rate_hz", 1000.0, _descriptor(
            "/clock rate, Hz of simulated time (at most one per physics step); a sim-time 90 Hz "
            "controller ticks no finer than this")).value)
        self.sensors = p("sensors", "truth", _descriptor(
            "truth: odom and an ideal imu from the simulator; hardware: only what a real robot measures, imu with "
            "noise, biases and a drifting heading and joint_states with encoder and effort noise, no odom (run "
            "state_estimator beside it)")).value
        self.frame_id = p("frame_id", "odom", _descriptor("odometry frame")).value
        self.base_frame_id = p("base_frame_id", "base_link", _descriptor("robot base frame")).value
        if self.rtf < 0:
            raise ValueError(f"real_time_factor must be >= 0, got {self.rtf}")
        if self.rtf == 0 and not self.publish_clock:
            raise ValueError("real_time_factor 0 (unthrottled) needs publish_clock: true")
        if self.sensors not in ("truth", "hardware"):
            raise ValueError(f"sensors must be 'truth' or 'hardware', got {self.sensors!r}")
        self.env = make_env(self.env_name)
        self.env.reset(seed=int(seed))
        self._rng = np.random.default_rng(int(seed) + 1)  # the hardware-like sensors' noise
        self.model, self.data = self.env.model, self.env.data
        self.io = RobotIO.from_model(self.model)
        self.limits = JointLimits.from_model(self.model)
        self._cmd_index = {n: i for i, n in enumerate(self.io.command_joints)}
        self._ctrl = self.data.ctrl.copy()
        self._traj_times = self._traj_ctrl = None
        self._traj_start = 0.0
        self._lock = threading.Lock()
        self.commands_applied = 0
        self.commands_rejected = 0
        self.pauses = 0  # pause_physics calls that paused a running simulation
        self.last_rejection = ""
        if rate <= 0 or clock_rate <= 0:
            raise ValueError(f"publish_rate_hz and clock_rate_hz must be positive, got {rate} and {clock_rate}")
        self._every = max(1, int(round(1.0 / (rate * self.model.opt.timestep))))
        self._clock_every = max(1, int(round(1.0 / (clock_rate * self.model.opt.timestep))))
        self.pub_js = self.create_publisher(JointState, "joint_states", sensor_qos())
        hardware = self.sensors == "hardware"
        self.pub_odom = self.create_publisher(Odometry, "odom", sensor_qos()) \
            if self.io.floating_base and not hardware else None
        self.pub_imu = self.create_publisher(Imu, "imu", sensor_qos()) if self.io.floating_base else None
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "joint_command", self._on_command, command_qos())
        self.create_timer(1.0, self._publish_diagnostics)
        self._running = threading.Event()
        if not p("start_paused", False, _descriptor("hold the initial state until unpause_physics is called")).value:
            self._running.set()
        self.create_service(Empty, "unpause_physics", self._on_unpause)
        layout = getattr(self.env, "layout", None)  # a PiPER task: its instruction, for the policy
        if layout is not None:
            self.pub_instruction = self.create_publisher(String, "instruction", latched_qos())
            self.pub_instruction.publish(String(data=layout.instruction))
            self.get_logger().info(f"task instruction: {layout.instruction!r}")
        self.create_service(Empty, "pause_physics", self._on_pause)
        self.camera = p("camera", "", _descriptor("camera of the model to publish (empty: none)")).value
        self.camera_rate = float(p("camera_rate_hz", 10.0, _descriptor("camera frame rate, Hz")).value)
        self.camera_size = (int(p("camera_width", 320, _descriptor("image width, px")).value),
                            int(p("camera_height", 240, _descriptor("image height, px")).value))
        self.wrist_camera = p("wrist_camera", "", _descriptor(
            "a second camera of the model published under wrist_camera/ at the same size and rate, for policies "
            "that read a wrist camera too (empty: none)")).value
        self.frames_published = 0
        if self.wrist_camera and not self.camera:
            raise ValueError("wrist_camera needs camera (the scene camera) set too")
        if self.camera:
            cams = []
            for name, ns in ((self.camera, "camera"), (self.wrist_camera, "wrist_camera")):
                if not name:
                    continue
                cam = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
                if cam < 0:
                    names = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]
                    raise ValueError(f"model {self.env_name} has no camera {name!r} (cameras: {names})")
                cams.append((cam, f"{name}_optical_frame", self.create_publisher(Image, f"{ns}/color/image_raw", sensor_qos()),
                             self.create_publisher(Image, f"{ns}/depth/image_raw", sensor_qos()),
                             self.create_publisher(CameraInfo, f"{ns}/color/camera_info", sensor_qos())))
            self._cam_thread = threading.Thread(target=self._render_loop, args=(cams,), name="sim_bridge-camera",
                                                daemon=True)
        from ws_sim.estimator import EncoderNoise, ImuModel

        self._encoder_noise = EncoderNoise()
        self._imu = None
        if hardware and self.io.floating_base:
            self._imu = ImuModel(self._rng)
            self._imu_last = (self.data.time, self.data.qvel[:3].copy())
        self._stop = threading.Event()
        self._steps = 0
        self._t_start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="sim_bridge-physics", daemon=True)
        self._thread.start()
        if self.camera:
            self._cam_thread.start()
        self.get_logger().info(f"simulating {self.env_name} ({'position' if self.limits.command == 'position' else 'effort'}"
                               f" commands for {list(self.io.command_joints)}), real-time factor {self.rtf}"
                               f"{', publishing /clock' if self.publish_clock else ''}")

    # --- commands ---------------------------------------------------------------------------
    def _on_command(self, msg: JointTrajectory) -> None:
        kind = "positions" if self.limits.command == "position" else "effort"
        try:
            if not msg.points:
                raise ValueError("no trajectory point")
            names = list(msg.joint_names)
            unknown = [n for n in names if n not in self._cmd_index]
            missing = [n for n in self.io.command_joints if n not in names]
            if unknown or missing:
                raise ValueError(f"unknown joints {unknown}, missing joints {missing}")
            rows, times = [], []
            for pt in msg.points:
                values = np.asarray(getattr(pt, kind), dtype=np.float64)
                if len(values) != len(names):
                    raise ValueError(f"{len(names)} joint names but {len(values)} {kind}")
                rows.append(values)
                times.append(pt.time_from_start.sec + 1e-9 * pt.time_from_start.nanosec)
            values = np.stack(rows)
            times = np.asarray(times)
            if not np.all(np.isfinite(values)):
                raise ValueError("non-finite command")
            if np.any(np.diff(times) < 0):
                raise ValueError("time_from_start decreases along the trajectory")
            ctrl = np.empty_like(values)
            ctrl[:, [self._cmd_index[n] for n in names]] = values
            lo, hi = self.model.actuator_ctrlrange.T
            ctrl = np.where(self.model.actuator_ctrllimited.astype(bool), np.clip(ctrl, lo, hi), ctrl)
        except ValueError as e:
            self.commands_rejected += 1
            self.last_rejection = str(e)
            return
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with self._lock:
            # the trajectory starts at its stamp (simulated time with /clock, else wall time); unstamped: now
            self._traj_start = stamp if stamp > 0 else (self.data.time if self.publish_clock else time.time())
            self._traj_times, self._traj_ctrl = times, ctrl
            self._ctrl[:] = ctrl[0]
        self.commands_applied += 1

    def _current_ctrl(self) -> np.ndarray:
        """The trajectory point in force now (each held until the next one's time; the last one
        after the end). Called under the lock."""
        if self._traj_times is None or len(self._traj_times) == 1:
            return self._ctrl
        now = self.data.time if self.publish_clock else time.time()
        i = int(np.searchsorted(self._traj_times, now - self._traj_start, side="right")) - 1
        return self._traj_ctrl[max(i, 0)]

    def _on_unpause(self, request, response):
        if not self._running.is_set():
            self._log_pause(f"unpaused at t = {self.data.time:.3f} s")
        self._running.set()
        return response

    def _on_pause(self, request, response):
        if self._running.is_set():
            self.pauses += 1
            self._log_pause(f"paused at t = {self.data.time:.3f} s")
        self._running.clear()
        return response

    def _log_pause(self, text: str) -> None:
        """The first pauses at info; later ones (a controller in lockstep may pause many times a
        second) at debug, counted in /diagnostics as ``pauses``."""
        if self.pauses <= 2:
            last = self.pauses == 2 and text.startswith("paused")
            self.get_logger().info(text + (" (further pauses are logged at debug level)" if last else ""))
        else:
            self.get_logger().debug(text)

    # --- physics --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._run_loop()
        except Exception:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down while this thread was publishing: stop quietly

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            if not self._running.is_set():  # paused: the state and the clock stand still, but are published
                if self.pub_clock is not None:
                    self.pub_clock.publish(Clock(clock=s_to_stamp(self.data.time)))
                self._publish_state()
                self._running.wait(self._every * self.model.opt.timestep)
                continue
            self._run_until_paused()

    def _run_until_paused(self) -> None:
        t0 = time.perf_counter()
        sim0 = self.data.time
        while not self._stop.is_set() and self._running.is_set():
            with self._lock:  # the camera thread copies the state under the same lock
                self.data.ctrl[:] = self._current_ctrl()
                mujoco.mj_step(self.model, self.data)
            self._steps += 1
            if self.pub_clock is not None and self._steps % self._clock_every == 0:
                self.pub_clock.publish(Clock(clock=s_to_stamp(self.data.time)))
            if self._steps % self._every == 0:
                self._publish_state()
            if self.rtf > 0:
                delay = t0 + (self.data.time - sim0) / self.rtf - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

    def _stamp(self):
        return s_to_stamp(self.data.time) if self.publish_clock else self.get_clock().now().to_msg()

    def _publish_state(self) -> None:
        stamp = self._stamp()
        q, qd, base = self.io.split(np.concatenate([self.data.qpos, self.data.qvel]))
        js = JointState()
        js.header.stamp = stamp
        js.name = list(self.io.joint_names)
        force = np.zeros(len(self.io.joint_names))
        force[[self.io.joint_names.index(n) for n in self.io.command_joints]] = self.data.actuator_force
        if self.sensors == "hardware":  # encoders and current sensing are not perfect
            q, qd, force = self._encoder_noise.apply(self._rng, q, qd, force)
        js.position = q.tolist()
        js.velocity = qd.tolist()
        js.effort = force.tolist()
        self.pub_js.publish(js)
        if base is None:
            return
        o = free_base_to_odom_arrays(base[:7], base[7:])
        if self._imu is not None:  # hardware-like: no odom; the IMU's view of the motion since the last sample
            t_prev, v_prev = self._imu_last
            dt = self.data.time - t_prev
            acc_world = (base[7:10] - v_prev) / dt if dt > 0 else np.zeros(3)
            self._imu_last = (self.data.time, base[7:10].copy())
            reading = self._imu.measure(base[3:7], base[10:13], acc_world, max(dt, self.model.opt.timestep))
            imu = Imu()
            imu.header.stamp, imu.header.frame_id = stamp, self.base_frame_id
            imu.orientation.w, imu.orientation.x, imu.orientation.y, imu.orientation.z = reading.quat.tolist()
            imu.angular_velocity.x, imu.angular_velocity.y, imu.angular_velocity.z = reading.gyro.tolist()
            imu.linear_acceleration.x, imu.linear_acceleration.y, imu.linear_acceleration.z = reading.accel.tolist()
            self.pub_imu.publish(imu)
            return
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id, odom.child_frame_id = stamp, self.frame_id, self.base_frame_id
        pose, tw = odom.pose.pose, odom.twist.twist
        pose.position.x, pose.position.y, pose.position.z = o["position"].tolist()
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = o["orientation_xyzw"].tolist()
        tw.linear.x, tw.linear.y, tw.linear.z = o["linear_body"].tolist()
        tw.angular.x, tw.angular.y, tw.angular.z = o["angular_body"].tolist()
        self.pub_odom.publish(odom)
        imu = Imu()
        imu.header.stamp, imu.header.frame_id = stamp, self.base_frame_id
        imu.orientation = pose.orientation
        imu.angular_velocity = tw.angular
        acc = quat_to_matrix(base[3:7]).T @ (self.data.qacc[:3] - self.model.opt.gravity)  # proper acceleration
        imu.linear_acceleration.x, imu.linear_acceleration.y, imu.linear_acceleration.z = acc.tolist()
        self.pub_imu.publish(imu)

    # --- camera ----------------------------------------------------------------------------------
    def _render_loop(self, cams: list) -> None:
        """Render every camera of ``cams`` ((id, frame, rgb, depth and info publishers)) from one copy
        of the state per frame, so the scene and wrist images show the same instant."""
        w, h = self.camera_size
        renderer = mujoco.Renderer(self.model, h, w)  # the GL context belongs to this thread
        data = mujoco.MjData(self.model)
        infos = []
        for cam, *_ in cams:
            f = 0.5 * h / np.tan(np.radians(self.model.cam_fovy[cam]) / 2)
            infos.append(CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                                    k=[f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0],
                                    r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                                    p=[f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]))
        try:
            self._render_frames(cams, infos, renderer, data, w, h)
        except Exception:
            if self.context.ok():
                raise
        finally:
            renderer.close()

    def _render_frames(self, cams, infos, renderer, data, w, h) -> None:
        while not self._stop.wait(1.0 / self.camera_rate):
            with self._lock:
                data.qpos[:], data.qvel[:], data.time = self.data.qpos, self.data.qvel, self.data.time
            mujoco.mj_forward(self.model, data)
            stamp = s_to_stamp(data.time) if self.publish_clock else self.get_clock().now().to_msg()
            for (cam, frame, pub_rgb, pub_depth, pub_info), info in zip(cams, infos):
                renderer.update_scene(data, camera=cam)
                rgb = renderer.render()
                renderer.enable_depth_rendering()
                depth = renderer.render().astype(np.float32)
                renderer.disable_depth_rendering()
                for pub, img, enc, step in ((pub_rgb, rgb, "rgb8", 3 * w), (pub_depth, depth, "32FC1", 4 * w)):
                    msg = Image(height=h, width=w, encoding=enc, is_bigendian=0, step=step, data=img.tobytes())
                    msg.header.stamp, msg.header.frame_id = stamp, frame
                    pub.publish(msg)
                info.header.stamp, info.header.frame_id = stamp, frame
                pub_info.publish(info)
            self.frames_published += 1

    def _publish_diagnostics(self) -> None:
        wall = time.perf_counter() - self._t_start
        level = 1 if self.commands_rejected else 0
        msg = DiagnosticArray()
        msg.header.stamp = self._stamp()
        msg.status = [diagnostic_status(
            f"{self.get_name()}: {self.env_name} simulation", level,
            f"rejected {self.commands_rejected} command(s): {self.last_rejection}" if level else
            ("running" if self._running.is_set() else "paused (call unpause_physics)"),
            {"sim_time_s": round(self.data.time, 3), "achieved_real_time_factor": round(self.data.time / wall, 3)
             if wall > 0 else 0.0, "commands_applied": self.commands_applied,
             "commands_rejected": self.commands_rejected, "pauses": self.pauses}, hardware_id=self.env_name)]
        self.pub_diag.publish(msg)

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self.camera:
            self._cam_thread.join(timeout=2.0)
        self.env.close()
        return super().destroy_node()


def main(args=None) -> None:
    """``ros2 run worldscape sim_bridge --ros-args -p env:=go1``."""
    run_node(SimBridge, args)


if __name__ == "__main__":
    main()
