"""RGB-D clips of the three control kinds, from the simulators (issue 9, seed 000's heterogeneous
control).

One file holds clips of any of the kinds; each kind is a group of equal-length clips:

- ``camera``: a Go1 walking through a field of coloured landmarks, seen by a camera on its
  head. The walk is *kinematic*: the trunk follows a smooth random path (forward speed 0.3-0.8
  m/s, a wandering yaw rate, the gait's bob and sway) and the legs play :class:`ws_sim.go1.TrotGait`;
  no physics, so no falls, and the pictures are what a head camera on a walking Go1 sees. The
  control of frame ``t`` is the camera's motion since frame ``t-1`` in the frame of ``t-1``:
  translation (3, m) and the rotation's first two columns (6) -- 9 numbers, the same for the
  same motion anywhere in the world. A share of the episodes (``look_share``) are *look-arounds*
  instead: the Go1 stands, trotting on the spot, turns its head away at a steady yaw rate and
  back along the same arc (:func:`go1_walk_episode` with ``look=``), so a view is left and
  revisited: the data of the revisit test (:func:`ws_worldmodel.video.experts.revisit`).
- ``joints``: the PiPER's scripted expert doing pick-and-place (:func:`ws_policy.data.collect_demos`,
  domain randomisation on), from the ``scene`` camera; the control of frame ``t`` is the joint
  command that led to it (6 joints and the gripper, rad and m).
- ``keypoints``: the PiPER stacking two blocks, from the ``front`` camera; the control of frame
  ``t`` is where the two fingers are in it (world positions of ``link7`` and ``link8``, m) --
  gripper keypoints, not joint commands.

Frames are ``size`` px, 10 Hz for the Go1 (one frame every 0.1 s) and the PiPER's control rate
(20 Hz) for the arm. Clips are cut from episodes with a stride, and every clip keeps its
episode's index so that held-out clips can come from held-out episodes. Depth is in metres,
clipped to the kind's ``max_depth``; :func:`frames_tensor` makes the model's ``[-1, 1]`` input.

    ws video clips --kind camera --episodes 40 --out data/video.hdf5
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import h5py
import mujoco
import numpy as np
import torch
from tqdm import tqdm

from ws_sim.atomic import atomic_write

from .tool import tool_main

KINDS = ("camera", "joints", "keypoints")
#: per-frame control length of each kind
CONTROL_DIMS = {"camera": 9, "joints": 7, "keypoints": 6}
#: depth clip of each kind, m
MAX_DEPTH = {"camera": 6.0, "joints": 2.0, "keypoints": 2.0}

__all__ = ["KINDS", "CONTROL_DIMS", "MAX_DEPTH", "ClipSet", "collect_clips", "write_clips", "read_clips",
           "frames_tensor", "go1_walk_episode", "look_yaw", "camera_controls"]


@dataclasses.dataclass
class ClipSet:
    """Clips of one control kind.

    Attributes:
        kind: one of :data:`KINDS`.
        rgb: ``(N, T, H, W, 3)`` uint8.
        depth: ``(N, T, H, W)`` float16, metres (clipped to ``max_depth``).
        controls: ``(N, T, D)`` float32 per-frame controls (module docstring).
        poses: ``(N, T, 4, 4)`` float32 world-from-camera poses.
        episode: ``(N,)`` int, the episode each clip was cut from.
        max_depth: depth clip, m.
        dt: seconds between frames.
    """

    kind: str
    rgb: np.ndarray
    depth: np.ndarray
    controls: np.ndarray
    poses: np.ndarray
    episode: np.ndarray
    max_depth: float
    dt: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown control kind {self.kind!r}; choose one of {list(KINDS)}")
        if self.rgb.ndim != 5 or self.rgb.shape[-1] != 3 or self.rgb.shape[2] != self.rgb.shape[3]:
            raise ValueError(f"rgb must be (N, T, S, S, 3), got {self.rgb.shape}")
        n, t = self.rgb.shape[:2]
        want = {"rgb": (n, t) + self.rgb.shape[2:], "depth": (n, t) + self.rgb.shape[2:4],
                "controls": (n, t, CONTROL_DIMS[self.kind]), "poses": (n, t, 4, 4), "episode": (n,)}
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{self.kind} clips: {name} is {getattr(self, name).shape}, expected {shape}")

    def __len__(self) -> int:
        return len(self.rgb)

    def split(self, held_out: float = 0.15) -> tuple["ClipSet", "ClipSet"]:
        """``(train, test)`` by episode: the last ``held_out`` share of the episodes is the test set."""
        eps = np.unique(self.episode)
        n_test = max(1, int(round(held_out * len(eps))))
        if n_test >= len(eps):
            raise ValueError(f"{len(eps)} episodes cannot be split into train and held-out")
        test = np.isin(self.episode, eps[-n_test:])
        return self.subset(~test), self.subset(test)

    def subset(self, mask) -> "ClipSet":
        return dataclasses.replace(self, rgb=self.rgb[mask], depth=self.depth[mask], controls=self.controls[mask],
                                   poses=self.poses[mask], episode=self.episode[mask])


def frames_tensor(rgb: np.ndarray, depth: np.ndarray, max_depth: float) -> torch.Tensor:
    """``(..., S, S, 3)`` uint8 and ``(..., S, S)`` metres -> ``(..., 4, S, S)`` float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(rgb)).float().movedim(-1, -3) / 127.5 - 1
    d = torch.as_tensor(np.minimum(np.asarray(depth, dtype=np.float32), max_depth)).unsqueeze(-3)
    return torch.cat([x, d / max_depth * 2 - 1], -3)


