"""Teleoperator recordings as MCAP files in the ROS 2 profile (issue 8), and their conversion.

Writing (:class:`RecordingWriter`, used by the ``correction_recorder`` node): messages stay as
the CDR bytes the middleware delivered (no re-encoding); every channel has message encoding
``cdr``, a ``ros2msg`` schema holding the full message definition (the type's ``.msg`` text,
then each nested type's after a line of ``=`` and ``MSG: pkg/Type``, as rosbag2 writes it) and
the ``offered_qos_profiles`` metadata (rosbag2's YAML list of the publishers' QoS, policies as
integers, which every rosbag2 from Humble on reads), so that ``ros2 bag play``, Foxglove and
``mcap_ros2.reader`` open the files. Chunks are zstd-compressed and written out at least every
``flush_period_s`` (the recorder's timer calls :meth:`RecordingWriter.flush`), so a killed
recorder loses at most that much.

Reading: :func:`read_messages` decodes a complete file with ``mcap_ros2``'s decoder and a
truncated one (a killed recorder: no summary or footer) up to its last complete chunk;
:func:`recover` rewrites a truncated file as a complete one (then any MCAP tool reads it).

Converting: :func:`recording_to_episodes` cuts a recording into the policy's
:class:`ws_policy.data.Episode` s at the ``episode`` events (``start``, then ``success`` or
``failure``), one step per ``joint_command``, keeping who acted at each step (``actor``: 1
when ``teleop/intervention`` was true, the human; 0 the policy).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

__all__ = ["TOPICS", "message_definition", "qos_profiles_yaml", "RecordingWriter", "RecordingError",
           "read_messages", "recover", "recording_to_episodes", "EPISODE_EVENTS"]

#: the topics a correction recording holds by default (DESIGN.md's interface) and their types
TOPICS = {
    "camera/color/image_raw": "sensor_msgs/msg/Image",
    "camera/depth/image_raw": "sensor_msgs/msg/Image",
    "camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "wrist_camera/color/image_raw": "sensor_msgs/msg/Image",
    "wrist_camera/depth/image_raw": "sensor_msgs/msg/Image",
    "wrist_camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "joint_states": "sensor_msgs/msg/JointState",
    "joint_command": "trajectory_msgs/msg/JointTrajectory",
    "instruction": "std_msgs/msg/String",
    "teleop/intervention": "std_msgs/msg/Bool",
    "teleop/joy": "sensor_msgs/msg/Joy",
    "episode": "std_msgs/msg/String",
    "estop": "std_msgs/msg/Bool",
}
#: what ``episode`` (std_msgs/String) carries
EPISODE_EVENTS = ("start", "success", "failure")

_PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
               "int64", "uint64", "string", "wstring"}


class RecordingError(OSError):
    """A recording could not be written or read (the message names the file and the cause)."""


# --- schemas ---------------------------------------------------------------------------------------
def _split_type(type_name: str) -> tuple[str, str]:
    parts = type_name.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"not a ROS 2 message type: {type_name!r} (expected pkg/msg/Type)")


def _msg_file(pkg: str, name: str) -> Path:
    """The ``.msg`` file of ``pkg/msg/name``: from the ament index, else beside the Python package
    (``<prefix>/lib/pythonX/site-packages/<pkg>`` -> ``<prefix>/share/<pkg>/msg``)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(pkg)) / "msg" / f"{name}.msg")
    except (ImportError, LookupError, ValueError, OSError):
        pass
    try:
        module = importlib.import_module(pkg)
        for base in getattr(module, "__path__", []):
            candidates.append(Path(base).resolve().parents[3] / "share" / pkg / "msg" / f"{name}.msg")
    except ImportError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no definition file for {pkg}/msg/{name} (is the ROS 2 package {pkg} installed?)")


def message_definition(type_name: str) -> str:
    """The full ``ros2msg`` definition of a message type, nested types appended as rosbag2 does.

    Args:
        type_name: ``pkg/msg/Type`` (or ``pkg/Type``).

    Raises:
        FileNotFoundError: a type's ``.msg`` file is not installed.
        ValueError: a malformed type name.
    """
    pkg, name = _split_type(type_name)
    out, seen, queue = [], set(), [(pkg, name)]
    while queue:
        p, n = queue.pop(0)
        if (p, n) in seen:
            continue
        seen.add((p, n))
        text = _msg_file(p, n).read_text()
        out.append(text if not out else f"{'=' * 80}\nMSG: {p}/{n}\n{text}")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            field_type = re.split(r"[\[<\s]", line.split()[0], maxsplit=1)[0]
            if field_type in _PRIMITIVES or "=" in line.split()[0]:
                continue
            dep = field_type.split("/")
            queue.append((dep[0], dep[-1]) if len(dep) > 1 else (p, dep[0]))
    return "\n".join(out)


