"""Object perception: where the task's cube and the target are, from the cameras.

A policy that knows where the objects are succeeds over the whole band (the state policy,
:mod:`ws_policy.state_policy`, 96.7 +- 3.3 % over three training seeds, docs/policy.md); the image
policies do not, and the object-position head of the shipped MoT, trained beside its flow-matching
loss, places the cube 1.5-9.6 cm off in the first frames of development episodes. This module
learns that one thing on its own, as a supervised regression from the simulator's object state
(the pose-estimation pretraining of Levine et al. 2016, "End-to-end training of deep visuomotor
policies", who trained their spatial-softmax keypoints to predict object positions before the
policy; read, not copied):

* one :class:`ws_policy.vision.KeypointEncoder` per camera (the scene camera, and with ``wrist``
  the wrist camera): GroupNorm trunk, spatial-softmax keypoints with their 3D points from depth;
  random crops in training, the centre crop at inference;
* the instruction (which cube, which target) as word embeddings in order; the joint positions only with
  ``joints=True``. Given the joints, the perception learns where the cube is from where the
  demonstrating expert's arm is heading (a copycat shortcut: on training demonstrations it placed the
  cube within 0.9 cm from step 10 on, but 5.3 cm off in the first frame, before the arm moves), and in
  closed loop that estimate follows the policy's own arm; without them it must find the cube in the
  images;
* an MLP from the keypoint tokens, the instruction and the joints to the 8 values of
  :func:`ws_policy.model.object_targets`: the task's cube and the target, minus the band's middle
  and over 0.1 m, and ``sin``/``cos`` of four times the cube's yaw.

The loss is the squared error of those 8 values; every frame of every successful demonstration is
a training sample.
"""

from __future__ import annotations

import dataclasses
import logging
import types

import numpy as np
import torch
import torch.nn as nn

from .errors import PolicyError
from .fit import fit
from .model import N_OBJECT_TARGETS, OBJECT_CENTRE_M, OBJECT_SCALE_M, Vocabulary, object_targets
from .normalizer import Normalizer
from .vision import KeypointEncoder, centre_crop, random_crop

log = logging.getLogger(__name__)

__all__ = ["PerceptionConfig", "ObjectPerception", "train_perception", "perception_errors", "PosePolicy",
           "PosePolicyConfig", "ObjectMemory", "reset_frames", "labelled_frame"]


@dataclasses.dataclass(frozen=True)
class PerceptionConfig:
    """Sizes of :class:`ObjectPerception` (stored in its checkpoint).

    Attributes:
        image_size: the frames' side, px. crop: random crops of this side in training, the centre
        crop at inference (0: the whole frame). keypoints, trunk_width, trunk_blocks: each camera's
        :class:`ws_policy.vision.KeypointEncoder`. wrist: also the wrist camera. fov_y_deg,
        wrist_fov_y_deg: the cameras' vertical fields of view, degrees. d: token width. hidden: the
        MLP's width. vocab, max_words: the instruction's words. max_depth: metres.
    """

    image_size: int = 64
    crop: int = 56
    keypoints: int = 16
    trunk_width: int = 16
    trunk_blocks: int = 2
    wrist: bool = True
    fov_y_deg: float = 45.0
    wrist_fov_y_deg: float = 75.0
    d: int = 32
    hidden: int = 256
    vocab: tuple = ()
    max_words: int = 16
    word_dim: int = 16
    max_depth: float = 2.0
    joints: bool = False  # also read the joint positions (a shortcut through the expert's motion: see the module)

    def __post_init__(self):
        if not self.vocab:
            raise ValueError("PerceptionConfig needs the instruction vocabulary (ws_policy.model.default_vocabulary())")
        if not 0 <= self.crop <= self.image_size:
            raise ValueError(f"crop must be in [0, image_size], got {self.crop} for {self.image_size} px")
        for name in ("image_size", "keypoints", "trunk_width", "trunk_blocks", "d", "hidden", "max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ObjectPerception(nn.Module):
    """``(rgb, depth, state, words) -> (B, 8)``: :func:`ws_policy.model.object_targets` estimated from images.

    ``rgb (B, 3 C, S, S)`` in [-1, 1] and ``depth (B, C, S, S)`` in metres, ``C`` cameras stacked (the scene
    camera, then the wrist camera with ``cfg.wrist``), ``state (B, 8)`` joint positions normalised to [-1, 1] (read
    only with ``cfg.joints``),
    ``words (B, max_words)`` instruction token ids. In training mode each camera gets a random crop (one
    offset per sample), in eval mode the centre crop.
    """

    def __init__(self, cfg: PerceptionConfig):
        super().__init__()
        self.cfg = cfg
        cams = [cfg.fov_y_deg] + ([cfg.wrist_fov_y_deg] if cfg.wrist else [])
        self.encoders = nn.ModuleList(KeypointEncoder(cfg.d, cfg.image_size, fov, cfg.keypoints, cfg.trunk_width,
                                                      cfg.trunk_blocks, cfg.max_depth) for fov in cams)
        self.words = nn.Embedding(len(cfg.vocab) + 1, cfg.word_dim, padding_idx=0)
        width = len(cams) * cfg.keypoints * (2 * cfg.d + 3) + cfg.max_words * cfg.word_dim + 8 * cfg.joints
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, N_OBJECT_TARGETS))
        self.normalizer: Normalizer | None = None  # the joints' ranges (set by training or loading)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, state: torch.Tensor, words: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        feats = []
        for k, enc in enumerate(self.encoders):
            r, d = rgb[:, 3 * k:3 * k + 3], depth[:, k:k + 1]
            if self.cfg.crop and self.cfg.crop < self.cfg.image_size:
                r, d, off = (random_crop(r, d, self.cfg.crop, generator) if self.training
                             else centre_crop(r, d, self.cfg.crop))
            else:
                off = torch.zeros(len(r), 2, device=r.device)
            video, dep, points = enc(r, d, off)
            feats += [video.flatten(1), dep.flatten(1), points.flatten(1)]
        feats.append(self.words(words).flatten(1))
        if self.cfg.joints:
            feats.append(state)
        return self.mlp(torch.cat(feats, dim=-1))