def camera_controls(poses: np.ndarray) -> np.ndarray:
    """``(T, 4, 4)`` world-from-camera poses -> ``(T, 9)`` per-frame motion controls: the motion
    from frame ``t-1`` to ``t`` in ``t-1``'s camera frame, translation and the rotation's first two
    columns (frame 0 gets the identity motion)."""
    poses = np.asarray(poses, dtype=np.float64)
    out = np.zeros((len(poses), 9))
    out[0, 3], out[0, 7] = 1.0, 1.0
    for t in range(1, len(poses)):
        rel = np.linalg.inv(poses[t - 1]) @ poses[t]
        out[t, :3] = rel[:3, 3]
        out[t, 3:] = rel[:3, :2].T.reshape(-1)
    return out.astype(np.float32)


# --- the Go1 camera ------------------------------------------------------------------------------
def _go1_scene(rng, landmarks: int, extent: float) -> mujoco.MjModel:
    """The Go1 with a head camera, in a field of ``landmarks`` coloured boxes and cylinders."""
    from ws_sim.go1 import GO1_XML

    spec = mujoco.MjSpec.from_file(str(GO1_XML))
    trunk = spec.body("trunk")
    # 27 cm ahead of the trunk's centre, 5 cm up, looking forward and 12 degrees down
    pitch = np.deg2rad(12.0)
    trunk.add_camera(name="head", pos=[0.27, 0.0, 0.05], fovy=70.0,
                     xyaxes=[0, -1, 0, np.sin(pitch), 0, np.cos(pitch)])
    for i in range(landmarks):
        x, y = rng.uniform(-extent, extent, 2)
        if np.hypot(x, y) < 0.8:  # keep the start clear
            x += 1.6 * np.sign(x or 1.0)
        h = rng.uniform(0.2, 1.2)
        if rng.random() < 0.5:
            geom = spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX,
                                           size=[rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.3), h / 2])
        else:
            geom = spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                                           size=[rng.uniform(0.06, 0.25), h / 2, 0])
        geom.name = f"landmark{i}"
        geom.pos = [x, y, h / 2]
        a = rng.uniform(0, np.pi)
        geom.quat = [np.cos(a / 2), 0, 0, np.sin(a / 2)]
        geom.rgba = [*rng.uniform(0.1, 1.0, 3), 1.0]
        geom.contype = geom.conaffinity = 0
    return spec.compile()


