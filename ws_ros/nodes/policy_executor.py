"""``policy_executor``: WorldScape Policy on the robot, behind the same safety layer as MPPI.

Inputs: ``camera/color/image_raw`` (``rgb8``) and ``camera/depth/image_raw`` (``32FC1``
metres, or ``16UC1`` millimetres), for a policy that reads a wrist camera too (``ws policy
collect --wrist``) also ``wrist_camera/color/image_raw`` and ``wrist_camera/depth/image_raw``,
``joint_states`` and ``instruction`` (``std_msgs/String``, transient local). A timer at ``rate_hz`` (the policy's control rate) runs
:class:`ws_policy.executor.ChunkExecutor`: chunks are inferred on a worker thread while the
previous one is executed (receding horizon, temporal ensembling), and every tick publishes
``joint_command`` (point 0 for now, the rest of the current chunk at its step times).

Safety (:class:`ws_sim.safety.SafetySupervisor`, as ``mppi_controller``): joint readings are
validated (NaN, unknown or missing joints, lengths, ranges, stamps) and counted by reason;
images are checked (encoding, size, finite non-negative depth, age under
``image_timeout_s``); with no valid state or images, or no instruction, the node holds the
last valid position and reports ERROR (or WARN before it has ever run) on ``/diagnostics``;
``estop`` latches a hold until released; every command is clamped to the MJCF's limits and
a non-finite chunk is never published.

Human in the loop (issue 8): while ``teleop/intervention`` (``std_msgs/Bool``, transient local)
is true the node publishes nothing and runs no inference (mode ``human`` on ``/diagnostics``);
the ``teleop`` node commands the arm. When it turns false the executor starts afresh and its
commands are slew-rate limited from the last command in force (it listens to ``joint_command``,
whoever sent it) by ``handover_max_step`` per tick until they meet the policy's: handing back
never jumps the commanded positions. Until its first chunk is ready it holds that last command
(not the measured joints, which lag a moving arm).

Episodes: every message on ``instruction`` starts a new one, the same words again included (a new
executor; a pose policy's object memory, which its checkpoint sets, forgets the last layout);
``episodes`` and ``object_memory`` on ``/diagnostics`` count them and say how many first estimates the
memory keeps.

Parameters: ``checkpoint`` (a ``ws policy train`` checkpoint), ``rate_hz``, ``replan_every``
(0: half a chunk), ``ensemble_m`` (negative: newest chunk only), ``euler_steps`` (0: the
checkpoint's), ``state_timeout_s``, ``max_state_age_s``, ``image_timeout_s``, ``threads``,
``handover_max_step`` (rad per tick; the fingers get a tenth, in m), ``autostart``
(lifecycle: configure loads the model; activate starts the timer).
"""

from __future__ import annotations

import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ws_ros.common import command_qos, diagnostic_status, latched_qos, run_node, sensor_qos, stamp_to_s
from ws_sim.safety import JointLimits, SafetySupervisor, StateValidator

__all__ = ["PolicyExecutorNode", "main", "image_to_array"]


def image_to_array(msg: Image, size: int) -> np.ndarray:
    """An ``rgb8`` image -> ``(size, size, 3)`` uint8, a ``32FC1``/``16UC1`` depth image -> ``(size, size)``
    float32 metres.

    Raises:
        ValueError: an unsupported encoding, a size other than ``size``, or a buffer of the wrong length.
    """
    if msg.height != size or msg.width != size:
        raise ValueError(f"image is {msg.width}x{msg.height}; the policy takes {size}x{size}")
    data = bytes(msg.data)
    if msg.encoding == "rgb8":
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size != size * size * 3:
            raise ValueError(f"rgb8 image has {arr.size} bytes, expected {size * size * 3}")
        return arr.reshape(size, size, 3)
    if msg.encoding in ("32FC1", "16UC1"):
        arr = np.frombuffer(data, dtype=np.float32 if msg.encoding == "32FC1" else np.uint16)
        if arr.size != size * size:
            raise ValueError(f"{msg.encoding} depth image has {arr.size} values, expected {size * size}")
        depth = arr.reshape(size, size).astype(np.float32)
        return depth if msg.encoding == "32FC1" else depth / 1000.0
    raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8, 32FC1 or 16UC1)")


class PolicyExecutorNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("policy_executor", **kwargs)

        def p(name, default, text):
            self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True))

        p("checkpoint", "", "policy checkpoint from 'ws policy train', or 'default' (the shipped pick-and-place policy)")
        p("rate_hz", 20.0, "control rate, Hz (the rate the policy was trained at: 20 for the PiPER tasks)")
        p("replan_every", 0, "control steps between chunk requests (0: half a chunk)")
        p("ensemble_m", 0.1, "temporal-ensembling rate (negative: newest chunk only)")
        p("euler_steps", 0, "flow-matching sampling steps (0: the checkpoint's)")
        p("state_timeout_s", 0.2, "no valid state or images for this long -> hold and ERROR")
        p("max_state_age_s", 0.2, "joint readings older than this are rejected")
        p("image_timeout_s", 0.5, "images older than this are not used")
        p("threads", 1, "torch threads for inference")
        p("handover_max_step", 0.02, "after a hand-back, the most a joint target moves per tick, rad")
        p("autostart", True, "configure and activate on start")
        self._lock = threading.Lock()
        self._rgb = self._depth = self._wrist_rgb = self._wrist_depth = None
        self._img_t = {"rgb": -1.0, "depth": -1.0, "wrist_rgb": -1.0, "wrist_depth": -1.0}
        self.wrist = False
        self._instruction = ""
        self.image_rejections = 0
        self.last_image_error = ""
        self._step = 0
        self.human = False
        self._handback = False
        self._new_episode = False  # an instruction arrived: start afresh at the next tick
        self.episodes = 0
        self._mode = None
        self._last_seen = None
        self.handover = None
        self._running = False
        self._last = None
        self._timer = None
        self._subs = []
        self.executor_ = None
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("policy_executor failed to configure (see the log above)")
            self.trigger_activate()

    def _g(self, name):
        return self.get_parameter(name).value

    # --- lifecycle ----------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        import torch

        from ws_policy.train import PolicyRunner, load_policy, resolve_policy
        from ws_sim.piper import PIPER_XML, load_piper

        try:
            torch.set_num_threads(int(self._g("threads")))
            if not self._g("checkpoint"):
                raise ValueError("parameter 'checkpoint' is empty: give a 'ws policy train' checkpoint")
            model, _ = load_policy(resolve_policy(self._g("checkpoint")))
            if getattr(model.cfg, "privileged", False):
                raise ValueError(f"{self._g('checkpoint')} reads the simulator's object poses (a privileged teacher, "
                                 "'--privileged' or '--model state'): no robot gives those; use an image policy")
            self.wrist = bool(getattr(getattr(model, "cfg", None), "wrist", False))
            self.runner = PolicyRunner(model, steps=int(self._g("euler_steps")) or None)
            robot = load_piper(PIPER_XML)[0]
            limits = JointLimits.from_model(robot)
            every = JointLimits.from_model(robot, [robot.joint(i).name for i in range(robot.njnt)],
                                           require_actuator=False)
            self.supervisor = SafetySupervisor(limits, state_timeout_s=float(self._g("state_timeout_s")),
                                               validator=StateValidator(every, max_age_s=float(self._g("max_state_age_s"))))
            self.names = list(every.names)
            self.command_names = list(limits.names)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.size = self.runner.cfg.image_size
        self.rate_hz = float(self._g("rate_hz"))
        self._pub_cmd = self.create_lifecycle_publisher(JointTrajectory, "joint_command", command_qos())
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subs = [
            self.create_subscription(JointState, "joint_states", self._on_joint_states, sensor_qos()),
            self.create_subscription(Image, "camera/color/image_raw", lambda m: self._on_image(m, "rgb"), sensor_qos()),
            self.create_subscription(Image, "camera/depth/image_raw", lambda m: self._on_image(m, "depth"), sensor_qos()),
            *([self.create_subscription(Image, "wrist_camera/color/image_raw", lambda m: self._on_image(m, "wrist_rgb"),
                                        sensor_qos()),
               self.create_subscription(Image, "wrist_camera/depth/image_raw",
                                        lambda m: self._on_image(m, "wrist_depth"), sensor_qos())]
              if self.wrist else []),
            self.create_subscription(String, "instruction", self._on_instruction, latched_qos()),
            self.create_subscription(Bool, "estop", self._on_estop, latched_qos()),
            self.create_subscription(Bool, "teleop/intervention", self._on_intervention, latched_qos()),
            self.create_subscription(JointTrajectory, "joint_command", self._on_command, command_qos())]
        from ws_policy.teleop import Handover

        step = float(self._g("handover_max_step"))
        self.handover = Handover(np.r_[np.full(len(self.command_names) - 1, step), step / 10])
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"configured: {self._g('checkpoint')} ({self.size}x{self.size} images"
                               f"{' from the scene and wrist cameras' if self.wrist else ''}, chunk "
                               f"{self.runner.cfg.chunk}), {self.rate_hz} Hz")
        return TransitionCallbackReturn.SUCCESS

    def _new_executor(self) -> None:
        from ws_policy.executor import ChunkExecutor

        if self.executor_ is not None:
            self.executor_.wait_for_inference()
        chunk = self.runner.cfg.chunk
        m = float(self._g("ensemble_m"))
        self.executor_ = ChunkExecutor(self.runner, chunk=chunk, replan_every=int(self._g("replan_every")) or max(1, chunk // 2),
                                       ensemble_m=None if m < 0 else m, latency_steps=None)
        self._step = 0

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._new_executor()
        result = super().on_activate(state)
        self._timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        hold = self.supervisor.hold_command()
        if hold is not None:
            self._publish(hold, None)
        return super().on_deactivate(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        return TransitionCallbackReturn.SUCCESS

    def _stop(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self.executor_ is not None:
            self.executor_.wait_for_inference()

    def destroy_node(self):
        self._stop()
        return super().destroy_node()

    # --- inputs -------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joint_states(self, msg: JointState) -> None:
        with self._lock:
            self.supervisor.update_state(list(msg.name), msg.position, msg.velocity, stamp_to_s(msg.header.stamp),
                                         self._now())

    def _on_image(self, msg: Image, kind: str) -> None:
        try:
            arr = image_to_array(msg, self.size)
            depth = kind.endswith("depth")
            if depth and arr.ndim != 2:
                raise ValueError(f"expected a depth image, got {msg.encoding}")
            if depth and (not np.all(np.isfinite(arr)) or arr.min() < 0):
                raise ValueError("depth image holds NaN, infinite or negative values")
            if not depth and arr.ndim != 3:
                raise ValueError(f"expected an rgb8 colour image, got {msg.encoding}")
        except ValueError as e:
            self.image_rejections += 1
            self.last_image_error = f"{kind}: {e}"
            return
        with self._lock:
            setattr(self, f"_{kind}", arr.copy())
            self._img_t[kind] = self._now()

    def _on_instruction(self, msg: String) -> None:
        try:
            self.runner.vocab.encode(msg.data)
        except ValueError as e:
            self.last_image_error = f"instruction: {e}"
            self.get_logger().error(f"ignored instruction: {e}")
            return
        with self._lock:
            self._instruction = msg.data
            self._new_episode = True
        self.get_logger().info(f"instruction: {msg.data!r}")

    def _on_command(self, msg: JointTrajectory) -> None:
        """The command in force, whoever sent it (the policy, or the teleoperator)."""
        if msg.points and list(msg.joint_names) == self.command_names and len(msg.points[0].positions) == len(msg.joint_names):
            c = np.asarray(msg.points[0].positions, dtype=np.float64)
            if np.all(np.isfinite(c)):
                with self._lock:
                    self._last_seen = c

    def _on_intervention(self, msg: Bool) -> None:
        with self._lock:
            if bool(msg.data) == self.human:
                return
            self.human = bool(msg.data)
            if not self.human:
                self._handback = True
        self.get_logger().info("human in control: policy paused" if self.human else "handed back: policy resumes")

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data:
                self.supervisor.engage_estop("estop topic")
            elif self.supervisor.estopped:
                self.supervisor.release_estop()

    # --- the control tick ---------------------------------------------------------------------------
    def _observation(self, now: float):
        st = self.supervisor.state(now)
        kinds = ("rgb", "depth", "wrist_rgb", "wrist_depth") if self.wrist else ("rgb", "depth")
        fresh = all(now - self._img_t[k] <= float(self._g("image_timeout_s")) for k in kinds)
        if st is None or not fresh or not self._instruction:
            return None
        q = np.zeros(len(self.names))
        q[:] = st[0]
        return {**{k: getattr(self, f"_{k}") for k in kinds}, "qpos": q[:8], "instruction": self._instruction}

    def _tick(self) -> None:
        now = self._now()
        with self._lock:
            human, handback, new_episode = self.human, self._handback, self._new_episode
            self._handback = False
            if not human:
                self._new_episode = False
        if human:
            self._last = None
            self._mode = "human"
            return
        self._mode = None
        if new_episode:  # a new task, or the same one again: nothing carries over from the last episode
            self.episodes += 1
            if not handback:
                self._new_executor()
        if handback:
            self._new_executor()
            with self._lock:
                start = self._last_seen
            if start is not None:
                self.handover.start(start)
        with self._lock:
            obs = self._observation(now)
        planned, tail = None, None
        if obs is not None and not self.supervisor.estopped:
            try:
                planned = self.executor_.act(self._step, obs)
                self._step += 1
                tail = self._tail()
            except (ValueError, RuntimeError) as e:  # a malformed chunk: hold, report
                self.last_image_error = f"policy: {e}"
                planned = None
        with self._lock:
            d = self.supervisor.decide(now, planned)
            if obs is None and d.mode.value == "hold" and d.level < 2 and self._running:
                d = d.__class__(d.mode, d.command, 2, "no fresh images or instruction: holding")
            if tail is not None and d.mode.value == "run":  # each later point bounded at the state it should find
                tail = self.supervisor.limit_plan(tail, *self.supervisor.tracking_prediction(d.command, tail,
                                                                                         1.0 / self.rate_hz))
            else:
                tail = None
        self._running = self._running or d.mode.value == "run"
        self._last = d
        command = d.command
        if command is not None and d.mode.value == "run" and self.handover.active:
            command = self.handover(command)  # catching up after a hand-back: no jump, no plan tail yet
            tail = None
        elif (command is not None and d.mode.value == "hold" and self.handover.active and self.handover.last is not None
              and not self.supervisor.estopped):
            # no chunk yet after a hand-back (inference still running): stay at the last command sent,
            # not at the supervisor's older hold point, which would jump the arm
            command, tail = self.handover.last.copy(), None
        elif command is not None:
            self.handover.last = np.asarray(command, dtype=np.float64)
        with self._lock:
            if self.human:  # taken over while this tick ran inference: the person's commands rule from now on
                return
        if command is not None:
            self._publish(command, tail)

    def _tail(self):
        """The rest of the newest chunk after this step (for the bridge to keep executing)."""
        ex = self.executor_
        if not ex.chunks:
            return None
        t0, chunk = ex.chunks[-1]
        i = self._step - t0
        return chunk[i:] if 0 <= i < len(chunk) else None

    def _publish(self, command: np.ndarray, tail) -> None:
        if not np.all(np.isfinite(command)):
            return
        msg = JointTrajectory()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.joint_names = self.command_names
        rows = [command] + ([] if tail is None else list(tail))
        for j, row in enumerate(rows):
            pt = JointTrajectoryPoint()
            pt.positions = [float(v) for v in row]
            t = j / self.rate_hz
            pt.time_from_start.sec, pt.time_from_start.nanosec = int(t), int(round((t - int(t)) * 1e9))
            msg.points.append(pt)
        self._pub_cmd.publish(msg)

    def _publish_diagnostics(self) -> None:
        d = self._last
        human = self._mode == "human"
        values = {"mode": "human" if human else (d.mode.value if d else "inactive"), "estop": self.supervisor.estopped,
                  "handover": bool(self.handover is not None and self.handover.active),
                  "steps": self._step, "image_rejections": self.image_rejections,
                  "last_input_error": self.last_image_error, "instruction": self._instruction,
                  "episodes": self.episodes,
                  "object_memory": getattr(getattr(getattr(self, "runner", None), "memory", None), "frames", 0),
                  **{f"rejected_{k}": v for k, v in self.supervisor.validator.rejected.items() if v}}
        if self.executor_ is not None:
            values.update({f"inference_{k}": v for k, v in self.executor_.latency_percentiles().items()})
            values["gaps"] = self.executor_.gaps
        level = d.level if d else 1
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        text = "human in control (teleop/intervention)" if human else (d.message if d else "inactive")
        level = 0 if human else level
        msg.status = [diagnostic_status(f"{self.get_name()}: policy executor", level, text,
                                        values, hardware_id="piper")]
        self._pub_diag.publish(msg)


def main(args=None) -> None:
    """``ros2 run worldscape policy_executor --ros-args -p checkpoint:=policy.pt``."""
    run_node(PolicyExecutorNode, args)


if __name__ == "__main__":
    main()