def qos_profiles_yaml(profiles: list[dict]) -> str:
    """rosbag2's ``offered_qos_profiles`` string: a YAML list of QoS dicts.

    Each dict holds ``history``, ``depth``, ``reliability``, ``durability``, ``liveliness``
    (the rmw enum values as integers), ``deadline``, ``lifespan``, ``liveliness_lease_duration``
    (nanoseconds, written as ``{sec, nsec}``) and ``avoid_ros_namespace_conventions``.
    """
    out = []
    for p in profiles:
        def dur(ns):
            ns = int(ns)
            return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}

        out.append({"history": int(p.get("history", 1)), "depth": int(p.get("depth", 0)),
                    "reliability": int(p.get("reliability", 1)), "durability": int(p.get("durability", 2)),
                    "deadline": dur(p.get("deadline", 0)), "lifespan": dur(p.get("lifespan", 0)),
                    "liveliness": int(p.get("liveliness", 1)),
                    "liveliness_lease_duration": dur(p.get("liveliness_lease_duration", 0)),
                    "avoid_ros_namespace_conventions": bool(p.get("avoid_ros_namespace_conventions", False))})
    return yaml.safe_dump(out, sort_keys=False)


# --- writing ---------------------------------------------------------------------------------------
def _describe(e: OSError, path) -> str:
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    hint = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
            errno.EDQUOT: "disk quota exceeded"}.get(e.errno, e.strerror or str(e))
    return f"{path}: {hint}" + (f" ({name})" if name else "")


class RecordingWriter:
    """An MCAP file in the ROS 2 profile, written as messages arrive (see the module docstring).

    Args:
        path: the ``.mcap`` file to create (never overwritten).
        chunk_size: uncompressed bytes per chunk before it is written out.
        metadata: optional ``{name: {key: value}}`` written as MCAP metadata records.

    Raises:
        RecordingError: the file exists or cannot be created or written (disk full, permission,
            missing directory), naming the path and the cause.
    """

    def __init__(self, path: str | os.PathLike, chunk_size: int = 256 * 1024, metadata: dict | None = None):
        from mcap.writer import Writer

        self.path = Path(path)
        try:
            # a device (/dev/null, /dev/full) is written in place; a file is never overwritten
            self._file = open(self.path, "wb" if str(self.path).startswith("/dev/") else "xb")
        except FileExistsError as e:
            raise RecordingError(e.errno, f"{self.path} exists; recordings are never overwritten") from e
        except OSError as e:
            raise RecordingError(e.errno, f"cannot create recording {_describe(e, self.path)}") from e
        self._writer = Writer(self._file, chunk_size=int(chunk_size))
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self.messages = 0
        self.closed = False
        try:
            self._writer.start(profile="ros2", library="worldscape correction_recorder")
            for name, data in (metadata or {}).items():
                self._writer.add_metadata(name, {str(k): str(v) for k, v in data.items()})
            self.flush()
        except OSError as e:
            self._abandon()
            raise RecordingError(e.errno, f"cannot write recording {_describe(e, self.path)}") from e

    def add_topic(self, topic: str, type_name: str, qos_profiles: list[dict]) -> int:
        """Register a channel (once per topic); returns its id.

        Raises:
            FileNotFoundError: the type's definition is not installed.
        """
        if topic in self._channels:
            return self._channels[topic]
        if type_name not in self._schemas:
            pkg, name = _split_type(type_name)
            self._schemas[type_name] = self._writer.register_schema(
                f"{pkg}/msg/{name}", "ros2msg", message_definition(type_name).encode())
        cid = self._writer.register_channel(topic, "cdr", self._schemas[type_name],
                                            {"offered_qos_profiles": qos_profiles_yaml(qos_profiles)})
        self._channels[topic] = cid
        return cid

    def has_topic(self, topic: str) -> bool:
        return topic in self._channels

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int | None = None) -> None:
        """Append one serialized (CDR) message on a registered topic.

        Raises:
            KeyError: the topic was not registered.
            RecordingError: the write failed (disk full, ...); the file keeps what was flushed.
        """
        cid = self._channels[topic]
        try:
            self._writer.add_message(cid, log_time=int(log_time_ns), data=bytes(data),
                                     publish_time=int(log_time_ns if publish_time_ns is None else publish_time_ns),
                                     sequence=self.messages)
        except OSError as e:
            raise RecordingError(e.errno, f"recording stopped: {_describe(e, self.path)}") from e
        self.messages += 1

    def metadata(self, name: str, data: dict) -> None:
        """Append a metadata record (e.g. an episode's outcome); flushes.

        Raises:
            RecordingError: the write failed.
        """
        try:
            self._writer.add_metadata(name, {str(k): str(v) for k, v in data.items()})
        except OSError as e:
            raise RecordingError(e.errno, f"recording stopped: {_describe(e, self.path)}") from e
        self.flush()

    def flush(self, fsync: bool = True) -> None:
        """Write the chunk in progress out (and ``fsync``): what is on disk is readable after a crash.

        Raises:
            RecordingError: the write failed.
        """
        try:
            self._writer.flush()
            if fsync and self.path.is_file():
                os.fsync(self._file.fileno())
        except OSError as e:
            raise RecordingError(e.errno, f"recording stopped: {_describe(e, self.path)}") from e

    def close(self) -> None:
        """Write the summary and footer and close the file (idempotent).

        Raises:
            RecordingError: the final write failed (the data flushed before stays readable).
        """
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.finish()
            self._file.flush()
            if self.path.is_file():
                os.fsync(self._file.fileno())
        except OSError as e:
            raise RecordingError(e.errno, f"closing the recording failed: {_describe(e, self.path)}") from e
        finally:
            try:
                self._file.close()
            except OSError:
                pass

    def _abandon(self) -> None:
        self.closed = True
        try:
            self._file.close()
        except OSError:
            pass