def look_yaw(frames: int, hold: int, out: int, rate: float) -> np.ndarray:
    """``(frames,)`` yaw offsets of a look-around, rad: still for ``hold`` frames, then ``out``
    frames turning at ``rate`` rad a frame, then back along the same arc, then still."""
    k = np.arange(frames) - hold
    return rate * np.where(k < 0, 0, np.where(k <= out, k, np.maximum(2 * out - k, 0)))


def go1_walk_episode(frames: int, size: int, seed: int, dt: float = 0.1, landmarks: int = 120,
                     extent: float = 6.0, look: tuple[int, int, float] | None = None) -> dict:
    """One kinematic walk of the Go1 (module docstring): ``rgb (T, S, S, 3)``, ``depth (T, S, S)``
    metres, ``poses (T, 4, 4)`` world-from-camera and ``controls (T, 9)``.

    ``look=(hold, out, rate)`` makes it a look-around instead (:func:`look_yaw`): the Go1 stands
    where the walk would start, trotting on the spot, and only turns."""
    from ws_sim.go1 import TrotGait

    rng = np.random.default_rng(seed)
    model = _go1_scene(rng, landmarks, extent)
    data = mujoco.MjData(model)
    gait = TrotGait()
    cam = model.camera("head").id
    renderer = mujoco.Renderer(model, size, size)
    # no shadows or floor reflections: 12x faster under osmesa, and at 32 px they are a pixel
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    x, y, yaw = 0.0, 0.0, rng.uniform(-np.pi, np.pi)
    speed = rng.uniform(0.3, 0.8)
    turn = 0.0
    if look is not None:
        yaw0, offsets, speed = yaw, look_yaw(frames, *look), 0.0
    rgb, depth, poses = [], [], []
    try:
        for t in range(frames):
            time = t * dt
            if look is not None:
                yaw = yaw0 + offsets[t]
            else:
                turn = 0.85 * turn + 0.15 * rng.normal(0.0, 0.6)  # a wandering yaw rate, rad/s
                if np.hypot(x, y) > extent - 1.0:  # head back towards the middle of the field
                    turn += 0.3 * np.sign(np.sin(np.arctan2(-y, -x) - yaw))
                yaw += turn * dt
            x += speed * dt * np.cos(yaw)
            y += speed * dt * np.sin(yaw)
            bob = 0.012 * np.cos(4 * np.pi * time / gait.period)
            roll = 0.03 * np.sin(2 * np.pi * time / gait.period)
            pitch = 0.015 * np.sin(4 * np.pi * time / gait.period)
            quat = np.zeros(4)
            mujoco.mju_euler2Quat(quat, np.array([roll, pitch, yaw]), "xyz")
            data.qpos[:3] = (x, y, 0.30 + bob)
            data.qpos[3:7] = quat
            data.qpos[7:19] = gait.reference(time)
            mujoco.mj_kinematics(model, data)
            mujoco.mj_camlight(model, data)
            pose = np.eye(4)
            pose[:3, :3] = data.cam_xmat[cam].reshape(3, 3)
            pose[:3, 3] = data.cam_xpos[cam]
            renderer.update_scene(data, camera="head")
            rgb.append(renderer.render())
            renderer.enable_depth_rendering()
            depth.append(renderer.render().astype(np.float32))
            renderer.disable_depth_rendering()
            poses.append(pose)
    finally:
        renderer.close()
    poses = np.stack(poses)
    return {"rgb": np.stack(rgb), "depth": np.stack(depth), "poses": poses.astype(np.float32),
            "controls": camera_controls(poses)}


# --- the PiPER ---------------------------------------------------------------------------------
def _finger_keypoints(qpos: np.ndarray) -> np.ndarray:
    """``(T, 8)`` arm and finger positions -> ``(T, 6)`` world positions of the two fingers."""
    from ws_sim.piper_tasks import make_manip_model

    model = make_manip_model()
    data = mujoco.MjData(model)
    left, right = model.body("link7").id, model.body("link8").id
    out = np.zeros((len(qpos), 6), np.float32)
    for t, q in enumerate(qpos):
        data.qpos[:8] = q
        mujoco.mj_kinematics(model, data)
        out[t] = np.r_[data.xpos[left], data.xpos[right]]
    return out


