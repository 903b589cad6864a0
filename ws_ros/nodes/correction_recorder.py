"""``correction_recorder``: teleoperation sessions to MCAP files in the ROS 2 profile (issue 8).

Subscribes to the ``topics`` parameter's topics (by default :data:`ws_ros.mcap_io.TOPICS`: colour
and depth images and camera info of the scene and wrist cameras, joint states, joint commands, instruction, ``teleop/intervention``,
``teleop/joy``, ``episode``, ``estop``) and writes every message as delivered (serialized CDR,
no re-encoding) with :class:`ws_ros.mcap_io.RecordingWriter`. A channel is opened when its topic
first carries a message, with the QoS its publishers offer (``offered_qos_profiles``).
Episode events (``episode``: ``start``, ``success``, ``failure``) are also written as MCAP
metadata records ``episode``.

Crash safety: chunks go to disk (``fsync``) every ``flush_period_s``; a killed recorder leaves
a file that :func:`ws_ros.mcap_io.read_messages` reads up to its last chunk and ``ws hitl
recover`` makes complete. On a clean stop the summary and footer are written.

Errors are never silent: a file that cannot be created (missing directory, permission, disk
full) or a write that fails mid-session stops the recording, logs the cause and reports it as
ERROR on ``/diagnostics`` (with the path, messages written and messages dropped since).

Parameters: ``output`` (a directory, where ``hitl_<date>-<time>.mcap`` is created, or a
``.mcap`` path; never overwritten), ``topics``, ``task``, ``workspace``, ``camera`` (kept in
the file's ``worldscape`` metadata for conversion), ``chunk_size`` (bytes), ``flush_period_s``.
"""

from __future__ import annotations

import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from ws_ros.common import diagnostic_status, latched_qos, run_node, sensor_qos
from ws_ros.mcap_io import TOPICS, RecordingError, RecordingWriter

__all__ = ["CorrectionRecorder", "main", "recording_path"]

_LATCHED = {"instruction", "teleop/intervention", "estop"}
_BEST_EFFORT = {"camera/color/image_raw", "camera/depth/image_raw", "camera/color/camera_info",
                "wrist_camera/color/image_raw", "wrist_camera/depth/image_raw", "wrist_camera/color/camera_info",
                "joint_states", "teleop/joy"}


def recording_path(output: str, now: float | None = None) -> Path:
    """The file to record to: ``output`` itself when it names a ``.mcap`` file (or a device),
    else ``output/hitl_<YYYYmmdd-HHMMSS>.mcap`` (the directory is created)."""
    out = Path(output).expanduser()
    if out.suffix == ".mcap" or str(out).startswith("/dev/"):
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / time.strftime("hitl_%Y%m%d-%H%M%S.mcap", time.localtime(now))


def _type_class(type_name: str):
    import importlib

    pkg, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _qos_dict(q) -> dict:
    return {"history": int(q.history), "depth": int(q.depth), "reliability": int(q.reliability),
            "durability": int(q.durability), "liveliness": int(q.liveliness),
            "deadline": q.deadline.nanoseconds, "lifespan": q.lifespan.nanoseconds,
            "liveliness_lease_duration": q.liveliness_lease_duration.nanoseconds,
            "avoid_ros_namespace_conventions": bool(q.avoid_ros_namespace_conventions)}


class CorrectionRecorder(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__("correction_recorder", **kwargs)

        def p(name, default, text):
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value

        output = p("output", "recordings", "directory for hitl_<date>-<time>.mcap, or a .mcap path")
        topics = list(p("topics", list(TOPICS), "topics to record (relative names resolve in the node's namespace)"))
        task = p("task", "pick_place", "task recorded (kept in the file for conversion)")
        workspace = p("workspace", "full", "the task's workspace setting (kept in the file)")
        camera = p("camera", "task", "the camera the images come from (kept in the file)")
        chunk = int(p("chunk_size", 1024 * 1024, "uncompressed bytes per MCAP chunk"))
        period = float(p("flush_period_s", 1.0, "chunks are written to disk at least this often, s"))
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"correction_recorder does not know the types of {unknown}; it records {list(TOPICS)}")
        self.fault = ""
        self.dropped = 0
        self.episodes = 0
        self.writer = None
        self.path = None
        try:
            self.path = recording_path(output)
            self.writer = RecordingWriter(self.path, chunk_size=chunk, metadata={"worldscape": {
                "task": task, "workspace": workspace, "camera": camera, "recorder": "correction_recorder"}})
            self.get_logger().info(f"recording {len(topics)} topics to {self.path}")
        except (RecordingError, OSError) as e:
            self._fail(f"cannot record: {e}")
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subs = []
        for topic in topics:
            cls = _type_class(TOPICS[topic])
            if topic in _LATCHED:
                qos = latched_qos()
            elif topic in _BEST_EFFORT:
                qos = sensor_qos()
            else:
                qos = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
            if topic == "episode":
                cb = self._on_episode
                raw = False
            else:
                cb = (lambda data, t=topic: self._on_message(t, data))
                raw = True
            self._subs.append(self.create_subscription(cls, topic, cb, qos, raw=raw))
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._flush_timer = self.create_timer(period, self._flush, clock=steady)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, clock=steady)

    def _fail(self, message: str) -> None:
        if not self.fault:
            self.get_logger().error(message)
        self.fault = message

    def _channel(self, topic: str) -> str:
        name = self.resolve_topic_name(topic)
        if not self.writer.has_topic(name):
            offered = [_qos_dict(i.qos_profile) for i in self.get_publishers_info_by_topic(name)]
            self.writer.add_topic(name, TOPICS[topic], offered or [_qos_dict(self._qos_of(topic))])
        return name

    def _qos_of(self, topic: str):
        return next(s.qos_profile for s in self._subs if s.topic_name == self.resolve_topic_name(topic))

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.fault or self.writer is None:
            self.dropped += 1
            return
        try:
            self.writer.write(self._channel(topic), data, time.time_ns())
        except (RecordingError, OSError) as e:
            self.dropped += 1
            self._fail(str(e))

    def _on_episode(self, msg: String) -> None:
        self._on_message("episode", serialize_message(msg))
        event = msg.data.strip().lower()
        if event in ("success", "failure"):
            self.episodes += 1
        if self.writer is not None and not self.fault:
            try:
                self.writer.metadata("episode", {"event": event, "log_time_ns": time.time_ns(),
                                                 "episodes_closed": self.episodes})
            except RecordingError as e:
                self._fail(str(e))
        self.get_logger().info(f"episode: {event}")

    def _flush(self) -> None:
        if self.writer is not None and not self.fault:
            try:
                self.writer.flush()
            except RecordingError as e:
                self._fail(str(e))

    def _publish_diagnostics(self) -> None:
        size = self.path.stat().st_size if self.path is not None and self.path.is_file() else 0
        values = {"path": self.path, "messages": self.writer.messages if self.writer else 0, "dropped": self.dropped,
                  "episodes": self.episodes, "bytes": size}
        level, text = (2, self.fault) if self.fault else (0, "recording")
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: correction recorder", level, text, values)]
        self._pub_diag.publish(msg)

    def destroy_node(self):
        if self.writer is not None and not self.writer.closed:
            try:
                self.writer.close()
                self.get_logger().info(f"closed {self.path}: {self.writer.messages} messages")
            except RecordingError as e:
                self.get_logger().error(str(e))
        return super().destroy_node()


def main(args=None) -> None:
    """``ros2 run worldscape correction_recorder --ros-args -p output:=recordings``."""
    run_node(CorrectionRecorder, args)


if __name__ == "__main__":
    main()