# --- reading ---------------------------------------------------------------------------------------
def _records(path: Path) -> Iterator:
    """Every record of an MCAP file in order, chunks opened. A record that cannot be parsed (the
    cut tail a killed writer leaves, or a chunk failing its CRC) ends the iteration: everything
    before it is returned."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader, breakup_chunk

    with open(path, "rb") as f:
        it = StreamReader(f, record_size_limit=1 << 30).records
        while True:
            try:
                rec = next(it)
                recs = breakup_chunk(rec, validate_crc=True) if isinstance(rec, Chunk) else [rec]
            except StopIteration:
                return
            except Exception:  # mcap raises EndOfFile, struct and CRC errors on a cut or damaged record
                return
            yield from recs


def read_messages(path: str | os.PathLike, topics: list[str] | None = None,
                  metadata: dict | None = None) -> Iterator[tuple[str, int, object]]:
    """``(topic, log_time_ns, message)`` for every message of a recording, in file order, decoded
    with ``mcap_ros2``; a truncated file (killed recorder) is read up to its last complete chunk.

    Args:
        topics: only these (as recorded, e.g. ``/joint_states``); default all.
        metadata: a dict that receives the file's metadata records (``name -> {key: value}``).

    Raises:
        RecordingError: no such file, or not an MCAP file.
    """
    from mcap.records import Channel, Message, Metadata, Schema
    from mcap_ros2.decoder import DecoderFactory

    path = Path(path)
    if not path.is_file():
        raise RecordingError(errno.ENOENT, f"no recording at {path}")
    with open(path, "rb") as f:
        if f.read(8) != b"\x89MCAP0\r\n":
            raise RecordingError(errno.EINVAL, f"{path} is not an MCAP file")
    factory = DecoderFactory()
    schemas, channels, decoders = {}, {}, {}
    for rec in _records(path):
        if isinstance(rec, Schema):
            schemas[rec.id] = rec
        elif isinstance(rec, Channel):
            channels[rec.id] = rec
        elif isinstance(rec, Metadata) and metadata is not None:
            metadata.setdefault(rec.name, {}).update(rec.metadata)
        elif isinstance(rec, Message):
            ch = channels.get(rec.channel_id)
            if ch is None or (topics is not None and ch.topic not in topics):
                continue
            if ch.id not in decoders:
                decoders[ch.id] = factory.decoder_for(ch.message_encoding, schemas.get(ch.schema_id))
            yield ch.topic, rec.log_time, decoders[ch.id](rec.data)


def recover(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Rewrite a (possibly truncated) recording as a complete MCAP file; returns the message count.

    Raises:
        RecordingError: unreadable input or unwritable output.
    """
    from mcap.records import Channel, Message, Metadata, Schema
    from mcap.writer import Writer

    from ws_sim.atomic import atomic_write

    path = Path(path)
    if not path.is_file():
        raise RecordingError(errno.ENOENT, f"no recording at {path}")
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "wb") as f:
            w = Writer(f)
            w.start(profile="ros2", library="worldscape recover")
            sid, cid = {}, {}
            schemas = {}
            for rec in _records(path):
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                elif isinstance(rec, Channel):
                    if rec.id not in cid:
                        s = schemas.get(rec.schema_id)
                        if s is not None and s.id not in sid:
                            sid[s.id] = w.register_schema(s.name, s.encoding, s.data)
                        cid[rec.id] = w.register_channel(rec.topic, rec.message_encoding,
                                                         sid.get(rec.schema_id, 0), dict(rec.metadata))
                elif isinstance(rec, Message) and rec.channel_id in cid:
                    w.add_message(cid[rec.channel_id], log_time=rec.log_time, data=rec.data,
                                  publish_time=rec.publish_time, sequence=rec.sequence)
                    count += 1
                elif isinstance(rec, Metadata):
                    w.add_metadata(rec.name, dict(rec.metadata))
            w.finish()

    try:
        atomic_write(out, write)
    except OSError as e:
        raise RecordingError(e.errno, f"cannot write {_describe(e, out)}") from e
    return count


