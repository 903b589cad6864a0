"""WorldScape Policy: a Mixture-of-Transformers over video, depth and action tokens (seed 004).

Seed 004 gives the factorisation (the next L steps of video, depth and actions, given the
current frame, depth, instruction and proprioceptive state), one flow-matching objective
over all three, the 3D loss ``L = L_diff + alpha L_3D`` with ``L_3D = (1/K) sum_k (|D^_k -
D_k|^2 + lambda |I^_k - I_k|^2)``, and the name of a Depth Positional Embedding; it gives no
sizes, schedules or formulas beyond those. What is chosen here, and why:

**Tokens.** Images are cut into ``patch`` x ``patch`` pixel patches (no autoencoder: the
cubes are a few pixels wide at 64 px, and a VAE trained on a few hundred episodes blurs
exactly those; patches keep the loss in pixel space and need no second training stage).
The current RGB and depth frames are ``image_size`` px and are embedded by a small
convolutional stem (``stem="conv"``: two stride-2 3x3 convolutions, then one whose kernel
and stride cover the rest of the patch; Xiao et al. 2021, "Early convolutions help
transformers see better", found such stems make small ViTs train faster and more
reliably; ``stem="linear"`` is the plain ViT patch projection). The F future frames (every
``stride`` control steps) are predicted at ``future_size`` px and embedded linearly (they
are noisy flow targets). Actions are one token per step of the chunk (L steps x 7 joint
targets). The instruction comes from a fixed vocabulary (the tasks' templates and colours:
no download, and an unknown word is an error, not a silent guess); its word embeddings,
in order, are concatenated and mapped by an MLP to one token, so which colour is the
cube's and which the target's survives; the proprioceptive state is one token.

**Keypoint encoder** (``encoder="keypoints"``, :mod:`ws_policy.vision`): instead of patches, a
GroupNorm conv trunk over the current RGB-D frame with spatial-softmax keypoints; each keypoint is a
video token (its features and image position) and a depth token (its back-projected 3D point),
trained on random crops and run on the centre crop. The future frames stay patches.

**Mixture-of-Transformers.** Three experts, one per modality: *video* (current and future
RGB tokens), *depth* (current and future depth tokens) and *action* (action tokens, and the
instruction and state tokens that condition them). Every block has per-expert norms, QKV
and output projections and feed-forward networks; attention is one global softmax over all
tokens of all modalities. A block mask keeps the clean context (current frames,
instruction, state) from attending to the noisy targets (future frames, actions), which
attend to everything (as pi0 does with its prefix; the seed names no mask).

**Depth Positional Embedding.** Each current-frame patch's pixels are back-projected with the
camera's pinhole intrinsics and measured depth; Fourier features of the patch's mean 3D
point (camera frame, metres) go through a small MLP and are added to that patch's RGB *and*
depth tokens, so every image token carries where it is in 3D.

**Objective.** Rectified flow on all targets jointly (normalised to [-1, 1]): ``x_tau =
tau x_1 + (1 - tau) x_0``, ``x_0 ~ N(0, I)``, the network predicts the velocity ``x_1 - x_0``;
``tau ~ U(0, 1)``; ``L_diff`` is the mean squared velocity error per modality, summed over
modalities (the action term times ``action_weight``, 1 by default: the seed gives no
weights; at the end of the README's CPU runs the MoT's loss was about 60 times the
action-only policy's). ``L_3D`` compares the one-step clean estimate ``x^_1 = x_tau + (1 - tau) v^`` of the
future depth and images with the truth (``lambda`` weights images). Sampling: ``euler_steps``
Euler steps from noise.

**Action prediction** (``action_prediction``). ``"velocity"``: the action tokens' output is the
velocity ``x_1 - x_0``, as above. ``"sample"``: it is the clean chunk ``x^_1`` itself (x-prediction,
Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise", arXiv 2511.13720), the
action term of ``L_diff`` is ``|x^_1 - x_1|^2``, and sampling integrates the velocity it implies,
``(x^_1 - x_tau) / (1 - tau)`` (so the last Euler step lands on the network's clean estimate). A
chunk of joint targets lies on a low-dimensional set that noise does not; measured here
(docs/policy.md, "The action side"), the state policy given the object poses
(:mod:`ws_policy.state_policy`) went from 11.1 +- 16.4 % to 96.7 +- 3.3 % pick-and-place success over
the whole band with this one change (3 training seeds).

**Object-position auxiliary** (``object_aux > 0``, training only): a linear head reads the state
token's final embedding and regresses where the task's cube and the target are
(:func:`object_targets`: 8 values), with weight ``object_aux`` beside the flow-matching loss. The
context attends only to itself, so the probe depends on the current frames, the instruction and the
joint state alone: it asks the context the action tokens attend to to say where the objects are.
Localising a 4 cm cube in a 64 px frame anywhere over the band is what the action loss alone teaches
slowly; auxiliary state prediction from privileged simulator state is the standard remedy (e.g.
Pinto et al. 2018, "Asymmetric actor critic for image-based robot learning"; Levine et al. 2016
pretrain their visuomotor policies' spatial-softmax keypoints on object positions). Nothing of it
runs at inference.

**Diagnostic**: ``privileged=True`` adds the simulator's object poses to the state token, to
tell a learning or pipeline problem from a vision problem; never for deployment.

**Variants** (same code, same data): ``mode="mot"`` (the policy); ``"action_only"`` (no video
or depth targets: the action-only flow-matching baseline); ``"world"`` (video and depth
targets only, actions unused: the world model that can be pretrained on demonstrations
without actions and then fine-tuned into the policy); ``action_head="idm"`` replaces the
denoised action tokens by an inverse-dynamics head that regresses the chunk from the
(predicted) future frames and the context: seed 004's factorisation ``p(v, d | o) p(a | v,
d, o)`` as a head of the same network; ``mode="idm"`` is that head alone, trained on true
future frames: with a ``"world"`` model in front of it, the two-stage pipeline (video
prediction, then a separate inverse-dynamics model) that seed 004 argues against.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import PolicyError
from .vision import KeypointEncoder, centre_crop, fourier_features, random_crop

__all__ = ["PolicyConfig", "WorldScapePolicy", "Vocabulary", "PolicyInputError", "MODALITIES", "default_vocabulary",
           "build_policy", "POLICY_CLASSES", "object_targets", "object_positions", "N_OBJECT_TARGETS",
           "OBJECT_CENTRE_M", "OBJECT_SCALE_M"]

MODALITIES = ("video", "depth", "action")

#: the auxiliary head's targets per frame (:func:`object_targets`)
N_OBJECT_TARGETS = 8
#: where object positions are centred and how they are scaled (m) for the networks that read them
OBJECT_CENTRE_M = np.array([0.26, 0.0, 0.03])  # about the middle of the PiPER's reachable band (docs/policy.md)
OBJECT_SCALE_M = 0.1


def object_targets(objects: np.ndarray) -> np.ndarray:
    """The object-position auxiliary's targets from the simulator's object state.

    Args:
        objects: ``(..., 17)`` as :class:`ws_sim.piper_tasks.PiperManipEnv` reports them (cube A
            position and quaternion ``wxyz``, cube B position and quaternion, target position; metres).

    Returns:
        ``(..., 8)`` float32: the task's cube (A) and the target positions, each minus the band's
        middle ``(0.26, 0, 0.03)`` m and over 0.1 m, then ``sin 4 psi`` and ``cos 4 psi`` of cube A's
        yaw ``psi`` (a cube looks the same every 90 degrees).

    Raises:
        ValueError: the last axis is not 17 long.
    """
    o = np.asarray(objects, dtype=np.float64)
    if o.shape[-1] != 17:
        raise ValueError(f"objects must have 17 values on the last axis, got shape {o.shape}")
    w, z = o[..., 3], o[..., 6]
    yaw = 2.0 * np.arctan2(z, w)
    pos = (np.stack([o[..., 0:3], o[..., 14:17]], axis=-2) - OBJECT_CENTRE_M) / OBJECT_SCALE_M
    return np.concatenate([pos.reshape(*o.shape[:-1], 6), np.sin(4 * yaw)[..., None], np.cos(4 * yaw)[..., None]],
                          axis=-1).astype(np.float32)


def object_positions(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`object_targets` for the positions.

    Args:
        targets: ``(..., 8)`` as :func:`object_targets` makes them (or the auxiliary head predicts them).

    Returns:
        ``(cube (..., 3), target (..., 3))`` in metres, in the world frame of the PiPER scene.
    """
    t = np.asarray(targets, dtype=np.float64)
    pos = t[..., :6].reshape(*t.shape[:-1], 2, 3) * OBJECT_SCALE_M + OBJECT_CENTRE_M
    return pos[..., 0, :], pos[..., 1, :]