def _piper_episodes(kind: str, episodes: int, size: int, seed: int, progress) -> tuple[list[dict], float]:
    from ws_sim.demos import collect_demos
    from ws_sim.piper_tasks import PiperManipEnv

    task, camera = ("pick_place", "scene") if kind == "joints" else ("stack", "front")
    eps, attrs = collect_demos(task, episodes, seed=seed, size=size, camera=camera, failure_rate=0.2,
                               progress=progress)
    env = PiperManipEnv(task, camera=camera)
    cam = env.model.camera(camera)
    pose = np.eye(4, dtype=np.float32)
    mujoco.mj_forward(env.model, env.data)
    pose[:3, :3] = env.data.cam_xmat[cam.id].reshape(3, 3)
    pose[:3, 3] = env.data.cam_xpos[cam.id]
    env.close()
    out = []
    for ep in eps:
        t = len(ep.rgb)
        if kind == "joints":  # the command that led to each frame (frame 0: the first command)
            ctrl = np.concatenate([ep.actions[:1], ep.actions]).astype(np.float32)
        else:
            ctrl = _finger_keypoints(ep.qpos)
        out.append({"rgb": ep.rgb, "depth": ep.depth.astype(np.float32), "controls": ctrl,
                    "poses": np.broadcast_to(pose, (t, 4, 4))})
    return out, float(attrs["control_dt"])


def _cut(episodes: list[dict], frames: int, stride: int) -> dict:
    parts = {k: [] for k in ("rgb", "depth", "controls", "poses", "episode")}
    for i, ep in enumerate(episodes):
        for s in range(0, len(ep["rgb"]) - frames + 1, stride):
            for k in ("rgb", "depth", "controls", "poses"):
                parts[k].append(np.asarray(ep[k][s:s + frames]))
            parts["episode"].append(i)
    if not parts["rgb"]:
        raise ValueError(f"no episode is {frames} frames long")
    return {k: np.stack(v) for k, v in parts.items()}