# --- conversion ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Series:
    t: list
    v: list

    def at(self, t_ns: int):
        """The newest value logged at or before ``t_ns`` (None before the first)."""
        i = int(np.searchsorted(np.asarray(self.t), t_ns, side="right")) - 1
        return None if i < 0 else self.v[i]


def _image(msg) -> np.ndarray:
    data = bytes(msg.data)
    if msg.encoding == "rgb8":
        return np.frombuffer(data, np.uint8).reshape(msg.height, msg.width, 3)
    if msg.encoding == "32FC1":
        return np.frombuffer(data, np.float32).reshape(msg.height, msg.width)
    if msg.encoding == "16UC1":
        return np.frombuffer(data, np.uint16).reshape(msg.height, msg.width).astype(np.float32) / 1000.0
    raise ValueError(f"unsupported image encoding {msg.encoding!r}")


def recording_to_episodes(path: str | os.PathLike, task: str | None = None) -> tuple[list, dict]:
    """Cut a recording into policy training episodes (see the module docstring).

    A step is one ``joint_command`` inside an episode (its point 0, ordered as the PiPER's
    command joints, is the action); its observation is the newest colour image, depth image and
    joint state logged up to that command; ``actor`` is 1 where ``teleop/intervention`` was
    true. The frame after the last step is the newest observation at the episode's end. A
    recording that holds the wrist camera (``wrist_camera/color/image_raw`` and
    ``wrist_camera/depth/image_raw``, as ``ws launch piper_hitl_sim`` publishes them) gives
    episodes with ``wrist_rgb`` and ``wrist_depth`` and the attributes ``wrist`` and
    ``wrist_fovy`` (from its camera info, else the PiPER model's wrist camera), so that
    corrections train policies that read both cameras.

    Args:
        path: the ``.mcap`` recording (a truncated one is read up to its last chunk).
        task: the task name for the file attributes (default: the recording's metadata, else
            ``pick_place``).

    Returns:
        ``(episodes, attrs)`` as :func:`ws_policy.data.collect_demos` returns them.

    Raises:
        RecordingError: unreadable file.
        ws_policy.data.DemoError: no episode events, no commands, or images of changing size (the
            message says what the recording lacks).
    """
    from ws_policy.data import MAX_DEPTH, DemoError, Episode
    from ws_sim.piper import COMMAND_JOINTS, JOINTS, PIPER_XML, load_piper

    series: dict[str, _Series] = {}
    events = []
    records: dict = {}
    for topic, t, msg in read_messages(path, metadata=records):
        topic = topic.lstrip("/")
        if topic == "episode":
            events.append((t, str(msg.data).strip().lower()))
        else:
            series.setdefault(topic, _Series([], [])).t.append(t)
            series[topic].v.append(msg)
    meta = records.get("worldscape", {})
    wrist = all(k in series for k in _WRIST)
    need = ("joint_command", "joint_states", "camera/color/image_raw", "camera/depth/image_raw")
    missing = [k for k in need if k not in series]
    if missing:
        raise DemoError(f"{path}: the recording has no messages on {', '.join(missing)}")
    if not events:
        raise DemoError(f"{path}: no episode events (the teleop's start / success / failure buttons publish them "
                         f"on 'episode')")
    spans, start = [], None
    for t, ev in events:
        if ev == "start":
            if start is not None:
                spans.append((start, t, None))
            start = t
        elif ev in ("success", "failure"):
            spans.append((start if start is not None else series["joint_command"].t[0], t, ev == "success"))
            start = None
    intervention = series.get("teleop/intervention", _Series([], []))
    instruction = series.get("instruction", _Series([], []))
    episodes = []
    for i, (t0, t1, outcome) in enumerate(spans):
        if outcome is None:
            continue  # aborted (a new start before an outcome): no label to learn from
        cmds = [(t, m) for t, m in zip(series["joint_command"].t, series["joint_command"].v) if t0 <= t <= t1]
        frames, actions, actors = [], [], []
        for t, m in cmds:
            if not m.points:
                continue
            idx = {n: j for j, n in enumerate(m.joint_names)}
            if any(n not in idx for n in COMMAND_JOINTS):
                continue
            obs = _observation(series, t, JOINTS, wrist)
            if obs is None:
                continue
            frames.append(obs)
            actions.append(np.array([m.points[0].positions[idx[n]] for n in COMMAND_JOINTS], dtype=np.float32))
            flag = intervention.at(t)
            actors.append(int(bool(flag.data)) if flag is not None else 0)
        last = _observation(series, t1, JOINTS, wrist)
        if not actions or last is None:
            continue
        frames.append(last)
        sizes = {f[0].shape for f in frames} | {f[4].shape for f in frames if wrist}
        if len(sizes) != 1:
            raise DemoError(f"{path}: episode {i} has images of several sizes {sorted(sizes)}")
        instr = instruction.at(t1)
        episodes.append(Episode(
            rgb=np.stack([f[0] for f in frames]), depth=np.stack([np.minimum(f[1], MAX_DEPTH) for f in frames]).astype(np.float16),
            qpos=np.stack([f[2] for f in frames]).astype(np.float32), qvel=np.stack([f[3] for f in frames]).astype(np.float32),
            objects=np.zeros((len(frames), 17), np.float32), actions=np.stack(actions),
            instruction=str(instr.data) if instr is not None else "", success=bool(outcome),
            failure="" if outcome else "human-marked", seed=i, actor=np.asarray(actors, dtype=np.int8),
            wrist_rgb=np.stack([f[4] for f in frames]) if wrist else None,
            wrist_depth=np.stack([np.minimum(f[5], MAX_DEPTH) for f in frames]).astype(np.float16) if wrist else None))
    if not episodes:
        raise DemoError(f"{path}: no complete episode (start, commands with images and joint states, then success "
                         f"or failure)")
    model = load_piper(PIPER_XML)[0]
    lo, hi = model.actuator_ctrlrange.T
    size = episodes[0].rgb.shape[1]
    fovy = _fovy(series.get("camera/color/camera_info"), 45.0)
    dts = np.diff(np.asarray(series["joint_command"].t)) * 1e-9
    attrs = {"task": task or meta.get("task", "pick_place"), "camera": meta.get("camera", "task"), "image_size": size,
             "control_dt": float(np.median(dts)) if len(dts) else 0.05, "fovy": fovy,
             "action_low": lo.astype(np.float64), "action_high": hi.astype(np.float64),
             "randomize": True, "workspace": meta.get("workspace", "full"), "source": str(path)}
    if wrist:
        attrs["wrist"] = True
        attrs["wrist_fovy"] = _fovy(series.get("wrist_camera/color/camera_info"), float(model.camera("wrist").fovy[0]))
    return episodes, attrs