class PolicyInputError(PolicyError):
    """A malformed observation or instruction given to the policy (the message says what)."""


def default_vocabulary() -> list[str]:
    """Every word of the PiPER tasks' instructions (templates and colours)."""
    from ws_sim.piper_tasks import _INSTRUCTIONS, COLORS

    words = set()
    for template in _INSTRUCTIONS.values():
        words |= set(re.sub(r"\{\w+\}", "", template).split())
    return sorted(words | set(COLORS))


class Vocabulary:
    """A fixed word vocabulary: ``encode("pick up the red cube ...") -> (n,)`` token ids.

    Id 0 is padding. Raises :class:`PolicyInputError` for an empty instruction or a word
    outside the vocabulary (naming it)."""

    def __init__(self, words: list[str], max_len: int = 16):
        self.words = list(words)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}
        self.max_len = int(max_len)

    def __len__(self) -> int:
        return len(self.words) + 1

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise PolicyInputError(f"the instruction must be non-empty text, got {text!r}")
        words = text.lower().replace(",", " ").replace(".", " ").split()
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise PolicyInputError(f"instruction {text!r} has words outside the policy's vocabulary: {unknown}")
        if len(words) > self.max_len:
            raise PolicyInputError(f"instruction {text!r} has {len(words)} words; at most {self.max_len}")
        ids = np.zeros(self.max_len, dtype=np.int64)
        ids[:len(words)] = [self.index[w] for w in words]
        return ids