def _images(rgb: np.ndarray, depth: np.ndarray, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(B, H, W, 3)`` and metres ``(B, H, W)`` -> ``(B, 3, H, W)`` in [-1, 1] and ``(B, 1, H, W)`` m."""
    r = torch.as_tensor(rgb, dtype=torch.float32).movedim(-1, -3) / 127.5 - 1
    return r, torch.as_tensor(np.minimum(depth, max_depth)).unsqueeze(-3)


def _frames(episodes) -> list[tuple[int, int]]:
    return [(i, t) for i, e in enumerate(episodes) for t in range(len(e.qpos))]


def _batch(episodes, items, cfg: PerceptionConfig, norm: Normalizer, vocab: Vocabulary):
    """The network's tensors for ``(episode, step)`` items, and their targets ``(B, 8)``."""

    def stack(name):
        return np.stack([getattr(episodes[i], name)[t] for i, t in items])

    rgb, depth = _images(stack("rgb"), stack("depth").astype(np.float32), cfg.max_depth)
    if cfg.wrist:
        wr, wd = _images(stack("wrist_rgb"), stack("wrist_depth").astype(np.float32), cfg.max_depth)
        rgb, depth = torch.cat([rgb, wr], dim=1), torch.cat([depth, wd], dim=1)
    state = torch.as_tensor(norm.state(stack("qpos")), dtype=torch.float32)
    words = torch.as_tensor(np.stack([vocab.encode(episodes[i].instruction) for i, _ in items]))
    target = torch.as_tensor(object_targets(stack("objects")))
    return rgb, depth, state, words, target


def labelled_frame(obs: dict, instruction: str):
    """One observation of :class:`ws_sim.piper_tasks.PiperManipEnv` (``render_mode="rgbd"``) as a one-frame
    episode for :func:`train_perception`: its images (and the wrist camera's, where the observation has them), the
    joints and the true object state as the label."""
    frame = {k: np.asarray(obs[k])[None] for k in ("rgb", "depth", "qpos", "objects")}
    frame["depth"] = frame["depth"].astype(np.float16)
    if "wrist_rgb" in obs:
        frame.update(wrist_rgb=np.asarray(obs["wrist_rgb"])[None],
                     wrist_depth=np.asarray(obs["wrist_depth"])[None].astype(np.float16))
    else:
        frame.update(wrist_rgb=None, wrist_depth=None)
    return types.SimpleNamespace(**frame, instruction=instruction, success=True)


def reset_frames(task: str, n: int, seed: int, size: int, wrist: bool = True, workspace: str = "full",
                 camera: str = "task", progress=None) -> list:
    """The first frame of ``n`` fresh layouts (reset seeds ``seed ..``, stratified over the band like
    ``ws policy collect --stratified``), as one-frame episodes for :func:`train_perception`: the frames where a
    policy must find the cube before its arm moves, which are one in a hundred of a demonstration's frames and
    cost a reset, no expert.

    Returns:
        objects with ``rgb (1, S, S, 3)``, ``depth``, ``wrist_rgb``/``wrist_depth`` (with ``wrist``), ``qpos (1, 8)``,
        ``objects (1, 17)``, ``instruction`` and ``success`` True; a layout the environment cannot place (it raised
        RuntimeError for one reset in about 1250) is skipped with a warning, so there may be fewer than ``n``.

    Raises:
        ValueError: ``n`` < 1, or what :class:`ws_sim.piper_tasks.PiperManipEnv` raises.
    """
    from ws_sim.demos import latin_hypercube
    from ws_sim.piper_tasks import PiperManipEnv

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    env = PiperManipEnv(task, render_mode="rgbd", width=size, height=size, camera=camera, workspace=workspace,
                        wrist=wrist)
    strata = latin_hypercube(n, 5, np.random.default_rng([seed, 2]))
    out = []
    try:
        for i in range(n):
            try:
                obs, info = env.reset(seed=seed + i, options={"layout_u": strata[i]})
            except RuntimeError as e:  # a rare stratum where the environment cannot place the objects apart
                log.warning("layout %d (reset seed %d) skipped: %s", i, seed + i, e)
                continue
            out.append(labelled_frame(obs, info["instruction"]))
            if progress is not None:
                progress(i + 1, n)
    finally:
        env.close()
    return out


def train_perception(cfg: PerceptionConfig, episodes, steps: int, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0, progress=None, init: ObjectPerception | None = None) -> tuple[ObjectPerception, dict]:
    """Train :class:`ObjectPerception` on every frame of the successful demonstrations (and of any one-frame
    episodes among them: :func:`reset_frames`, :func:`labelled_frame`).

    AdamW (weight decay 1e-4), cosine decay of ``lr`` over ``steps``; ``init``: continue from this perception's
    weights (its config must be ``cfg``).

    Returns:
        (the model in eval mode, with its ``normalizer``; history ``{"loss": [...], "seconds": s}``).

    Raises:
        PolicyError: no successful episode; episodes without object states, or without the wrist camera
            when ``cfg.wrist``; images of another size than ``cfg.image_size``; bad counts.
    """
    eps = [e for e in episodes if e.success]
    if not eps:
        raise PolicyError("no successful episode to learn object positions from")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise PolicyError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if any(e.objects is None or np.asarray(e.objects).shape[-1] != 17 for e in eps):
        raise PolicyError("object perception learns from each frame's object state ('objects', 17 values)")
    if cfg.wrist and any(e.wrist_rgb is None for e in eps):
        raise PolicyError("this perception reads the wrist camera; the demonstrations have none "
                          "(record them with 'ws policy collect --wrist')")
    if eps[0].rgb.shape[1] != cfg.image_size:
        raise PolicyError(f"the demonstrations' images are {eps[0].rgb.shape[1]} px, the config's {cfg.image_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    demos = [e for e in eps if getattr(e, "actions", None) is not None]  # not reset_frames' one-frame layouts
    norm = Normalizer.from_episodes(demos) if demos else Normalizer.for_piper()
    vocab = Vocabulary(list(cfg.vocab), cfg.max_words)
    frames = _frames(eps)
    model = ObjectPerception(cfg)
    if init is not None:
        if init.cfg != cfg:
            raise PolicyError("train_perception continues a perception of the same config only")
        model.load_state_dict(init.state_dict())
    model.normalizer = norm

    def batch_loss(step):
        items = [frames[j] for j in rng.integers(0, len(frames), batch_size)]
        rgb, depth, state, words, target = _batch(eps, items, cfg, norm, vocab)
        return (model(rgb, depth, state, words, gen) - target).square().mean()

    hist = fit(model, batch_loss, steps, lr, progress=progress)
    return model.eval(), hist


@torch.no_grad()
def perception_errors(model: ObjectPerception, episodes, first_only: bool = False, batch: int = 128) -> dict:
    """How far the estimates are from the truth on demonstrations (their successful episodes).

    Args:
        first_only: only each episode's first frame (where a policy decides which cube to go to).

    Returns:
        ``{"frames", "cube_m": {"median", "p90"}, "target_m": {...}, "hold_mean_cube_m"}``: distances in
        metres, and for reference the median cube error of always answering the training mean (the
        band's middle) - what a perception that learnt nothing scores.
    """
    eps = [e for e in episodes if e.success]
    items = [(i, 0) for i in range(len(eps))] if first_only else _frames(eps)
    vocab = Vocabulary(list(model.cfg.vocab), model.cfg.max_words)
    model.eval()
    est, true = [], []
    for k in range(0, len(items), batch):
        rgb, depth, state, words, target = _batch(eps, items[k:k + batch], model.cfg, model.normalizer, vocab)
        est.append(model(rgb, depth, state, words).numpy())
        true.append(target.numpy())
    est, true = np.concatenate(est), np.concatenate(true)

    def dist(a, b, sl):
        return np.linalg.norm(a[:, sl] - b[:, sl], axis=-1) * OBJECT_SCALE_M

    cube, target = dist(est, true, slice(0, 3)), dist(est, true, slice(3, 6))
    mean_cube = dist(np.broadcast_to(true.mean(0), true.shape), true, slice(0, 3))

    def stats(x):
        return {"median": round(float(np.median(x)), 4), "p90": round(float(np.percentile(x, 90)), 4)}

    return {"frames": len(items), "cube_m": stats(cube), "target_m": stats(target),
            "hold_mean_cube_m": round(float(np.median(mean_cube)), 4)}


@dataclasses.dataclass(frozen=True)
class PosePolicyConfig:
    """What :class:`PosePolicy` is made of. What the runner, the executor and the evaluation read off a
    policy's config comes from the two parts: ``wrist``, ``image_size``, ``vocab``, ``max_words`` and ``max_depth``
    from the perception, ``chunk``, ``action_dim`` and ``euler_steps`` from the actor."""

    perception: PerceptionConfig
    actor: "object"  # a ws_policy.state_policy.StatePolicyConfig with inputs "targets"
    mode: str = "pose"

    privileged = False  # it reads images and joints only: fit for a robot
    predicts_actions = True
    indicator = False
    object_aux = 1.0  # it has an object-position estimate (PolicyRunner.object_positions)
    state_dim = 8

    def __post_init__(self):
        if getattr(self.actor, "inputs", None) != "targets":
            raise ValueError("a pose policy's actor reads the estimated object targets: a state policy with "
                             "inputs 'targets' ('ws policy train --model state --state-inputs targets')")

    # read by the runner, the executor and the evaluation as on any policy config
    _FROM_PERCEPTION = ("wrist", "image_size", "vocab", "max_words", "max_depth")
    _FROM_ACTOR = ("chunk", "action_dim", "euler_steps")

    def __getattr__(self, name: str):
        if name in PosePolicyConfig._FROM_PERCEPTION:
            return getattr(self.perception, name)
        if name in PosePolicyConfig._FROM_ACTOR:
            return getattr(self.actor, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


class PosePolicy(nn.Module):
    """Perception, then action: :class:`ObjectPerception` estimates the task's cube and the target from
    the cameras, and a state policy trained on the true values (:mod:`ws_policy.state_policy`, inputs
    ``"targets"``) turns the joints and that estimate into an action chunk. Reads images, joints and the
    instruction only (no simulator state), so ``policy_executor`` runs it on a robot.

    Both parts share the actor's :class:`ws_policy.normalizer.Normalizer` (the joints' and actions' ranges).
    """

    def __init__(self, perception: ObjectPerception, actor: nn.Module, object_memory: int = 0):
        super().__init__()
        if isinstance(object_memory, bool) or not isinstance(object_memory, (int, np.integer)) or object_memory < 0:
            raise ValueError(f"object_memory must be a whole number >= 0, got {object_memory!r}")
        self.perception, self.actor = perception, actor
        self.cfg = PosePolicyConfig(perception.cfg, actor.cfg)
        #: how many first estimates :class:`ObjectMemory` averages when this policy runs (0: none); saved
        #: in its checkpoint and used by :class:`ws_policy.train.PolicyRunner` unless it is told otherwise
        self.object_memory = int(object_memory)

    @property
    def normalizer(self) -> Normalizer | None:
        return self.actor.normalizer

    @normalizer.setter
    def normalizer(self, norm: Normalizer) -> None:
        self.actor.normalizer = self.perception.normalizer = norm

    def vision_init(self) -> nn.Module:
        """The perception's keypoint encoders under the names of a keypoint
        :class:`ws_policy.model.WorldScapePolicy` (``keypoint_encoder``, ``wrist_encoder``), as ``init`` for
        :func:`ws_policy.train.train_policy`: the image policy starts with vision that already finds the objects
        (Levine et al. 2016 pretrain their visuomotor policy's conv layers on object poses the same way). The
        trunk and keypoint maps carry over when the trunk's width, blocks and keypoints match; the token
        projections only where the widths match too.
        """
        m = nn.Module()
        m.keypoint_encoder = self.perception.encoders[0]
        if len(self.perception.encoders) > 1:
            m.wrist_encoder = self.perception.encoders[1]
        return m

    @torch.no_grad()
    def sample(self, rgb: torch.Tensor, depth: torch.Tensor, state: torch.Tensor, words: torch.Tensor,
               generator: torch.Generator | None = None, steps: int | None = None,
               memory: "ObjectMemory | None" = None) -> torch.Tensor:
        """``(B, L, 7)`` normalised action chunks from the images, the normalised joints ``state (B, 8)`` and
        the instruction (the shapes of :class:`ObjectPerception`); with ``memory`` (batch of one, the calls of
        one episode in order) the actor reads what :class:`ObjectMemory` keeps of the estimates."""
        estimate = self.perception(rgb, depth, state, words)
        if memory is not None:
            estimate = memory(estimate)
        return self.actor.sample(torch.cat([state, estimate], dim=-1), generator, steps)


class ObjectMemory:
    """What a pose policy keeps of its object estimates within one episode: the target disc never moves,
    and a cube on the table stays where it is until the gripper takes it.

    The perception is most accurate before the arm comes close: on the reserved seeds the shipped pose
    policy placed the resting cube 0.5 cm off (median) in the first frame and 1.1 cm off as the arm
    approached (``ws policy eval``'s ``start_cube_error_m`` and ``approach_cube_error_m``). So:

    * the target is the mean of the estimates of the first ``frames`` calls, for the whole episode;
    * the cube (position and yaw) is the mean of the first ``frames`` estimates while the estimate of its
      height stays below :data:`ws_policy.state_policy.CUBE_REST_Z_M` + ``lifted_m``; from the first call whose
      estimate puts the cube higher (it is in the gripper), the live estimate, for the rest of the episode.

    A cube pushed along the table before it is grasped is not followed (the policy aims at where it was).
    Call :meth:`reset` at each new episode (:class:`ws_policy.executor.ChunkExecutor` does). Measured in
    docs/policy.md: on development seeds 3000-3089, 77/90 with ``frames=2`` against 78/90 without; on seeds
    6000-6099, 81/100 against 68/100 for the policy shipped until 2026-12-08 and 84/100 against 72/100 for
    its successor. A pose policy's checkpoint says how many frames it runs with
    (:attr:`PosePolicy.object_memory`, ``ws policy train --object-memory``).

    Args:
        frames: how many first estimates are averaged (>= 1).
        lifted_m: how far above its resting height the estimated cube counts as taken (m, > 0).

    Raises:
        ValueError: ``frames`` < 1 or ``lifted_m`` <= 0; an estimate that is not ``(1, 8)``.
    """

    def __init__(self, frames: int = 2, lifted_m: float | None = None):
        from .state_policy import CUBE_REST_Z_M, LIFTED_M

        lifted_m = LIFTED_M if lifted_m is None else float(lifted_m)
        if int(frames) < 1 or not lifted_m > 0:
            raise ValueError(f"object memory needs frames >= 1 and lifted_m > 0, got {frames} and {lifted_m}")
        self.frames, self.lifted_m = int(frames), lifted_m
        # the estimate's cube height (normalised as ws_policy.model.object_targets) above which it is taken
        self._taken_z = (CUBE_REST_Z_M + lifted_m - OBJECT_CENTRE_M[2]) / OBJECT_SCALE_M
        self.reset()

    def reset(self) -> None:
        """Forget the episode's estimates."""
        self.calls, self.released = 0, False
        self._sum = None

    def __call__(self, estimate: torch.Tensor) -> torch.Tensor:
        """``(1, 8)`` estimate (:func:`ws_policy.model.object_targets` units) in, the one the actor reads out."""
        if tuple(estimate.shape) != (1, N_OBJECT_TARGETS):
            raise ValueError(f"object memory takes one estimate of shape (1, {N_OBJECT_TARGETS}), "
                             f"got {tuple(estimate.shape)}")
        self.calls += 1
        if self.calls <= self.frames:
            self._sum = estimate.clone() if self._sum is None else self._sum + estimate
        kept = self._sum / min(self.calls, self.frames)
        if not self.released and float(estimate[0, 2]) > self._taken_z:
            self.released = True
        out = estimate.clone()
        out[:, 3:6] = kept[:, 3:6]  # the target
        if not self.released:
            out[:, 0:3], out[:, 6:8] = kept[:, 0:3], kept[:, 6:8]  # the resting cube's position and yaw
        return out
