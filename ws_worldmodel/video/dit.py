"""Video diffusion transformer with heterogeneous control experts and chunk-causal generation
(seeds 000, 001, 002; issue 9).

**Frames.** A frame is RGB plus depth, ``channels`` x ``image_size`` px, values in [-1, 1]
(the policy's normalisation), cut into ``patch`` x ``patch`` pixel patches: ``(image_size /
patch)^2`` tokens per frame, no autoencoder (the reason the policy gives in
:mod:`ws_policy.model` holds here too: at 64 px the objects are a few pixels wide). A learned
embedding gives each patch its place in the frame; rotary embeddings on the frame index give
attention its time, so a cached key keeps its position and attention sees only differences.

**Heterogeneous control (seed 000).** Each sample has one control kind (camera trajectory,
joint actions, gripper keypoints, ... ``control_kinds``) with a per-frame control vector. A
kind-specific linear encoder maps it to the frame's conditioning, added to the flow time's
embedding; every block is modulated by it (adaLN-zero, as DiT). Each block's feed-forward is
a *shared expert* plus the *expert of the sample's control kind*, summed, routed by the kind's
label (seed 000: "each sample is routed through a shared expert plus the corresponding
modality expert"; it names no learned router, so there is none). ``moe="dense"`` is the
ablation without experts: one feed-forward of twice the hidden width (the same parameters per
sample as shared + one expert). :meth:`VideoDiT.add_control_kind` adds a kind later, and
:meth:`VideoDiT.tuning_parameters` gives what trains then: the new kind's encoder and experts
and the shared weights, the other kinds' frozen (seed 000's Worldscape-MoE Tuning: the shared
expert "continually absorbs world knowledge").

**Per-chunk experts (seed 002).** With ``chunk_experts = E > 0`` every block also has ``E``
feed-forward experts (half the hidden width) and a router that picks one of them *per chunk*:
its input is the chunk's mean token at that block and the log of the chunk's length (seed 002's
"context-aware" mixture; LongScape's public code ties its experts to chunk lengths, here the
length is one of the router's inputs and the content the other). The chunk's tokens go through
the chosen expert scaled by its router probability (top-1, as Switch Transformers, so the router
learns), and a load-balancing term ``E * sum_e f_e P_e`` (the share of chunks sent to ``e``
times its mean probability, Fedus et al. 2022, eq. 4) joins the loss with weight
``balance_weight``. A chunk's route depends on its own tokens only, so causality across chunks
and the KV cache hold.

**Chunks (seeds 001, 002).** Frames come in chunks of ``chunk``. The *teacher* attends
bidirectionally over the whole clip. The *student* is chunk-causal: a frame attends to every
frame of its own chunk and of earlier chunks, never later ones; it generates chunk by chunk,
denoising each with ``euler_steps`` Euler steps while attending to earlier frames' cached
keys and values, then runs the finished chunk once more as clean (``tau = 1``) to cache its
own (as CausVid and Self-Forcing do). Which earlier frames it attends to is
:class:`ws_worldmodel.video.memory.MemoryKVCache`'s choice (anchors, retrieved pool frames,
window), or all of them without a memory.

**Objective.** Rectified flow per frame, as the policy: ``x_tau = tau x_1 + (1 - tau) x_0``,
and the loss is on the velocity ``x_1 - x_0``. The network itself predicts the *clean frame*
``x^_1`` and its velocity is ``(x^_1 - x_tau) / max(1 - tau, tau_clip)`` (``prediction="clean"``,
"x-prediction with v-loss" of Li and He 2025, "Back to Basics: Let Denoising Generative Models
Denoise"): a patch of 8 x 8 px x 4 channels is 256 numbers, more than the 128-wide ``cpu``
model carries, and a network that must output the noise part of the velocity cannot; measured
here (32 px frames of 8 px patches, width 128, PiPER clips, 600 steps), a velocity-predicting
model's error at ``tau = 0`` stayed at 0.55 (the noise it cannot pass through) and it generated
noise; the same model predicting the clean frame got to 0.03.
``prediction="velocity"`` predicts ``x_1 - x_0`` directly (fine when ``d_model`` exceeds the
patch; the PanWorld figures of the README were made so). The teacher draws one ``tau`` per clip, the student one
per chunk (diffusion forcing), and the first ``context`` frames are clean (``tau = 1``) and
carry no loss. Geometric consistency (seed 001's depth signal) is a depth term beside the
velocity loss: ``L = |v^ - v|^2_rgb + depth_weight |v^ - v|^2_depth + depth_weight
|x^_1 - x_1|^2_depth`` with the clean estimate ``x^_1 = x_tau + (1 - tau) v^``. Seed 001's 3D
Gaussian-splatting branch is not built (a documented extension: it needs a differentiable
splatting renderer that does not train on two CPU cores).

**Residual to the last frame** (``residual=True``, with ``prediction="clean"``). The base
``b`` of a frame is the last clean frame before its chunk: the previous chunk's last frame for
the student (generated, at inference), the last given frame for the teacher, and itself for a
given frame (:meth:`VideoDiT.base_frames`). The network sees the base beside the noisy frame
(each token's embedding adds a linear embedding of the base's patch at its place, as
image-to-video models concatenate the conditioning frame to the noisy input) and predicts the
change: ``x^_1 = b + net``. A network that outputs zero repeats the last frame, and what it
learns is the change. Predicting the difference from the conditioning frame is an old device of
video prediction; the reason here is measured: the 4 x 128 models of the README, trained 2000
steps without it, generated PiPER frames 7 times worse (MSE) than repeating the last given
frame, copying a frame through attention being itself something to learn. Two variants were
measured and dropped: ``b + net`` with the base only reachable through attention (the Go1
camera clips' flow error 2.4 times the plain model's: it must fetch the base to rebuild a
nearly clean input), and an EDM-style skip ``b + c(tau)(x_tau - tau b) + net`` (noise leaks
through the skip; PiPER rollouts 5 times worse than without it); their code is in the history
(commits 575cece and 9da39f7). The base comes from an earlier chunk, so causality across
chunks holds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class VideoDiTConfig:
    """Sizes of :class:`VideoDiT`.

    Attributes:
        image_size: frame side, px. channels: RGB + depth = 4. patch: patch side, px.
        d_model, layers, heads, ffn_mult: transformer sizes.
        chunk: frames per chunk (the student's generation step).
        control_kinds: names of the control kinds, in label order.
        control_dims: each kind's per-frame control vector length.
        moe: ``"shared+kind"`` (seed 000's mixture) or ``"dense"`` (no experts).
        euler_steps: Euler steps per chunk at generation.
        depth_weight: weight of the depth terms of the loss.
        chunk_experts: per-chunk experts of seed 002 (0: none).
        balance_weight: weight of their load-balancing term in the loss.
        prediction: what the network outputs: ``"clean"`` (the clean frame, turned into a
            velocity; module docstring) or ``"velocity"``.
        tau_clip: with ``"clean"``, the least ``1 - tau`` the velocity divides by.
        residual: the clean frame is predicted as a change from the last clean frame before its
            chunk (module docstring); every call then passes ``base``.
    """

    image_size: int = 64
    channels: int = 4
    patch: int = 8
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 4
    chunk: int = 4
    control_kinds: tuple = ("camera", "joints", "keypoints")
    control_dims: tuple = (9, 7, 6)
    moe: str = "shared+kind"
    euler_steps: int = 4
    depth_weight: float = 0.5
    chunk_experts: int = 0
    balance_weight: float = 0.01
    prediction: str = "clean"
    tau_clip: float = 0.05
    residual: bool = False

    def __post_init__(self):
        self.control_kinds, self.control_dims = tuple(self.control_kinds), tuple(int(d) for d in self.control_dims)
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.heads} heads of even size")
        if len(self.control_kinds) != len(self.control_dims) or not self.control_kinds:
            raise ValueError("control_kinds and control_dims must name the same, non-empty list of kinds")
        if self.moe not in ("shared+kind", "dense"):
            raise ValueError(f"moe must be 'shared+kind' or 'dense', got {self.moe!r}")
        if self.chunk < 1 or self.euler_steps < 1 or self.layers < 1:
            raise ValueError("chunk, euler_steps and layers must be >= 1")
        if self.prediction not in ("clean", "velocity"):
            raise ValueError(f"prediction must be 'clean' or 'velocity', got {self.prediction!r}")
        if self.residual and self.prediction != "clean":
            raise ValueError("residual=True needs prediction='clean' (it is added to the clean estimate)")
        if not 0 < self.tau_clip < 1:
            raise ValueError(f"tau_clip must be in (0, 1), got {self.tau_clip}")
        if self.chunk_experts < 0 or self.chunk_experts == 1:
            raise ValueError(f"chunk_experts must be 0 (none) or >= 2, got {self.chunk_experts}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch) ** 2

    @classmethod
    def cpu(cls, **kw) -> "VideoDiTConfig":
        """Trains on two CPU cores: 64 px, 64 tokens per frame, 4 layers of 128."""
        return cls(**kw)

    @classmethod
    def gpu(cls, **kw) -> "VideoDiTConfig":
        """A GPU size: 12 layers of 512, 8 heads."""
        return cls(**{"d_model": 512, "layers": 12, "heads": 8, **kw})


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, F, C, H, W)`` -> ``(B, F, (H/p)(W/p), C p p)``."""
    b, f, c, h, w = x.shape
    x = x.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, f, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, f = x.shape[:2]
    x = x.reshape(b, f, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, f, c, h, w)


def rope_table(pos: torch.Tensor, dh: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``(N, dh/2)`` of the rotary embedding at positions ``pos`` ``(N,)`` (frame indices)."""
    freq = 1.0 / (10000 ** (torch.arange(0, dh, 2, device=pos.device, dtype=torch.float32) / dh))
    ang = pos.to(torch.float32)[:, None] * freq[None]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rope(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``x`` ``(B, H, N, dh)`` with :func:`rope_table`'s ``(cos, sin)``."""
    cos, sin = table
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def _ffn(d: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))


class ControlFFN(nn.Module):
    """Feed-forward of one block: shared expert + the sample's control-kind expert (or dense)."""

    def __init__(self, d: int, hidden: int, kinds: int, moe: str):
        super().__init__()
        self.moe = moe
        if moe == "dense":
            self.shared = _ffn(d, 2 * hidden)
            self.experts = nn.ModuleList()
        else:
            self.shared = _ffn(d, hidden)
            self.experts = nn.ModuleList(_ffn(d, hidden) for _ in range(kinds))

    def forward(self, x: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, ..., d)``, ``kind`` ``(B,)`` labels, or one ``int`` for the whole batch."""
        out = self.shared(x)
        if self.moe == "dense":
            return out
        if isinstance(kind, int):
            return out + self.experts[kind](x)
        routed = torch.zeros_like(out)
        for k in torch.unique(kind).tolist():
            sel = kind == k
            routed[sel] = self.experts[k](x[sel])
        return out + routed


class ChunkExperts(nn.Module):
    """Seed 002's context-aware per-chunk mixture (module docstring): top-1 routing of whole
    chunks by their mean token and log length."""

    def __init__(self, d: int, hidden: int, experts: int):
        super().__init__()
        self.router = nn.Linear(d + 1, experts)
        self.experts = nn.ModuleList(_ffn(d, hidden) for _ in range(experts))
        self.balance = None  # the last call's load-balancing term
        self.last_route = None  # the last call's expert per chunk (B, chunks)

    def forward(self, x: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, F, N, d)``; ``chunks`` ``(F,)`` nondecreasing chunk ids of its frames."""
        b, f = x.shape[:2]
        first, inverse, counts = torch.unique_consecutive(chunks, return_inverse=True, return_counts=True)
        n = len(first)
        one_hot = F.one_hot(inverse, n).to(x.dtype)  # (F, n)
        mean = torch.einsum("bfd,fc->bcd", x.mean(2), one_hot) / counts.to(x.dtype)[None, :, None]
        feats = torch.cat([mean, counts.to(x.dtype).log()[None, :, None].expand(b, n, 1)], -1)
        probs = self.router(feats).float().softmax(-1)  # (B, n, E)
        gate, route = probs.max(-1)
        e = len(self.experts)
        share = F.one_hot(route, e).float().mean((0, 1))
        self.balance = e * (share * probs.mean((0, 1))).sum()
        self.last_route = route.detach()
        route_f, gate_f = route[:, inverse], gate[:, inverse].to(x.dtype)  # (B, F)
        out = torch.zeros_like(x)
        for k in torch.unique(route_f).tolist():
            sel = route_f == k
            out[sel] = self.experts[k](x[sel]) * gate_f[sel][:, None, None]
        return out


class DiTBlock(nn.Module):
    """adaLN-zero transformer block: attention over the frames' tokens (with cached keys and
    values of earlier frames), then :class:`ControlFFN`."""

    def __init__(self, cfg: VideoDiTConfig):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = ControlFFN(d, cfg.ffn_mult * d, len(cfg.control_kinds), cfg.moe)
        self.chunk_ffn = ChunkExperts(d, cfg.ffn_mult * d // 2, cfg.chunk_experts) if cfg.chunk_experts else None
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def attention_inputs(self, x: torch.Tensor, cond: torch.Tensor, rope) -> tuple:
        """The first half of the block: ``(q, k, v, modulation)``, with ``q, k, v`` ``(B, H, F*N,
        dh)`` (rotary positions applied) from ``x`` ``(B, F, N, d)`` modulated by ``cond``. A caller
        that attends over more tokens than these (the policy's action tokens, :mod:`ws_policy.dit_policy`)
        concatenates its own and gives the result to :meth:`finish`."""
        b, f, n, d = x.shape
        mod = self.ada(F.silu(cond))[:, :, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + mod[1]) + mod[0]
        q, k, v = self.qkv(h.reshape(b, f * n, d)).reshape(b, f * n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        return _rope(q, rope), _rope(k, rope), v, mod

    def finish(self, x: torch.Tensor, att: torch.Tensor, mod: tuple, kind, chunks=None) -> torch.Tensor:
        """The second half: the attention output ``att`` ``(B, H, F*N, dh)`` of these tokens'
        queries, projected and gated into ``x``, then the control-expert feed-forward."""
        b, f, n, d = x.shape
        x = x + mod[2] * self.proj(att.transpose(1, 2).reshape(b, f, n, d))
        h = self.norm2(x) * (1 + mod[4]) + mod[3]
        ff = self.ffn(h, kind)
        if self.chunk_ffn is not None:
            ff = ff + self.chunk_ffn(h, chunks)
        return x + mod[5] * ff

    def forward(self, x, cond, kind, rope, mask, past_k=None, past_v=None, chunks=None):
        """``x`` ``(B, F, N, d)``; ``cond`` ``(B, F, d)``; ``rope`` the rotary table of the tokens'
        frame indices (:func:`rope_table`); ``chunks`` ``(F,)`` chunk ids (for the per-chunk experts);
        ``mask`` ``(F*N, P + F*N)`` bool (True: may attend) or None; ``past_k/v`` ``(B, H, P, dh)``.
        Returns ``(x, k, v)`` with this call's rotated keys and values ``(B, H, F*N, dh)``."""
        q, k, v, mod = self.attention_inputs(x, cond, rope)
        ka, va = (k, v) if past_k is None else (torch.cat([past_k, k], 2), torch.cat([past_v, v], 2))
        att = F.scaled_dot_product_attention(q, ka, va, attn_mask=mask)
        return self.finish(x, att, mod, kind, chunks), k, v


class VideoDiT(nn.Module):
    """The video world model (module docstring). Predicts the flow velocity of every frame.

    Raises:
        ValueError: frames or controls of the wrong shape, an unknown control kind.
    """

    def __init__(self, cfg: VideoDiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.d_model, cfg.patch
        self.embed = nn.Linear(cfg.channels * p * p, d)
        self.spatial = nn.Parameter(torch.randn(1, 1, cfg.tokens_per_frame, d) * 0.02)
        self.time = nn.Sequential(nn.Linear(64, d), nn.SiLU(), nn.Linear(d, d))
        self.controls = nn.ModuleList(nn.Linear(dim, d) for dim in cfg.control_dims)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.channels * p * p)
        self.base_embed = nn.Linear(cfg.channels * p * p, d) if cfg.residual else None
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # --- control kinds --------------------------------------------------------------------------
    def kind_index(self, kind: str) -> int:
        if kind not in self.cfg.control_kinds:
            raise ValueError(f"unknown control kind {kind!r}; this model knows {list(self.cfg.control_kinds)}")
        return self.cfg.control_kinds.index(kind)

    def add_control_kind(self, name: str, dim: int) -> int:
        """Add a control kind (encoder and, with experts, one expert per block, initialised as a
        copy of the shared expert); returns its label. Seed 000's Worldscape-MoE Tuning."""
        if name in self.cfg.control_kinds:
            raise ValueError(f"control kind {name!r} exists already")
        self.cfg = dataclasses.replace(self.cfg, control_kinds=self.cfg.control_kinds + (name,),
                                       control_dims=self.cfg.control_dims + (int(dim),))
        ref = next(self.parameters())
        self.controls.append(nn.Linear(int(dim), self.cfg.d_model).to(ref))
        if self.cfg.moe != "dense":
            for blk in self.blocks:
                new = _ffn(self.cfg.d_model, self.cfg.ffn_mult * self.cfg.d_model).to(ref)
                new.load_state_dict(blk.ffn.shared.state_dict())
                blk.ffn.experts.append(new)
        return len(self.cfg.control_kinds) - 1

    def tuning_parameters(self, kind: str) -> list[nn.Parameter]:
        """What trains when ``kind`` is added: everything but the other kinds' encoders and experts."""
        k = self.kind_index(kind)
        frozen = {id(p) for i, enc in enumerate(self.controls) if i != k for p in enc.parameters()}
        for blk in self.blocks:
            for i, ex in enumerate(blk.ffn.experts):
                if i != k:
                    frozen |= {id(p) for p in ex.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    # --- forward ----------------------------------------------------------------------------------
    def _time_embedding(self, tau: torch.Tensor) -> torch.Tensor:
        half = torch.exp(-math.log(1000.0) * torch.arange(32, device=tau.device, dtype=torch.float32) / 32)
        ang = 1000.0 * tau.float()[..., None] * half
        return self.time(torch.cat([ang.sin(), ang.cos()], -1).to(self.embed.weight.dtype))

    def condition(self, tau: torch.Tensor, controls: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning ``(B, F, d)`` from ``tau`` ``(B, F)`` and ``controls`` ``(B, F, D)``
        (D at least the kind's dimension; extra columns are ignored)."""
        cond = self._time_embedding(tau)
        if isinstance(kind, int):
            return cond + self.controls[kind](controls[..., : self.cfg.control_dims[kind]])
        ctrl = torch.zeros_like(cond)
        for k in torch.unique(kind).tolist():
            sel = kind == k
            ctrl[sel] = self.controls[k](controls[sel][..., : self.cfg.control_dims[k]])
        return cond + ctrl

    def chunk_of(self, frames: torch.Tensor, context: int) -> torch.Tensor:
        """Chunk index of rollout frames ``frames`` (int tensor): the first ``context`` frames (the
        given ones) are chunk 0, then every ``cfg.chunk`` frames a new chunk."""
        if context <= 0:
            return frames // self.cfg.chunk
        return torch.where(frames < context, 0, 1 + (frames - context).div(self.cfg.chunk, rounding_mode="floor"))

    def chunk_mask(self, frames: int, first_frame: int, past: int, causal: bool, device,
                   context: int = 0, chunks: torch.Tensor | None = None) -> torch.Tensor | None:
        """Attention mask ``(F*N, past + F*N)`` for ``frames`` new frames starting at rollout frame
        ``first_frame`` after ``past`` cached tokens: chunk-causal (a frame sees its own and earlier
        chunks: ``chunks`` ``(F,)`` nondecreasing ids, default :meth:`chunk_of`) or None
        (bidirectional)."""
        if not causal:
            return None
        n = self.cfg.tokens_per_frame
        chunk_of = self.chunk_of(first_frame + torch.arange(frames, device=device), context) if chunks is None \
            else chunks.to(device)
        chunk_of = chunk_of.repeat_interleave(n)
        mask = chunk_of[None, :] <= chunk_of[:, None]
        return torch.cat([torch.ones(len(chunk_of), past, dtype=torch.bool, device=device), mask], 1)

    def forward(self, frames: torch.Tensor, tau: torch.Tensor, controls: torch.Tensor, kind: torch.Tensor,
                first_frame: int = 0, causal: bool = True, past: list | None = None, return_kv: bool = False,
                context: int = 0, chunks: torch.Tensor | None = None, base: torch.Tensor | None = None):
        """Flow velocity of every frame.

        Args:
            frames: noisy frames ``(B, F, C, H, W)`` in [-1, 1] scale.
            tau: flow time per frame ``(B, F)`` (1 = clean).
            controls: ``(B, F, D)`` per-frame control vectors.
            kind: ``(B,)`` control-kind labels, or one ``int`` label for the whole batch (no
                device synchronisation to route: generation uses this).
            first_frame: rollout index of the first of these frames (rotary positions, chunks).
            causal: chunk-causal attention (the student) or bidirectional (the teacher).
            past: per layer ``(k, v)`` ``(B, H, P, dh)`` of earlier frames to attend to.
            return_kv: also return this call's per-layer ``(k, v)``.
            context: the rollout's given frames, chunk 0 (:meth:`chunk_of`).
            chunks: ``(F,)`` chunk ids of these frames instead (variable-length chunks, e.g.
                :func:`chunk_ids` of :func:`action_guided_chunks`).
            base: with ``cfg.residual``, the clean frame each of these frames is a change from,
                ``(B, F, C, H, W)`` or ``(B, 1, C, H, W)`` for all (:meth:`base_frames`).

        Returns:
            velocity ``(B, F, C, H, W)``, and with ``return_kv`` the list of ``(k, v)``.

        Raises:
            ValueError: shapes that do not match, unknown control-kind labels, a residual model
                called without ``base``.
        """
        cfg = self.cfg
        if frames.dim() != 5 or frames.shape[2:] != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"frames must be (B, F, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(frames.shape)}")
        b, f = frames.shape[:2]
        shape = (b,) if isinstance(kind, int) else tuple(kind.shape)
        if tau.shape != (b, f) or controls.shape[:2] != (b, f) or shape != (b,):
            raise ValueError(f"tau {tuple(tau.shape)}, controls {tuple(controls.shape)}, kind {shape} "
                             f"do not match {b} clips of {f} frames")
        if cfg.residual and (base is None or base.dim() != 5 or base.shape[0] != b or base.shape[1] not in (1, f)
                             or base.shape[2:] != frames.shape[2:]):
            raise ValueError(f"a residual model needs base frames (B, 1 or {f}, C, H, W) matching the frames, got "
                             f"{None if base is None else tuple(base.shape)}")
        lo, hi = (kind, kind) if isinstance(kind, int) else (int(kind.min()), int(kind.max()))
        if lo < 0 or hi >= len(cfg.control_kinds):
            raise ValueError(f"control-kind labels must be in [0, {len(cfg.control_kinds)})")
        x = self.frame_tokens(frames, base)
        cond = self.condition(tau, controls, kind)
        n = cfg.tokens_per_frame
        rope = rope_table((first_frame + torch.arange(f, device=frames.device)).repeat_interleave(n),
                          cfg.d_model // cfg.heads, x.dtype)
        p_len = 0 if not past else past[0][0].shape[2]
        if chunks is not None and (chunks.shape != (f,) or bool((chunks[1:] < chunks[:-1]).any())):
            raise ValueError(f"chunks must be ({f},) nondecreasing chunk ids, got {tuple(chunks.shape)}")
        mask = self.chunk_mask(f, first_frame, p_len, causal, frames.device, context, chunks)
        ids = None
        if cfg.chunk_experts:
            ids = chunks.to(frames.device) if chunks is not None else \
                self.chunk_of(first_frame + torch.arange(f, device=frames.device), context)
        kv = []
        for i, blk in enumerate(self.blocks):
            pk, pv = past[i] if past else (None, None)
            x, k, v = blk(x, cond, kind, rope, mask, pk, pv, ids)
            kv.append((k, v))
        vel = self.velocity(x, cond, frames, tau, base)
        return (vel, kv) if return_kv else vel

    def frame_tokens(self, frames: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, F, C, H, W)`` frames (and, residual, their bases) -> input tokens ``(B, F, N, d)``."""
        x = self.embed(patchify(frames, self.cfg.patch)) + self.spatial
        if self.cfg.residual:  # the base beside the noisy frame (module docstring)
            b_ = base.to(frames.dtype).expand(-1, frames.shape[1], -1, -1, -1)
            x = x + self.base_embed(patchify(b_, self.cfg.patch))
        return x

    def velocity(self, x: torch.Tensor, cond: torch.Tensor, frames: torch.Tensor, tau: torch.Tensor,
                 base: torch.Tensor | None = None) -> torch.Tensor:
        """The output layer: the last block's tokens ``(B, F, N, d)`` -> the flow velocity ``(B, F,
        C, H, W)`` of the noisy ``frames`` at ``tau`` ``(B, F)`` (module docstring: clean
        prediction, residual to ``base``)."""
        cfg = self.cfg
        sh, sc = self.ada_out(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        out = unpatchify(self.out(self.norm(x) * (1 + sc) + sh), cfg.patch, cfg.channels, cfg.image_size,
                         cfg.image_size)
        if cfg.residual:  # x^_1 = b + net
            out = out + base.to(out.dtype).expand(-1, frames.shape[1], -1, -1, -1)
        if cfg.prediction == "velocity":
            return out
        # the network predicts the clean frame; its velocity (x^_1 - x_tau) / (1 - tau), t-clipped
        gap = (1 - tau).clamp(min=cfg.tau_clip)[:, :, None, None, None].to(out.dtype)
        return (out - frames) / gap

    def base_frames(self, clip: torch.Tensor, context: int, chunks: torch.Tensor | None = None,
                    causal: bool = True) -> torch.Tensor | None:
        """The residual base of every frame of ``clip`` ``(B, T, C, H, W)`` (clean frames, or at
        least clean where bases are read): for the student (``causal``), the last frame before
        the frame's chunk (``chunks`` ``(T,)`` ids, default :meth:`chunk_of`), a given frame being
        its own base (it carries no loss); for the teacher, the last given frame, ``(B, 1, C, H,
        W)`` for all. None when the model is not residual.

        Raises:
            ValueError: ``context < 1``: a frame with loss would be its own base."""
        if not self.cfg.residual:
            return None
        if context < 1:
            raise ValueError(f"a residual model needs at least one given frame as the base, got context {context}")
        t = clip.shape[1]
        if not causal:
            return clip[:, context - 1:context]
        ids = self.chunk_of(torch.arange(t, device=clip.device), context) if chunks is None else chunks.to(clip.device)
        first = torch.searchsorted(ids, ids)  # the first frame of each frame's chunk (ids nondecreasing)
        idx = torch.where(ids == 0, torch.arange(t, device=clip.device), (first - 1).clamp(min=0))
        return clip[:, idx]

    # --- training ---------------------------------------------------------------------------------
    def loss(self, clip: torch.Tensor, controls: torch.Tensor, kind: torch.Tensor, context: int = 1,
             causal: bool = True, generator: torch.Generator | None = None,
             chunks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The flow-matching loss with the depth terms (module docstring) on clips ``(B, T, C, H, W)``
        (last channel depth), the first ``context`` frames clean; ``chunks`` ``(T,)`` optional
        chunk ids (variable-length chunks; chunk 0 should be the context). Returns ``(loss, parts)``."""
        b, t = clip.shape[:2]
        if not 0 <= context < t:
            raise ValueError(f"context must leave frames to predict: {context} of {t}")
        dev = clip.device
        if causal:  # one flow time per chunk (diffusion forcing)
            ids = self.chunk_of(torch.arange(t, device=dev), context) if chunks is None else chunks.to(dev)
            tau = torch.rand(b, int(ids.max()) + 1, generator=generator, device=dev)[:, ids]
        else:
            tau = torch.rand(b, 1, generator=generator, device=dev).expand(b, t).clone()
        tau[:, :context] = 1.0
        x0 = torch.randn(clip.shape, generator=generator, device=dev)
        tt = tau[:, :, None, None, None]
        xt = tt * clip + (1 - tt) * x0
        v = self(xt, tau, controls, kind, causal=causal, context=context, chunks=chunks if causal else None,
                 base=self.base_frames(clip, context, chunks, causal))
        target = clip - x0
        w = (tau < 1).float()[:, :, None, None]  # (B, T, 1, 1): frames that carry loss
        denom = w.sum().clamp(min=1) * clip.shape[-1] * clip.shape[-2]
        err = (v - target) ** 2
        rgb = (err[:, :, :-1].mean(2) * w).sum() / denom
        dep = (err[:, :, -1] * w).sum() / denom
        x1 = xt + (1 - tt) * v
        dep3d = (((x1[:, :, -1] - clip[:, :, -1]) ** 2) * w).sum() / denom
        total = rgb + self.cfg.depth_weight * (dep + dep3d)
        parts = {"rgb": rgb.item(), "depth": dep.item(), "depth_3d": dep3d.item()}
        if self.cfg.chunk_experts:
            balance = torch.stack([blk.chunk_ffn.balance for blk in self.blocks]).mean()
            total = total + self.cfg.balance_weight * balance
            parts["balance"] = balance.item()
        return total, parts


def action_guided_chunks(actions, gripper_dim: int = -1, min_len: int = 4, max_len: int = 16, step: int = 4,
                         frac: float = 0.5) -> list[int]:
    """Variable-length chunks from the action stream (seed 002's action-guided chunking; its
    rule is not published with the paper: this one follows the idea that a chunk is one
    coherent action).

    A chunk ends where the gripper command switches (open against closed, about the midpoint of
    its range in the episode), so grasps and releases start chunks; otherwise it grows by
    ``step`` frames from ``min_len`` and ends at the first length where some arm joint has
    moved more than ``frac`` of that joint's range over the episode (a large motion is a chunk
    of its own), or at ``max_len``. Every chunk but the last lies in ``[min_len, max_len]``, so
    a switch in a chunk's first ``min_len`` frames stays inside it.

    Args:
        actions: ``(T, A)`` per-frame actions (arm joints and one gripper column).
        gripper_dim: the gripper's column.

    Returns:
        chunk lengths summing to ``T``.

    Raises:
        ValueError: not a 2-D array with frames, or inconsistent lengths.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0 or a.shape[1] < 2:
        raise ValueError(f"actions must be (T, A) with T >= 1 and A >= 2, got {a.shape}")
    if not 1 <= min_len <= max_len or step < 1 or not 0 < frac:
        raise ValueError(f"need 1 <= min_len <= max_len, step >= 1, frac > 0; got {min_len}, {max_len}, {step}, {frac}")
    T = len(a)
    g = a[:, gripper_dim]
    closed = g > (g.max() + g.min()) / 2
    switches = (np.nonzero(closed[1:] != closed[:-1])[0] + 1).tolist()
    arm = np.delete(a, gripper_dim % a.shape[1], axis=1)
    span = arm.max(0) - arm.min(0)
    span[span == 0] = np.inf
    lengths, t = [], 0
    while t < T:
        end = min(t + max_len, T)
        sw = [s for s in switches if t + min_len <= s < end]
        if sw:
            end = sw[0]
        else:
            for n in range(min_len, end - t + 1, step):
                seg = arm[t:t + n]
                if ((seg.max(0) - seg.min(0)) > frac * span).any():
                    end = t + n
                    break
        lengths.append(end - t)
        t = end
    return lengths


def chunk_ids(context: int, lengths: list[int]) -> torch.Tensor:
    """Per-frame chunk ids ``(context + sum(lengths),)``: the context is chunk 0, then one id per
    chunk of ``lengths``."""
    ids = [0] * context + [i + 1 for i, n in enumerate(lengths) for _ in range(n)]
    return torch.tensor(ids, dtype=torch.long)


def _kv_of(entries) -> list | None:
    """Concatenate cached per-frame ``(k, v)`` payloads (lists per layer) along the token axis."""
    if not entries:
        return None
    layers = len(entries[0].payload)
    return [(torch.cat([e.payload[i][0] for e in entries], 2), torch.cat([e.payload[i][1] for e in entries], 2))
            for i in range(layers)]


@torch.no_grad()
def generate_chunked(model: VideoDiT, first: torch.Tensor, controls: torch.Tensor, kind: str, frames: int,
                     memory=None, poses: torch.Tensor | None = None, steps: int | None = None,
                     generator: torch.Generator | None = None, on_chunk=None,
                     lengths: list[int] | None = None) -> torch.Tensor:
    """Chunk-by-chunk generation by the causal student with a KV cache.

    Args:
        model: a :class:`VideoDiT`.
        first: ``(B, F0, C, H, W)`` given frames (clean), chunk 0 (train with ``context=F0``).
        controls: ``(B, frames, D)`` per-frame controls for the whole rollout (given frames too).
        kind: the control kind's name.
        frames: total frames (given + generated).
        memory: a :class:`ws_worldmodel.video.memory.MemoryKVCache` choosing what each chunk
            attends to (None: every earlier frame, an unbounded cache).
        poses: ``(frames, 4, 4)`` world-from-camera poses (for the memory's retrieval and
            deduplication; None: identity).
        steps: Euler steps per chunk (default ``cfg.euler_steps``).
        on_chunk: optional ``on_chunk(first_frame, chunk_frames, attended_frames)``.
        lengths: the generated chunks' lengths (e.g. :func:`action_guided_chunks` of the
            rollout's actions after the given frames; default ``cfg.chunk`` each).

    Returns:
        ``(B, frames, C, H, W)``: the given frames, then the generated ones.
    """
    from .memory import MemoryConfig, MemoryKVCache

    cfg = model.cfg
    steps = steps or cfg.euler_steps
    b, f0 = first.shape[:2]
    if controls.shape[:2] != (b, frames):
        raise ValueError(f"controls must be (B, {frames}, D), got {tuple(controls.shape)}")
    if f0 < 1 or f0 >= frames:
        raise ValueError(f"give between 1 and {frames - 1} first frames, got {f0}")
    label = model.kind_index(kind)
    if memory is None:
        memory = MemoryKVCache(MemoryConfig(anchors=0, window=1 << 30, pool=0, retrieve=0))
    eye = torch.eye(4, dtype=torch.float64)
    pose = (lambda i: eye) if poses is None else (lambda i: poses[i].double().cpu())
    out = [first]

    def remember(clean, start, base):
        ones = torch.ones(b, clean.shape[1], device=clean.device, dtype=clean.dtype)
        _, kv = model(clean, ones, controls[:, start:start + clean.shape[1]], label, first_frame=start,
                      past=_kv_of(memory.context(*_pose_args(pose(start)))), return_kv=True, context=f0,
                      base=base)
        n = cfg.tokens_per_frame
        for j in range(clean.shape[1]):
            payload = [(k[:, :, j * n:(j + 1) * n], v[:, :, j * n:(j + 1) * n]) for k, v in kv]
            pm = pose(start + j)
            # the descriptor (a copy to the host) only where deduplication reads it
            desc = clean[:, j].reshape(-1).float().cpu().numpy() if memory.cfg.dedup_threshold > 0 else None
            memory.add(payload, pm[:3, 3].numpy(), pm[:3, :3].numpy(), descriptor=desc)

    if lengths is not None and (sum(lengths) != frames - f0 or min(lengths) < 1):
        raise ValueError(f"chunk lengths must be positive and sum to the {frames - f0} frames to generate")
    todo = list(lengths) if lengths is not None else []
    remember(first, 0, first)  # a given frame is its own base
    t = f0
    while t < frames:
        n_new = todo.pop(0) if lengths is not None else min(cfg.chunk, frames - t)
        ctx = memory.context(*_pose_args(pose(t)))
        past = _kv_of(ctx)
        x = torch.randn((b, n_new) + tuple(first.shape[2:]), generator=generator, device=first.device,
                        dtype=first.dtype)
        ctrl = controls[:, t:t + n_new]
        base = out[-1][:, -1:]  # the last frame before this chunk (residual models)
        for s in range(steps):
            tau = torch.full((b, n_new), s / steps, device=first.device, dtype=first.dtype)
            x = x + model(x, tau, ctrl, label, first_frame=t, past=past, context=f0, base=base) / steps
        x = x.clamp(-1, 1)
        if on_chunk is not None:
            on_chunk(t, n_new, len(ctx))
        out.append(x)
        remember(x, t, base)
        t += n_new
    return torch.cat(out, 1)


def _pose_args(pm: torch.Tensor) -> tuple:
    return pm[:3, 3].numpy(), pm[:3, :3].numpy()


@torch.no_grad()
def generate_bidirectional(model: VideoDiT, first: torch.Tensor, controls: torch.Tensor, kind: str, frames: int,
                           steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The teacher's generation: all ``frames`` denoised together (``steps`` Euler steps, each a
    bidirectional pass over the whole clip), the ``first`` ``(B, F0, C, H, W)`` frames held clean.
    Returns ``(B, frames, C, H, W)``."""
    cfg = model.cfg
    steps = steps or cfg.euler_steps
    b, f0 = first.shape[:2]
    label = model.kind_index(kind)
    x = torch.randn((b, frames - f0) + tuple(first.shape[2:]), generator=generator, device=first.device,
                    dtype=first.dtype)
    for s in range(steps):
        tau = torch.cat([torch.ones(b, f0, device=first.device, dtype=first.dtype),
                         torch.full((b, frames - f0), s / steps, device=first.device, dtype=first.dtype)], 1)
        v = model(torch.cat([first, x], 1), tau, controls, label, causal=False, base=first[:, -1:])
        x = x + v[:, f0:] / steps
    return torch.cat([first, x.clamp(-1, 1)], 1)


def load_video_dit(path, device="cpu", config_defaults: dict | None = None) -> tuple["VideoDiT", dict]:
    """A video world model checkpoint -> ``(model in eval mode on device, checkpoint dict)``.

    The file is read with ``torch.load(..., weights_only=True)`` (tensors and plain data only)
    and the model rebuilt from its config dict; ``config_defaults`` fills keys that older
    files lack (the file's own keys win).

    Raises:
        ws_worldmodel.checkpoint.CheckpointError: missing, corrupt, not a safe checkpoint (its
            unpickling would run code; refused before anything runs), not a video model
            checkpoint, or weights that do not fit its config. The message names the path.
    """
    from ..checkpoint import CheckpointError, safe_torch_load

    ck = safe_torch_load(path, map_location=device, what="video checkpoint")
    if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict) or "state_dict" not in ck:
        raise CheckpointError(f"video checkpoint {path} is not a video world model checkpoint (no config and weights)")
    try:
        model = VideoDiT(VideoDiTConfig(**{**(config_defaults or {}), **ck["config"]})).to(device)
        model.load_state_dict(ck["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"video checkpoint {path} does not fit its own config: {' '.join(str(e).split())}") from e
    return model.eval(), ck