#: the wrist camera's image topics (a recording holding both converts with the wrist frames)
_WRIST = ("wrist_camera/color/image_raw", "wrist_camera/depth/image_raw")


def _fovy(info, default: float) -> float:
    """The vertical field of view (degrees) of the newest CameraInfo in ``info`` (else ``default``)."""
    if info is not None and info.v and info.v[-1].k[4] > 0:
        return float(np.degrees(2 * np.arctan(info.v[-1].height / 2 / info.v[-1].k[4])))
    return default


def _observation(series, t, joints, wrist: bool = False):
    rgb, depth, js = (series[k].at(t) for k in ("camera/color/image_raw", "camera/depth/image_raw", "joint_states"))
    if rgb is None or depth is None or js is None:
        return None
    extra = ()
    if wrist:
        w_rgb, w_depth = (series[k].at(t) for k in _WRIST)
        if w_rgb is None or w_depth is None:
            return None
        extra = (_image(w_rgb), _image(w_depth))
    idx = {n: j for j, n in enumerate(js.name)}
    if any(n not in idx for n in joints):
        return None
    q = np.array([js.position[idx[n]] for n in joints])
    v = np.array([js.velocity[idx[n]] if len(js.velocity) == len(js.name) else 0.0 for n in joints])
    return (_image(rgb), _image(depth), q, v) + extra