def collect_clips(kind: str, episodes: int, frames: int = 12, stride: int = 4, size: int = 32, seed: int = 0,
                  walk_frames: int = 120, progress: bool = True, look_share: float = 0.0) -> ClipSet:
    """Run the simulator for ``episodes`` episodes of ``kind`` and cut them into clips.

    Args:
        kind: one of :data:`KINDS` (module docstring).
        episodes: episodes (Go1 walks of ``walk_frames`` frames, or PiPER expert episodes with
            20 % deliberate failures, seeds ``seed, seed + 1, ...``).
        frames: frames per clip. stride: frames between clip starts.
        size: frame side, px.
        look_share: ``camera`` only: the share of episodes that are look-arounds (module
            docstring): a random hold, a turn of ``walk_frames / 4`` to ``walk_frames / 2``
            frames at 0.1-0.3 rad a frame either way, and back.

    Returns:
        a :class:`ClipSet` (depth clipped to :data:`MAX_DEPTH` of the kind).

    Raises:
        ValueError: unknown kind, bad counts, episodes shorter than a clip.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown control kind {kind!r}; choose one of {list(KINDS)}")
    if not 0.0 <= look_share <= 1.0:
        raise ValueError(f"look_share must be in [0, 1], got {look_share}")
    if look_share and kind != "camera":
        raise ValueError(f"look-arounds are Go1 camera episodes; {kind!r} has none (look_share {look_share})")
    if episodes < 1 or frames < 2 or stride < 1 or size < 8:
        raise ValueError(f"need episodes >= 1, frames >= 2, stride >= 1, size >= 8; got {episodes}, {frames}, "
                         f"{stride}, {size}")
    bar = tqdm(total=episodes, desc=f"{kind} episodes", disable=not progress, file=sys.stderr)
    if kind == "camera":
        eps = []
        pick = np.random.default_rng([seed, 1])
        for i in range(episodes):
            look = None
            if pick.random() < look_share:
                out = int(pick.integers(walk_frames // 4, walk_frames // 2 + 1))
                hold = int(pick.integers(0, walk_frames - 2 * out + 1))
                look = (hold, out, float(pick.choice([-1, 1]) * pick.uniform(0.1, 0.3)))
            eps.append(go1_walk_episode(walk_frames, size, seed + i, look=look))
            bar.update(1)
        dt = 0.1
    else:
        eps, dt = _piper_episodes(kind, episodes, size, seed, lambda done, total: bar.update(1))
    bar.close()
    cut = _cut(eps, frames, stride)
    depth = np.minimum(cut["depth"], MAX_DEPTH[kind]).astype(np.float16)
    return ClipSet(kind, cut["rgb"].astype(np.uint8), depth, cut["controls"].astype(np.float32),
                   cut["poses"].astype(np.float32), cut["episode"].astype(np.int64), MAX_DEPTH[kind], dt)


def write_clips(path, sets: list[ClipSet]) -> Path:
    """Write clip sets to one HDF5 file (atomically: a failed write leaves nothing); a kind
    already in the file at ``path`` is replaced, the others kept."""
    path = Path(path)
    existing = read_clips(path) if path.exists() else {}
    existing.update({s.kind: s for s in sets})

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for kind, s in existing.items():
                g = f.create_group(kind)
                for name in ("rgb", "depth", "controls", "poses", "episode"):
                    g.create_dataset(name, data=getattr(s, name), compression="gzip" if name == "rgb" else None)
                g.attrs["max_depth"], g.attrs["dt"] = s.max_depth, s.dt

    return atomic_write(path, write)


def read_clips(path) -> dict[str, ClipSet]:
    """Read a :func:`write_clips` file: ``{kind: ClipSet}``.

    Raises:
        FileNotFoundError: no file. ValueError: a group that is not a clip set.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no clip file at {path}")
    out = {}
    with h5py.File(path, "r") as f:
        for kind, g in f.items():
            try:
                out[kind] = ClipSet(kind, g["rgb"][()], g["depth"][()], g["controls"][()], g["poses"][()],
                                    g["episode"][()], float(g.attrs["max_depth"]), float(g.attrs["dt"]))
            except KeyError as e:
                raise ValueError(f"{path}: group {kind!r} is not a clip set (missing {e})") from None
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``ws video clips`` (and ``python -m ws_worldmodel.video.clips``)."""
    ap.add_argument("--kind", action="append", choices=KINDS, help="control kind (repeat; default: all three)")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--frames", type=int, default=12, help="frames per clip")
    ap.add_argument("--stride", type=int, default=4, help="frames between clip starts")
    ap.add_argument("--size", type=int, default=32, help="frame side, px")
    ap.add_argument("--walk-frames", type=int, default=120, help="frames per Go1 walk")
    ap.add_argument("--look-share", type=float, default=0.0,
                    help="share of Go1 episodes that are look-arounds (turn the head away and back)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="HDF5 file (kinds already in it are kept)")


def run(args) -> int:
    """Collect the clips of :func:`add_arguments`'s ``args``, write them and print a line per kind.

    Raises:
        ValueError, OSError: bad settings, an unwritable file.
    """
    sets = [collect_clips(k, args.episodes, args.frames, args.stride, args.size, args.seed, args.walk_frames,
                          look_share=args.look_share) for k in args.kind or KINDS]
    write_clips(args.out, sets)
    for s in sets:
        print(f"{s.kind}: {len(s)} clips of {s.rgb.shape[1]} frames from {len(np.unique(s.episode))} episodes")
    return 0


def main(argv=None) -> int:
    """``python -m ws_worldmodel.video.clips``: as ``ws video clips``."""
    return tool_main("ws_worldmodel.video.clips", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