@dataclasses.dataclass
class PolicyConfig:
    """Sizes and loss weights (see the module docstring for what each means).

    ``cpu()`` trains on two cores in minutes; ``gpu()`` is the size for a real GPU."""

    mode: str = "mot"  # mot | action_only | world | idm
    action_head: str = "flow"  # flow | idm
    image_size: int = 64
    future_size: int = 32
    patch: int = 16
    stem: str = "conv"  # conv | linear: the current frames' patch embedding
    encoder: str = "patch"  # patch: patch tokens of the current frame | keypoints: ws_policy.vision.KeypointEncoder
    keypoints: int = 16  # with encoder "keypoints": tokens per modality (spatial-softmax maps)
    trunk_width: int = 16  # with encoder "keypoints": the GroupNorm trunk's width (doubled after its second stride)
    trunk_blocks: int = 2  # with encoder "keypoints": residual blocks at a quarter of the resolution
    crop: int = 0  # with encoder "keypoints": random crops of this many px in training, the centre crop at inference (0: none)
    wrist: bool = False  # with encoder "keypoints": the wrist camera too, its own encoder (rgb and depth carry both cameras)
    wrist_fov_y_deg: float = 75.0  # the wrist camera's vertical field of view
    frames: int = 2
    stride: int = 4
    chunk: int = 8
    action_dim: int = 7
    state_dim: int = 8
    privileged: bool = False  # diagnostic: the objects' poses (17 values) join the state token
    object_aux: float = 0.0  # weight of the object-position auxiliary (training only; 0: none)
    d_model: int = 128
    heads: int = 4
    layers: int = 3
    ffn_mult: int = 4
    alpha: float = 0.1  # weight of L_3D
    action_weight: float = 1.0  # weight of the action chunk's term inside L_diff (the seed sums them unweighted)
    lam: float = 1.0  # weight of the image term inside L_3D
    euler_steps: int = 10
    action_prediction: str = "velocity"  # the action tokens' output: the flow velocity, or the clean chunk ("sample")
    fov_y_deg: float = 60.0  # the camera's vertical field of view (the DPE's intrinsics)
    max_depth: float = 2.0
    vocab: tuple = ()
    max_words: int = 16
    indicator: bool = False  # advantage conditioning (issue 8): an improvement-indicator embedding on the text token
    indicator_dropout: float = 0.3  # share of training windows whose indicator is dropped (unconditioned)
    indicator_on_actions: bool = False  # the indicator embedding also joins every noisy action token
    video_model: str = "mot"  # mot: the policy's own video and depth experts; dit: the video world model (issue 9)
    dit: dict | None = None  # with video_model "dit": the VideoDiTConfig fields of the video-depth stream
    dit_kind: str = "joints"  # with video_model "dit": the stream's control kind (its expert)
    dit_obs: bool = False  # with video_model "dit": the current frame also enters at image_size as its own stream

    def __post_init__(self):
        if self.mode not in ("mot", "action_only", "world", "idm"):
            raise ValueError(f"mode must be mot, action_only, world or idm, got {self.mode!r}")
        if self.mode == "idm" and self.action_head != "idm":
            raise ValueError("mode 'idm' (a separate inverse-dynamics model) needs action_head 'idm'")
        if self.action_head not in ("flow", "idm"):
            raise ValueError(f"action_head must be flow or idm, got {self.action_head!r}")
        for size in (self.image_size, self.future_size):
            if size % self.patch:
                raise ValueError(f"image sizes ({self.image_size}, {self.future_size}) must be multiples of patch "
                                 f"{self.patch}")
        if self.stem not in ("conv", "linear"):
            raise ValueError(f"stem must be conv or linear, got {self.stem!r}")
        if self.encoder not in ("patch", "keypoints"):
            raise ValueError(f"encoder must be patch or keypoints, got {self.encoder!r}")
        if self.encoder == "keypoints":
            if self.video_model != "mot":
                raise ValueError("encoder 'keypoints' is for the policy's own video and depth experts (video_model mot)")
            if self.keypoints < 1 or self.trunk_width < 8 or self.trunk_blocks < 1:
                raise ValueError(f"keypoints >= 1, trunk_width >= 8 and trunk_blocks >= 1, got {self.keypoints}, "
                                 f"{self.trunk_width}, {self.trunk_blocks}")
            if not (self.crop == 0 or 8 <= self.crop <= self.image_size):
                raise ValueError(f"crop must be 0 (none) or 8..{self.image_size} px, got {self.crop}")
        elif self.crop or self.wrist:
            raise ValueError("random crops (crop > 0) and the wrist camera are for encoder 'keypoints'")
        if self.stem == "conv" and self.patch % 4:
            raise ValueError(f"a conv stem needs a patch size divisible by 4, got {self.patch}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        if self.indicator_on_actions and not self.indicator:
            raise ValueError("indicator_on_actions needs indicator=True (an advantage-conditioned policy)")
        if not 0.0 <= self.indicator_dropout < 1.0:
            raise ValueError(f"indicator_dropout must be in [0, 1), got {self.indicator_dropout}")
        if self.action_prediction not in ("velocity", "sample"):
            raise ValueError(f"action_prediction must be velocity or sample, got {self.action_prediction!r}")
        if self.video_model not in ("mot", "dit"):
            raise ValueError(f"video_model must be mot or dit, got {self.video_model!r}")
        if not (math.isfinite(self.object_aux) and self.object_aux >= 0):
            raise ValueError(f"object_aux must be a finite weight >= 0, got {self.object_aux}")
        if self.object_aux and self.video_model != "mot":
            raise ValueError("the object-position auxiliary (object_aux) is for video_model 'mot'")
        if self.video_model == "dit":
            self._check_dit()
        elif self.dit_obs:
            raise ValueError("dit_obs (an observation stream beside the video world model) needs video_model 'dit'")

    def _check_dit(self) -> None:
        from ws_worldmodel.video.dit import VideoDiTConfig

        if self.mode not in ("mot", "world") or self.action_head != "flow":
            raise ValueError(f"video_model 'dit' is the video-depth stream of mode mot or world with the flow action "
                             f"head, got mode {self.mode!r}, action_head {self.action_head!r}")
        if self.dit is None:
            self.dit = dataclasses.asdict(VideoDiTConfig.cpu(image_size=self.future_size, residual=True,
                                                             patch=max(1, self.future_size * self.patch // self.image_size),
                                                             d_model=self.d_model, heads=self.heads,
                                                             layers=self.layers, ffn_mult=self.ffn_mult))
        dc = VideoDiTConfig(**self.dit)
        self.dit = dataclasses.asdict(dc)
        if dc.image_size != self.future_size or dc.channels != 4:
            raise ValueError(f"the video world model makes {dc.channels}-channel {dc.image_size} px frames; the policy "
                             f"needs RGB-D (4) at future_size {self.future_size} px")
        if (dc.d_model, dc.heads, dc.layers) != (self.d_model, self.heads, self.layers):
            raise ValueError(f"the video world model has {dc.layers} layers {dc.d_model} wide with {dc.heads} heads; "
                             f"the policy's layers {self.layers}, d_model {self.d_model} and heads {self.heads} must "
                             f"match (attention is shared layer by layer)")
        if self.image_size // self.patch != dc.image_size // dc.patch:
            raise ValueError(f"the Depth Positional Embedding pools the {self.image_size} px frame in {self.patch} px "
                             f"patches: {self.image_size // self.patch} a side, but the video model has "
                             f"{dc.image_size // dc.patch} patches a side")
        if self.dit_kind not in dc.control_kinds:
            raise ValueError(f"dit_kind {self.dit_kind!r} is not one of the video model's control kinds "
                             f"{list(dc.control_kinds)}")

    @classmethod
    def cpu(cls, **kw) -> "PolicyConfig":
        return cls(**kw)

    @classmethod
    def gpu(cls, **kw) -> "PolicyConfig":
        return cls(**{**dict(image_size=128, future_size=64, patch=8, frames=4, chunk=16, d_model=512, heads=8,
                             layers=12), **kw})

    @property
    def predicts_video(self) -> bool:
        return self.mode in ("mot", "world")

    @property
    def predicts_actions(self) -> bool:
        return self.mode in ("mot", "action_only", "idm")

    @property
    def reads_future(self) -> bool:
        """Future-frame tokens are in the sequence (noisy targets, or, for ``idm``, clean inputs)."""
        return self.mode in ("mot", "world", "idm")


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), C p p)``."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def _unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def _conv_stem(c_in: int, d: int, patch: int) -> nn.Module:
    """``(B, c_in, S, S) -> (B, d, S/patch, S/patch)``: two stride-2 3x3 convolutions, then one
    ``patch/4`` kernel and stride."""
    return nn.Sequential(nn.Conv2d(c_in, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                         nn.Conv2d(64, d, patch // 4, patch // 4))


def _current_frame_embeddings(cfg: "PolicyConfig", d: int) -> tuple[nn.Module, nn.Module]:
    """The current frame's RGB and depth patch embeddings (``cfg.stem``): ``(B, 3 | 1, S, S)`` to
    ``(B, d, S/patch, S/patch)`` with the conv stem, ``(B, n, c patch^2)`` to ``(B, n, d)`` without."""
    p = cfg.patch
    if cfg.stem == "conv":
        return _conv_stem(3, d, p), _conv_stem(1, d, p)
    return nn.Linear(3 * p * p, d), nn.Linear(p * p, d)


class _ExpertLinear(nn.Module):
    """One linear map per modality, applied to that modality's slice of the sequence."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(d_in, d_out) for _ in MODALITIES)

    def forward(self, x: torch.Tensor, slices: list[slice]) -> torch.Tensor:
        return torch.cat([self.maps[m](x[:, s]) for m, s in enumerate(slices)], dim=1)


class _ExpertNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in MODALITIES)

    def forward(self, x: torch.Tensor, slices: list[slice]) -> torch.Tensor:
        return torch.cat([self.norms[m](x[:, s]) for m, s in enumerate(slices)], dim=1)


class _ExpertFFN(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.up, self.down = _ExpertLinear(d, hidden), _ExpertLinear(hidden, d)

    def forward(self, x, slices):
        return self.down(F.gelu(self.up(x, slices)), slices)


class MoTBlock(nn.Module):
    """Per-modality norms, QKV, output projection and FFN; one global attention."""

    def __init__(self, d: int, heads: int, ffn_mult: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = _ExpertNorm(d), _ExpertNorm(d)
        self.qkv, self.out = _ExpertLinear(d, 3 * d), _ExpertLinear(d, d)
        self.ffn = _ExpertFFN(d, ffn_mult * d)

    def forward(self, x: torch.Tensor, slices: list[slice], mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x, slices), slices).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        x = x + self.out(att.transpose(1, 2).reshape(b, n, d), slices)
        return x + self.ffn(self.norm2(x, slices), slices)


class WorldScapePolicy(nn.Module):
    """The policy network (see the module docstring). Inputs are normalised tensors:

    * ``rgb`` ``(B, 3, S, S)`` in [-1, 1] and ``depth`` ``(B, 1, S, S)`` in metres (``S`` =
      ``image_size``): the current frame (with ``wrist``, the scene and the wrist camera stacked:
      ``(B, 6, S, S)`` and ``(B, 2, S, S)``);
    * ``state`` ``(B, 8)`` in [-1, 1]; ``words`` ``(B, max_words)`` token ids;
    * noisy targets at flow time ``tau`` ``(B,)``: ``future_rgb`` ``(B, F, 3, s, s)``,
      ``future_depth`` ``(B, F, 1, s, s)`` (both in [-1, 1], ``s`` = ``future_size``),
      ``actions`` ``(B, L, 7)`` in [-1, 1] (whichever the mode predicts).

    :meth:`forward` returns the predicted velocities of the targets (and, with the IDM head,
    the regressed action chunk).
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.d_model, cfg.patch
        n_cur = cfg.keypoints * (1 + cfg.wrist) if cfg.encoder == "keypoints" else (cfg.image_size // p) ** 2
        n_fut = (cfg.future_size // p) ** 2
        self.n_cur, self.n_fut = n_cur, n_fut
        if cfg.encoder == "keypoints":
            self.keypoint_encoder = KeypointEncoder(d, cfg.image_size, cfg.fov_y_deg, cfg.keypoints, cfg.trunk_width,
                                                    cfg.trunk_blocks, cfg.max_depth)
            if cfg.wrist:  # one encoder per camera (robomimic, Diffusion Policy)
                self.wrist_encoder = KeypointEncoder(d, cfg.image_size, cfg.wrist_fov_y_deg, cfg.keypoints,
                                                     cfg.trunk_width, cfg.trunk_blocks, cfg.max_depth)
        else:
            self.rgb_in, self.depth_in = _current_frame_embeddings(cfg, d)
            self.pos_cur = nn.Parameter(torch.randn(n_cur, d) * 0.02)
        self.frgb_in, self.fdepth_in = nn.Linear(3 * p * p, d), nn.Linear(p * p, d)
        self.rgb_out, self.depth_out = nn.Linear(d, 3 * p * p), nn.Linear(d, p * p)
        self.pos_fut = nn.Parameter(torch.randn(cfg.frames, n_fut, d) * 0.02)
        self._build_inputs(cfg, d)
        self.blocks = nn.ModuleList(MoTBlock(d, cfg.heads, cfg.ffn_mult) for _ in range(cfg.layers))
        self.final = _ExpertNorm(d)
        if cfg.object_aux:
            self.object_head = nn.Linear(d, N_OBJECT_TARGETS)
        if cfg.action_head == "idm" and cfg.predicts_actions:
            self.idm_queries = nn.Parameter(torch.randn(cfg.chunk, d) * 0.02)
            self.idm = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, cfg.heads, 2 * d, 0.0, batch_first=True,
                                                                        norm_first=True), num_layers=2)

    def _build_inputs(self, cfg: PolicyConfig, d: int) -> None:
        """The embeddings every video stream shares: DPE, instruction (and indicator), state,
        action tokens and the flow time; the DPE's pinhole rays."""
        self.dpe = nn.Sequential(nn.Linear(3 + 3 * 2 * 6, d), nn.GELU(), nn.Linear(d, d))
        self.word_emb = nn.Embedding(max(len(cfg.vocab) + 1, 2), 32, padding_idx=0)
        self.text = nn.Sequential(nn.Linear(cfg.max_words * 32, d), nn.GELU(), nn.Linear(d, d))
        if cfg.indicator:  # 0: not an improvement, 1: an improvement, 2: unknown (dropped)
            self.indicator_emb = nn.Embedding(3, d)
        self.state_in = nn.Linear(cfg.state_dim + (17 if cfg.privileged else 0), d)
        self.action_in, self.action_out = nn.Linear(cfg.action_dim, d), nn.Linear(d, cfg.action_dim)
        self.action_pos = nn.Parameter(torch.randn(cfg.chunk, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(64, d), nn.GELU(), nn.Linear(d, d))
        # intrinsics of the current frame's pinhole camera, for the DPE
        s = cfg.image_size
        f = 0.5 * s / math.tan(math.radians(cfg.fov_y_deg) / 2)
        u = (torch.arange(s) + 0.5 - s / 2) / f
        self.register_buffer("ray_x", u.repeat(s, 1), persistent=False)  # (S, S): x / z per pixel
        self.register_buffer("ray_y", -u[:, None].repeat(1, s), persistent=False)  # image rows point down

    # --- the pieces -----------------------------------------------------------------------------
    def _time(self, tau: torch.Tensor) -> torch.Tensor:
        half = 32
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device) / half)
        ang = tau[:, None] * 1000.0 * freqs
        return self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))

    def depth_positional_embedding(self, depth: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` metres -> ``(B, n_patches, d)``: MLP of Fourier features of each patch's
        mean back-projected 3D point (camera frame)."""
        z = depth[:, 0]
        pts = torch.stack([self.ray_x * z, self.ray_y * z, z], dim=1)  # (B, 3, S, S)
        p = self.cfg.patch
        mean = F.avg_pool2d(pts, p).flatten(2).transpose(1, 2)  # (B, n, 3)
        return self.dpe(fourier_features(mean / self.cfg.max_depth, 6))

    def _context(self, rgb, depth, state, words, indicator=None):
        if rgb.shape[-2:] != (self.cfg.image_size,) * 2 or depth.shape[-2:] != (self.cfg.image_size,) * 2:
            raise PolicyInputError(f"images must be {self.cfg.image_size} px square, got rgb {tuple(rgb.shape)} "
                                   f"and depth {tuple(depth.shape)}")
        cams = 1 + self.cfg.wrist
        if rgb.shape[1] != 3 * cams or depth.shape[1] != cams:
            raise PolicyInputError(f"this policy reads {cams} camera(s): rgb needs {3 * cams} channels and depth "
                                   f"{cams}, got {rgb.shape[1]} and {depth.shape[1]}")
        v, dep = self._frame_tokens(rgb, depth)
        return v, dep, self._text_state(words, state, indicator, rgb)

    def _frame_tokens(self, rgb, depth) -> tuple[torch.Tensor, torch.Tensor]:
        """The current frame's RGB and depth tokens, ``(B, n_cur, d)`` each: patch embedding
        (``stem``), position and Depth Positional Embedding; or, with ``encoder="keypoints"``, the
        keypoint tokens of :class:`ws_policy.vision.KeypointEncoder` on a random crop (training) or the
        centre crop (inference)."""
        if self.cfg.encoder == "keypoints":
            c = self.cfg.crop
            cams = [(self.keypoint_encoder, rgb[:, :3], depth[:, :1])]
            if self.cfg.wrist:
                cams.append((self.wrist_encoder, rgb[:, 3:6], depth[:, 1:2]))
            vs, ds = [], []
            for enc, r, dpt in cams:
                if not c:
                    off = torch.zeros(r.shape[0], 2, device=r.device, dtype=r.dtype)
                elif self.training:
                    r, dpt, off = random_crop(r, dpt, c)
                else:
                    r, dpt, off = centre_crop(r, dpt, c)
                v, dep, _ = enc(r, dpt, off)
                vs.append(v)
                ds.append(dep)
            return torch.cat(vs, dim=1), torch.cat(ds, dim=1)
        p = self.cfg.patch
        dpe = self.depth_positional_embedding(depth)
        depth_n = depth / self.cfg.max_depth * 2 - 1
        if self.cfg.stem == "conv":
            v, dep = (self.rgb_in(rgb).flatten(2).transpose(1, 2), self.depth_in(depth_n).flatten(2).transpose(1, 2))
        else:
            v, dep = self.rgb_in(_patchify(rgb, p)), self.depth_in(_patchify(depth_n, p))
        return v + self.pos_cur + dpe, dep + self.pos_cur + dpe

    def _text_state(self, words, state, indicator, like: torch.Tensor) -> torch.Tensor:
        """``(B, 2, d)``: the instruction token (plus the indicator's embedding) and the state token."""
        txt = self.text(self.word_emb(words).flatten(1))[:, None]
        if self.cfg.indicator:
            txt = txt + self._indicator(indicator, like)
        return torch.cat([txt, self.state_in(state)[:, None]], dim=1)

    def _indicator(self, indicator, like: torch.Tensor) -> torch.Tensor:
        """``(B, 1, d)`` embedding of the improvement indicator (None at inference: ask for an
        improvement, ``I = 1``)."""
        if indicator is None:
            indicator = torch.ones(like.shape[0], dtype=torch.long, device=like.device)
        return self.indicator_emb(indicator.long())[:, None]

    def _mask(self, n_ctx: list[int], n_tgt: list[int], device) -> torch.Tensor:
        """Boolean attention mask over [video ctx, video tgt, depth ctx, depth tgt, action ctx,
        action tgt] (the order the experts slice): context attends to context only."""
        is_ctx = torch.cat([torch.full((c,), True) if i % 2 == 0 else torch.full((c,), False)
                            for i, c in enumerate(x for pair in zip(n_ctx, n_tgt) for x in pair)]).to(device)
        return ~is_ctx[:, None] | is_ctx[None, :]  # row attends to column

    def forward(self, rgb, depth, state, words, tau, future_rgb=None, future_depth=None, actions=None,
                indicator=None) -> dict:
        cfg = self.cfg
        b = rgb.shape[0]
        v_ctx, d_ctx, a_ctx = self._context(rgb, depth, state, words, indicator)
        t_emb = self._time(tau)[:, None]
        parts = {"video": [v_ctx], "depth": [d_ctx], "action": [a_ctx]}
        if cfg.reads_future:
            f, s, p = cfg.frames, cfg.future_size, cfg.patch
            fr = self.frgb_in(_patchify(future_rgb.reshape(b * f, 3, s, s), p)).reshape(b, f, -1, cfg.d_model)
            fd = self.fdepth_in(_patchify(future_depth.reshape(b * f, 1, s, s), p)).reshape(b, f, -1, cfg.d_model)
            parts["video"].append((fr + self.pos_fut).flatten(1, 2) + t_emb)
            parts["depth"].append((fd + self.pos_fut).flatten(1, 2) + t_emb)
        if cfg.predicts_actions and cfg.action_head == "flow":
            a_tok = self.action_in(actions) + self.action_pos + t_emb
            if cfg.indicator and cfg.indicator_on_actions:  # a direct path, beside the instruction token's
                a_tok = a_tok + self._indicator(indicator, rgb)
            parts["action"].append(a_tok)
        n_ctx = [parts[m][0].shape[1] for m in MODALITIES]
        n_tgt = [sum(x.shape[1] for x in parts[m][1:]) for m in MODALITIES]
        seq = torch.cat([x for m in MODALITIES for x in parts[m]], dim=1)
        lens = [c + t for c, t in zip(n_ctx, n_tgt)]
        starts = np.cumsum([0] + lens)
        slices = [slice(int(starts[i]), int(starts[i + 1])) for i in range(3)]
        mask = self._mask(n_ctx, n_tgt, seq.device)
        for blk in self.blocks:
            seq = blk(seq, slices, mask)
        seq = self.final(seq, slices)
        out = {}
        if cfg.object_aux:  # the state token: context only (see the mask)
            out["objects"] = self.object_head(seq[:, slices[2].start + 1])
        if cfg.predicts_video:
            f, s, p = cfg.frames, cfg.future_size, cfg.patch
            vt = seq[:, slices[0]][:, n_ctx[0]:]
            dt = seq[:, slices[1]][:, n_ctx[1]:]
            out["future_rgb"] = _unpatchify(self.rgb_out(vt).reshape(b * f, self.n_fut, -1), p, 3, s, s).reshape(
                b, f, 3, s, s)
            out["future_depth"] = _unpatchify(self.depth_out(dt).reshape(b * f, self.n_fut, -1), p, 1, s, s).reshape(
                b, f, 1, s, s)
        if cfg.predicts_actions:
            if cfg.action_head == "flow":
                out["actions"] = self.action_out(seq[:, slices[2]][:, n_ctx[2]:])
            else:  # inverse dynamics: regress the chunk from every (context and predicted-future) token
                q = self.idm_queries.expand(b, -1, -1)
                out["idm_actions"] = self.action_out(self.idm(q, seq))
        return out

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


#: ``PolicyConfig.video_model`` -> the network :func:`build_policy` makes for it. ``"dit"``
#: (:class:`ws_policy.dit_policy.DiTPolicy`, a subclass of :class:`WorldScapePolicy`) is added by
#: :mod:`ws_policy.dit_policy` when it is imported (:mod:`ws_policy.train` imports it), so that this
#: module does not import the subclass that imports it.
POLICY_CLASSES: dict[str, type[WorldScapePolicy]] = {"mot": WorldScapePolicy}


def build_policy(cfg: PolicyConfig) -> WorldScapePolicy:
    """The network of ``cfg``: :class:`WorldScapePolicy`, or with ``video_model="dit"`` the
    policy whose video-depth stream is the video world model (:class:`ws_policy.dit_policy.DiTPolicy`).

    Raises:
        ValueError: no network registered for ``cfg.video_model`` (for ``"dit"``: import
            :mod:`ws_policy.dit_policy` or :mod:`ws_policy.train` first).
    """
    cls = POLICY_CLASSES.get(cfg.video_model)
    if cls is None:
        raise ValueError(f"no policy network for video_model {cfg.video_model!r} is registered "
                         f"({sorted(POLICY_CLASSES)}); import ws_policy.dit_policy (or ws_policy.train) first")
    return cls(cfg)
