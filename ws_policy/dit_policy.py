"""WorldScape Policy with the video world model as its video-depth stream (issues 7 and 9).

Issue 9 asks that the policy's video-depth stream become the video world model of
:mod:`ws_worldmodel.video.dit`. :class:`DiTPolicy` is that: the same Mixture-of-Transformers
as :class:`ws_policy.model.WorldScapePolicy` (seed 004), with the video and depth experts
replaced by a :class:`ws_worldmodel.video.dit.VideoDiT` (seed 000), and the action expert
beside it.

**Two streams (three with the observation stream, below), one attention.** The video-depth stream is a ``VideoDiT``, unchanged. It works
on RGB-D frames at ``future_size`` px: the current frame (clean, flow time 1, area-resized from
``image_size``) and the ``frames`` future frames (noisy). It uses its patch embedding, its
residual base (the current frame), its adaLN-modulated blocks with the control-kind experts
(``dit_kind``, ``"joints"`` for the PiPER), its rotary frame positions and its output layer.
The action stream has its own weights in every layer: norms, QKV and output projections, and
a feed-forward. Its tokens are the instruction token (with the improvement indicator, issue 8),
the state token and, with ``mode="mot"``, the ``chunk`` noisy action tokens. In every layer the
queries, keys and values of both streams meet in one softmax attention:
:meth:`DiTBlock.attention_inputs` and :meth:`DiTBlock.finish` are the two halves of the
world model's block around it. The block mask is the policy's: the clean context (the
current frame, instruction, state) attends only to itself; the noisy targets (future frames,
actions) attend to everything.

**Positions.** Frames keep the world model's rotary positions: the current frame is 0 and
future frame ``i`` is ``i``. The action tokens get rotary positions on the same time axis. The
instruction and state tokens are at 0. Action ``j`` leads to the state ``j + 1`` control steps
ahead, which is frame position ``(j + 1) / stride``. So attention between an action and a
frame sees how far apart in time they are.

**Controls.** The world model is trained with the command that led to each frame, as its
control. The policy does not know the future commands: it is denoising them. The stream's
control vectors are therefore zero: its kind's encoder contributes only its bias, and the
actions reach the frames through attention.

**The current frame at full resolution.** The stream sees frames at ``future_size`` (32 px
on the CPU), where the PiPER's cubes are one or two pixels wide. With ``stem="conv"`` (the
default) the policy's convolutional stem also embeds the ``image_size`` RGB-D frame, in
``patch`` px patches, one per token of the stream's current frame (``image_size / patch``
must equal ``future_size / dit patch``). Its output is added to those tokens. Measured (README,
100 episodes each): 31/100 with it and 33/100 without it (``stem="linear"``). Both are far
below the 70/100 of the MoT with its own video and depth experts, so the missing pixels are
not what holds this policy back.

**The observation stream** (``dit_obs=True``, ``ws policy train --obs-stream``). The current
frame also enters at ``image_size`` as a third stream with its own weights in every layer: the
MoT's RGB and depth tokens of it (its patch embeddings, positions and Depth Positional
Embedding, :meth:`WorldScapePolicy._frame_tokens`). They are context: they read the current
frame, instruction and state, never the targets. Their rotary position is 0, the present. The
world model's own tokens of the current frame then get nothing added, as in its pretraining. The
reason is measured, not assumed: closed loop, the policy without this stream missed the grasp or
the target where the MoT did not, and offline its chunks were twice as far off the expert's
while the arm reached for the cube and carried it (README, issue 9), which is where the cube's
and target's positions in the image decide the action.

**Depth Positional Embedding** (seed 004): as in ``WorldScapePolicy``. It is computed on the
full-resolution current depth and pooled in the same patches. Without the observation stream it
is added to the stream's current-frame tokens; with it, to the observation tokens.

**Objective and sampling**: unchanged (:func:`ws_policy.train.policy_loss`, ``sample``). The
stream returns the velocities of the future RGB and depth channels. The action expert returns
the velocities of the action tokens.

Pretraining: a ``VideoDiT`` trained by ``ws video experts train`` can be loaded into the
stream (:meth:`DiTPolicy.load_video`, ``ws policy train --video-init``). A ``mode="world"``
``DiTPolicy`` trained on the policy's own demonstrations, actions unused, starts the policy
through ``--init``, as for ``WorldScapePolicy``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ws_worldmodel.video.dit import VideoDiT, VideoDiTConfig, _rope, rope_table

from .model import POLICY_CLASSES, PolicyConfig, PolicyInputError, WorldScapePolicy, _conv_stem, _current_frame_embeddings

__all__ = ["DiTPolicy", "ActionExpertBlock"]


class ActionExpertBlock(nn.Module):
    """The action stream's weights in one layer: pre-norm QKV and output projection around the
    shared attention, then a pre-norm feed-forward."""

    def __init__(self, d: int, heads: int, ffn_mult: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Linear(ffn_mult * d, d))

    def attention_inputs(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(B, N, d)`` -> ``q, k, v`` ``(B, H, N, dh)``, rotary positions on ``q`` and ``k``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return _rope(q, rope), _rope(k, rope), v

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The attention output ``att`` ``(B, H, N, dh)`` of these tokens' queries into ``x``."""
        b, n, d = x.shape
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class DiTPolicy(WorldScapePolicy):
    """The policy with a :class:`VideoDiT` video-depth stream (module docstring).

    The inputs and outputs are those of :class:`WorldScapePolicy`, so training, sampling, the
    runner and the checkpoints are shared. ``future_rgb`` is ``(B, F, 3, s, s)`` and
    ``future_depth`` is ``(B, F, 1, s, s)``, with ``s = future_size``, the stream's frame size.
    With ``cfg.dit_obs`` a third stream (``obs_blocks``) holds the current frame's ``2 (S /
    patch)^2`` full-resolution RGB and depth tokens as context (module docstring).

    Raises:
        PolicyInputError: images of the wrong size.
        ValueError: a config that is not a ``video_model="dit"`` one (:class:`PolicyConfig` checks the rest).
    """

    def __init__(self, cfg: PolicyConfig):
        nn.Module.__init__(self)
        if cfg.video_model != "dit":
            raise ValueError("DiTPolicy needs PolicyConfig(video_model='dit')")
        self.cfg = cfg
        dc = VideoDiTConfig(**cfg.dit)
        d = dc.d_model
        self.video = VideoDiT(dc)
        self.kind = self.video.kind_index(cfg.dit_kind)
        self._build_inputs(cfg, d)
        self.cur_in, self.obs_blocks = None, None
        if cfg.dit_obs:  # the observation stream (module docstring): the MoT's current-frame tokens, own weights
            self.rgb_in, self.depth_in = _current_frame_embeddings(cfg, d)
            self.pos_cur = nn.Parameter(torch.randn((cfg.image_size // cfg.patch) ** 2, d) * 0.02)
            self.obs_blocks = nn.ModuleList(ActionExpertBlock(d, dc.heads, dc.ffn_mult) for _ in range(dc.layers))
        elif cfg.stem == "conv":  # the current frame at full resolution, one token per stream patch
            self.cur_in = _conv_stem(4, d, cfg.patch)
        self.action_blocks = nn.ModuleList(ActionExpertBlock(d, dc.heads, dc.ffn_mult) for _ in range(dc.layers))
        self.action_norm = nn.LayerNorm(d)

    def load_video(self, video: VideoDiT) -> None:
        """Put a trained world model's weights into the stream (its config must be the stream's).

        Raises:
            ValueError: a world model of another config."""
        if dataclasses.asdict(video.cfg) != dataclasses.asdict(self.video.cfg):
            raise ValueError("the world model's config differs from this policy's video-depth stream: "
                             f"{dataclasses.asdict(video.cfg)} vs {dataclasses.asdict(self.video.cfg)}")
        self.video.load_state_dict(video.state_dict())

    def _action_positions(self, n: int, device) -> torch.Tensor:
        """Rotary positions (frame units) of the action stream's ``n`` tokens: the instruction and
        state at 0, action ``j`` at ``(j + 1) / stride``."""
        pos = torch.zeros(n, device=device)
        pos[2:] = (torch.arange(n - 2, device=device) + 1) / self.cfg.stride
        return pos

    def forward(self, rgb, depth, state, words, tau, future_rgb=None, future_depth=None, actions=None,
                indicator=None) -> dict:
        """Flow velocities of the targets at flow time ``tau`` ``(B,)``: ``{"future_rgb": (B, F, 3,
        s, s), "future_depth": (B, F, 1, s, s)}`` and, with ``mode="mot"``, ``"actions": (B, L,
        7)`` (normalised units, as :meth:`WorldScapePolicy.forward`).

        Raises:
            PolicyInputError: current images that are not ``image_size`` px square."""
        cfg, vc = self.cfg, self.video.cfg
        b, s = rgb.shape[0], cfg.future_size
        if rgb.shape[-2:] != (cfg.image_size,) * 2 or depth.shape[-2:] != (cfg.image_size,) * 2:
            raise PolicyInputError(f"images must be {cfg.image_size} px square, got rgb {tuple(rgb.shape)} "
                                   f"and depth {tuple(depth.shape)}")
        # the stream's frames: the current one (clean) and the noisy future ones, RGB-D in [-1, 1]
        cur = torch.cat([rgb, depth / cfg.max_depth * 2 - 1], dim=1)
        if cur.shape[-1] != s:
            cur = F.interpolate(cur, size=(s, s), mode="area")
        cur = cur[:, None]
        frames = torch.cat([cur, torch.cat([future_rgb, future_depth], dim=2)], dim=1)  # (B, 1 + F, 4, s, s)
        nf = frames.shape[1]
        tau_f = torch.cat([frames.new_ones(b, 1), tau[:, None].to(frames.dtype).expand(b, nf - 1)], dim=1)
        base = cur if vc.residual else None
        xv = self.video.frame_tokens(frames, base)
        xo = None
        if cfg.dit_obs:  # the full-resolution frame is the observation stream's; the world model's view stays its own
            xo = torch.cat(self._frame_tokens(rgb, depth), dim=1)
        else:
            extra = self.depth_positional_embedding(depth)
            if self.cur_in is not None:
                full = torch.cat([rgb, depth / cfg.max_depth * 2 - 1], dim=1)
                extra = extra + self.cur_in(full).flatten(2).transpose(1, 2)
            xv = torch.cat([xv[:, :1] + extra[:, None], xv[:, 1:]], dim=1)
        cond = self.video.condition(tau_f, frames.new_zeros(b, nf, vc.control_dims[self.kind]), self.kind)
        n = vc.tokens_per_frame
        dh = vc.d_model // vc.heads
        rope_v = rope_table(torch.arange(nf, device=xv.device).repeat_interleave(n), dh, xv.dtype)
        chunks = torch.tensor([0] + [1] * (nf - 1), device=xv.device) if vc.chunk_experts else None
        # the action stream: instruction (and indicator), state, and the noisy action tokens
        xa = self._text_state(words, state, indicator, rgb)
        if cfg.predicts_actions:
            a_tok = self.action_in(actions) + self.action_pos + self._time(tau)[:, None]
            if cfg.indicator and cfg.indicator_on_actions:
                a_tok = a_tok + self._indicator(indicator, rgb)
            xa = torch.cat([xa, a_tok], dim=1)
        na, no = xa.shape[1], 0 if xo is None else xo.shape[1]
        rope_a = rope_table(self._action_positions(na, xa.device), dh, xa.dtype)
        rope_o = rope_table(torch.zeros(no, device=xa.device), dh, xa.dtype)  # the present, as the current frame
        # sequence order: stream frames, observation tokens (context), instruction and state (context), actions
        is_ctx = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros((nf - 1) * n, dtype=torch.bool),
                            torch.ones(no + 2, dtype=torch.bool), torch.zeros(na - 2, dtype=torch.bool)]).to(xv.device)
        mask = ~is_ctx[:, None] | is_ctx[None, :]  # row attends to column
        nv = nf * n
        obs_blocks = self.obs_blocks if xo is not None else [None] * len(self.action_blocks)
        for blk, oblk, ablk in zip(self.video.blocks, obs_blocks, self.action_blocks):
            qv, kv, vv, mod = blk.attention_inputs(xv, cond, rope_v)
            qa, ka, va = ablk.attention_inputs(xa, rope_a)
            if oblk is not None:
                qo, ko, vo = oblk.attention_inputs(xo, rope_o)
                qa, ka, va = torch.cat([qo, qa], 2), torch.cat([ko, ka], 2), torch.cat([vo, va], 2)
            att = F.scaled_dot_product_attention(torch.cat([qv, qa], 2), torch.cat([kv, ka], 2),
                                                 torch.cat([vv, va], 2), attn_mask=mask)
            xv = blk.finish(xv, att[:, :, :nv], mod, self.kind, chunks)
            if oblk is not None:
                xo = oblk.finish(xo, att[:, :, nv:nv + no])
            xa = ablk.finish(xa, att[:, :, nv + no:])
        out = {}
        vel = self.video.velocity(xv, cond, frames, tau_f, base)[:, 1:]
        out["future_rgb"], out["future_depth"] = vel[:, :, :3], vel[:, :, 3:]
        if cfg.predicts_actions:
            out["actions"] = self.action_out(self.action_norm(xa[:, 2:]))
        return out


POLICY_CLASSES["dit"] = DiTPolicy  # build_policy(PolicyConfig(video_model="dit"))
