"""WestWorld: the knowledge-encoded, system-aware MoE trajectory world model (seed 003, sec. 4).

One forward pass maps a history of ``Th`` states, the actions of history and future, and
``H`` learnable queries to categorical predictions of the ``H`` future states.

Tokens (sec. 4.2). Every scalar channel at every step is a token. Values are min-max
normalised per channel to [0, 1] (training-split ranges, carried by the channel metadata)
and encoded as **HL-Gauss soft labels** over ``bins`` uniform bins (Farebrother et al.,
2024, "Stop regressing"; TrajWorld [46] uses the same encoding): a Gaussian of width
``hl_gauss_sigma`` bins integrated over each bin. Unlike a one-hot bin it keeps the order of
the bins and the position inside a bin, and the same soft labels are the cross-entropy
targets (eq. 11). A learned projection maps the ``bins``-vector to ``d_model``; timestep,
channel-index and modality (state/action) embeddings are added, and so is the structural
embedding of eq. (3): the concatenation of four encoders of the channel's
``(object, pre, in, post)`` body index (:mod:`ws_worldmodel.structure`). Timestep, channel
and structural indices are encoded sinusoidally and then projected, so no table bounds the
number of steps, channels or bodies: the model is never told a maximum size.

Sys-MoE block (sec. 4.3, eqs. 4-9):

1. self-attention across the state channels of each step (eq. 4);
2. cross-attention from each state token at step ``t`` to the action tokens of step
   ``t - 1`` (the action that led to it) plus one learned null token (eq. 5);
3. per channel, a Mamba-style selective SSM along time (eq. 7, :mod:`ws_worldmodel.ssm`);
4. a learnable system embedding appended after the **history** tokens and carried through
   the same SSM; its output feeds a softmax router over ``n_experts`` MLP experts (eq. 8),
   whose weighted sum transforms every token of that channel (eq. 9).

Deviation from the text, on purpose: the seed appends the system embedding after all
tokens (history and queries). Queries carry future actions, so routing from there would
let a change of a late action alter the prediction of an earlier step; appending it after
the history keeps the one-pass prediction causal in the actions (tested).

A linear head gives ``bins`` logits per state channel at every query position (eq. 10).
``tokens="step"`` (not in the seed; see :class:`WestWorldConfig`) pools each step's channels into
one token before the blocks and reads every channel back out after them, so that a block runs on
``steps`` tokens instead of ``steps x channels``: the distilled students that must plan at 90 Hz.
With ``target="delta"`` (not in the seed) the bins encode each channel's change from the last
observed state on a symmetric log scale instead of the absolute value, the head starts at "no
change" (an untrained model holds the last state), predictions may leave the training range,
and history tokens also carry their unclamped value; decoding inverts the expected bin
position (the seed's code decodes the expectation over absolute bins).
Systems of different sizes share a batch: channels are padded to the batch's largest
system and masked out of attention keys, routing and the loss.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from .ssm import SelectiveSSM, SSMState

__all__ = ["WestWorldConfig", "WestWorld", "TrajectoryBatch", "hl_gauss", "sinusoidal", "soft_cross_entropy",
           "delta_to_unit", "unit_to_delta"]


@dataclasses.dataclass
class WestWorldConfig:
    """Model size. The seed's App. D.1 values are lost in its text; defaults are CPU-sized.

    Attributes:
        d_model, n_heads, n_blocks: width, attention heads, Sys-MoE blocks.
        n_experts: experts per block (the seed picks 4 by validation, Table 10).
        expert_hidden: hidden width of each expert MLP.
        bins: categorical bins per scalar.
        hl_gauss_sigma: HL-Gauss width in bins.
        d_state, d_conv, expand: the SSM's state size, conv width and expansion.
        dropout: dropout in attention and experts.
        use_structure: add the structural embedding (ablation: False).
        use_moe: Sys-MoE layer; False gives the dense ablation (one MLP of ``n_experts *
            expert_hidden`` hidden units, no system embedding, no router).
        target: what the ``bins`` encode. ``"absolute"``: the normalised future state over
            [0, 1] (the seed's; a prediction cannot leave the training range). ``"delta"``: the
            change of each channel from the last observed state, over bins spaced uniformly in
            a symmetric log scale of the change (fine near "no change", wide up to
            ``delta_range`` training ranges); the head starts at "no change", so an untrained
            model predicts the last observed state, and predictions leave the training range
            whenever the state does. History tokens also carry their unclamped value.
        delta_range: the largest change the ``"delta"`` bins represent, in training ranges.
        delta_eps: the change, in training ranges, below which the ``"delta"`` bins are
            roughly uniform (the symmetric-log scale's linear part).
        tokens: what one token of the blocks is. ``"channel"`` (the seed's): every scalar channel
            of every step, so a block costs ``steps x channels`` tokens. ``"step"`` (not in the
            seed; for students that must run at control rates): the channels of a step are
            embedded as above (actions with a linear value encoding instead of HL-Gauss, as an
            MPPI cycle embeds ``K x steps x Ca`` of them), passed through a shared GELU layer
            and averaged over the real channels into one state token and one action token per
            step (a permutation-invariant set encoding, so any number of channels still fits).
            The blocks run on ``steps`` tokens: no attention across channels (one token makes it
            void), the action token that led to a step added through a linear map in place of
            the cross-attention (eq. 5 with one query), the SSM and the Sys-MoE as before. Each
            channel's logits come from the step's output plus that channel's own embedding,
            through a ReLU layer and the head.
    """

    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 2
    n_experts: int = 4
    expert_hidden: int = 128
    bins: int = 64
    hl_gauss_sigma: float = 0.75
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dropout: float = 0.0
    use_structure: bool = True
    use_moe: bool = True
    target: str = "absolute"
    delta_range: float = 2.0
    delta_eps: float = 0.01
    tokens: str = "channel"

    def __post_init__(self):
        if self.d_model % self.n_heads or self.d_model % 4:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) and 4")
        if self.target not in ("absolute", "delta"):
            raise ValueError(f"target must be 'absolute' or 'delta', got {self.target!r}")
        if not 0 < self.delta_eps < self.delta_range:
            raise ValueError(f"need 0 < delta_eps < delta_range, got {self.delta_eps} and {self.delta_range}")
        if self.tokens not in ("channel", "step"):
            raise ValueError(f"tokens must be 'channel' or 'step', got {self.tokens!r}")


@dataclasses.dataclass
class TrajectoryBatch:
    """A batch of normalised segments from one or several systems.

    Attributes:
        states: ``(B, T, Cs)`` in [0, 1]; only the first ``history`` steps are read as input,
            the rest are targets.
        actions: ``(B, T, Ca)`` in [0, 1]; ``actions[:, t]`` leads from ``s_t`` to ``s_{t+1}``.
        state_mask, action_mask: ``(B, Cs)``, ``(B, Ca)`` bool, true for real channels.
        state_struct, action_struct: ``(B, Cs, 4)``, ``(B, Ca, 4)`` int64 structural indices
            ``(object + 1, pre, in, post)`` (object -1, the static world, becomes 0); a leading 1 instead
            of ``B``: the same for every sample (WestWorld only; the ONNX export, so that the runtime folds
            the structural embeddings into constants).
        history: ``Th``, the number of observed steps; ``H = T - Th`` are predicted.
    """

    states: torch.Tensor
    actions: torch.Tensor
    state_mask: torch.Tensor
    action_mask: torch.Tensor
    state_struct: torch.Tensor
    action_struct: torch.Tensor
    history: int

    def __post_init__(self):
        b, t, cs = self.states.shape
        ca = self.actions.shape[2]
        if self.actions.shape[:2] != (b, t):
            raise ValueError(f"actions {tuple(self.actions.shape)} do not match states {tuple(self.states.shape)}")
        if self.state_mask.shape != (b, cs) or self.action_mask.shape != (b, ca):
            raise ValueError("masks must be (B, Cs) and (B, Ca)")
        if self.state_struct.shape not in ((b, cs, 4), (1, cs, 4)) or self.action_struct.shape not in ((b, ca, 4),
                                                                                                  (1, ca, 4)):
            raise ValueError("structural indices must be (B, Cs, 4) and (B, Ca, 4), or (1, ., 4) for every sample")
        if not 1 <= self.history < t:
            raise ValueError(f"history must be in 1..{t - 1}, got {self.history}")

    def to(self, device) -> "TrajectoryBatch":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "history"})


def sinusoidal(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of integer indices: ``(...) -> (..., dim)`` (Vaswani et al. 2017)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=index.device, dtype=torch.float32) / max(half, 1))
    ang = index.to(torch.float32).unsqueeze(-1) * freq
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def hl_gauss(values: torch.Tensor, bins: int, sigma_bins: float) -> torch.Tensor:
    """HL-Gauss soft labels of values in [0, 1] over ``bins`` uniform bins: ``(...) -> (..., bins)``.

    Each label is a Gaussian ``N(value, (sigma_bins / bins)^2)`` integrated over the bins of
    [0, 1] and renormalised (Farebrother et al. 2024, sec. 3). Values are clamped to [0, 1].
    """
    edges = torch.linspace(0.0, 1.0, bins + 1, device=values.device)
    sigma = sigma_bins / bins
    z = (edges - values.clamp(0, 1).unsqueeze(-1)) / (sigma * math.sqrt(2))
    cdf = 0.5 * (1 + torch.erf(z))
    p = cdf[..., 1:] - cdf[..., :-1]
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


def delta_to_unit(delta: torch.Tensor, eps: float, max_delta: float) -> torch.Tensor:
    """A change (in training ranges; elementwise, any shape) to its place in [0, 1] on a symmetric
    log scale: ``u = (1 + sign(d) log(1 + |d| / eps) / log(1 + max_delta / eps)) / 2``; 0.5 is "no change",
    changes beyond ``max_delta`` are clamped to its end."""
    scale = math.log1p(max_delta / eps)
    d = delta.clamp(-max_delta, max_delta)
    return 0.5 + 0.5 * torch.sign(d) * torch.log1p(d.abs() / eps) / scale


def unit_to_delta(unit: torch.Tensor, eps: float, max_delta: float) -> torch.Tensor:
    """The inverse of :func:`delta_to_unit` (elementwise, any shape): a place in [0, 1] to a change
    in training ranges."""
    z = (2.0 * unit - 1.0) * math.log1p(max_delta / eps)
    if torch.onnx.is_in_onnx_export():  # ONNX has no expm1; exp - 1 differs by ~1e-7 eps, far below a bin
        return torch.sign(z) * eps * (torch.exp(z.abs()) - 1.0)
    return torch.sign(z) * eps * torch.expm1(z.abs())


def soft_cross_entropy(logits: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, bins: int,
                       sigma: float) -> torch.Tensor:
    """HL-Gauss cross-entropy (seed 003 eq. 11): ``logits (B, H, C, bins)``, ``values (B, H, C)``
    in [0, 1], ``mask (B, C)``.

    The mean over samples of each sample's mean over its steps and real channels, so the
    mean over equal shards of a batch equals the loss of the whole batch (what data-parallel
    training needs), whatever the systems in each shard.
    """
    ce = -(hl_gauss(values, bins, sigma) * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    m = mask[:, None, :].to(ce.dtype)
    per_sample = (ce * m).sum((1, 2)) / (m[:, 0].sum(-1) * ce.shape[1]).clamp_min(1)
    return per_sample.mean()


class _StructEmbedding(nn.Module):
    """Eq. (3): four encoders (object, pre, in, post), concatenated to ``d_model``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.part = d_model // 4
        self.enc = nn.ModuleList(nn.Linear(self.part, self.part) for _ in range(4))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (..., 4) -> (..., d)
        return torch.cat([enc(sinusoidal(idx[..., k], self.part)) for k, enc in enumerate(self.enc)], dim=-1)


class _Expert(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))

    def forward(self, x):
        return self.net(x)


class SysMoEBlock(nn.Module):
    """One Sys-MoE block (eqs. 4-9); see the module docstring."""

    def __init__(self, cfg: WestWorldConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.channel_attention = cfg.tokens == "channel"  # one step token: nothing to attend across
        if self.channel_attention:
            self.ln_self = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
            self.ln_cross = nn.LayerNorm(d)
            self.cross_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
            self.null_action = nn.Parameter(torch.zeros(1, 1, d))
        else:  # a step token takes its step's pooled action token through a linear map (eq. 5 for one query)
            self.action_in = nn.Linear(d, d)
        self.ln_ssm = nn.LayerNorm(d)
        self.ssm = SelectiveSSM(d, cfg.d_state, cfg.d_conv, cfg.expand)
        self.ln_moe = nn.LayerNorm(d)
        if cfg.use_moe:
            self.system = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.router = nn.Linear(d, cfg.n_experts)
            self.experts = nn.ModuleList(_Expert(d, cfg.expert_hidden, cfg.dropout) for _ in range(cfg.n_experts))
        else:
            self.dense = _Expert(d, cfg.expert_hidden * cfg.n_experts, cfg.dropout)

    def _experts(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``sum_e g_e expert_e(z)``: ``z (N, T, d)``, gates ``g (N, E)`` -> ``(N, T, d)``, without a loop
        over the experts (their first layers as one ``(E h, d)`` matrix, their second as one ``(d, E h)``)."""
        first = [e.net[0] for e in self.experts]
        second = [e.net[3] for e in self.experts]
        hidden = F.gelu(F.linear(z, torch.cat([f.weight for f in first]), torch.cat([f.bias for f in first])))
        hidden = F.dropout(hidden, self.cfg.dropout, self.training)
        hidden = (hidden.unflatten(-1, (len(first), -1)) * g[:, None, :, None]).flatten(-2)  # expert e's units by g_e
        bias = g @ torch.stack([f.bias for f in second])  # (N, d)
        return F.linear(hidden, torch.cat([f.weight for f in second], dim=1)) + bias[:, None, :]

    def _attend(self, x: torch.Tensor, prev: torch.Tensor, state_mask: torch.Tensor, action_mask: torch.Tensor,
                first_has_action: bool) -> torch.Tensor:
        """Eqs. (4)-(5) on ``x (B, T, Cs, d)``: self-attention across the state channels of each step, then
        cross-attention to ``prev (B, T, Ca, d)``, the action tokens that led to each step (and a null token,
        never masked). ``first_has_action`` False: no action precedes the first step (only the null token)."""
        b, t, cs, d = x.shape
        ca = prev.shape[2]
        if not self.channel_attention:  # step tokens: prev is the pooled action token (B, T, 1, d); zero: none
            return x + self.action_in(prev)
        pad = None if bool(state_mask.all()) else (~state_mask).repeat_interleave(t, dim=0)  # None: the fast path
        if x.stride(0) == 0 and b > 1:  # every sample's tokens are one tensor expanded: attend once
            h = x[:1].reshape(t, cs, d)
            q = self.ln_self(h)
            h = (h + self.self_attn(q, q, q, key_padding_mask=None if pad is None else pad[:t],
                                    need_weights=False)[0]).repeat(b, 1, 1)
        else:
            h = x.reshape(b * t, cs, d)
            q = self.ln_self(h)
            h = h + self.self_attn(q, q, q, key_padding_mask=pad, need_weights=False)[0]
        keys = torch.cat([self.null_action.expand(b * t, 1, d), prev.reshape(b * t, ca, d)], dim=1)
        if first_has_action and bool(action_mask.all()):
            kpad = None
        else:
            amask = (~action_mask).unsqueeze(1).expand(b, t, ca).clone()
            if not first_has_action:
                amask[:, 0] = True  # no action precedes the first step
            kpad = torch.cat([torch.zeros(b * t, 1, dtype=torch.bool, device=x.device), amask.reshape(b * t, ca)], 1)
        h = h + self.cross_attn(self.ln_cross(h), keys, keys, key_padding_mask=kpad, need_weights=False)[0]
        return h.reshape(b, t, cs, d)

    def _along_time(self, h: torch.Tensor, history: int | None, state: SSMState | None = None,
                    gates: torch.Tensor | None = None, return_state: bool = False):
        """Eqs. (6)-(9) on ``h (B, T, Cs, d)`` from :meth:`_attend`: per channel, the selective SSM along time
        (continuing ``state`` if given), then the system-conditioned mixture of experts. Its gates are read
        out of the SSM from the system token placed after ``history`` steps, or given as ``gates (B * Cs, E)``
        (a continuation). Returns ``(x' (B, T, Cs, d), gates or None, SSMState or None)``."""
        b, t, cs, d = h.shape
        y = h.permute(0, 2, 1, 3).reshape(b * cs, t, d)
        u = self.ln_ssm(y)
        new_state = None
        if self.cfg.use_moe and gates is None:
            # eq. (8): the system embedding, appended after the history, read out of the same SSM
            out = self.ssm(u, extra=self.system.expand(b * cs, 1, d), extra_after=history, state=state,
                           return_state=return_state)
            y = y + out[0]
            gates = torch.softmax(self.router(out[1]), dim=-1)  # (B*Cs, E)
            new_state = out[2] if return_state else None
        else:
            out = self.ssm(u, state=state, return_state=return_state)
            y = y + (out[0] if return_state else out)
            new_state = out[1] if return_state else None
        z = self.ln_moe(y)
        if self.cfg.use_moe:
            # eq. (9): system-conditioned mixture of experts, all experts in two matmuls: the gate of a
            # sequence scales its experts' hidden units, so sum_e g_e (W2_e gelu(W1_e z + c1_e) + c2_e)
            # = (gelu(W1 z + c1) * g per hidden unit) W2 + g C2 with the experts' weights side by side
            y = y + self._experts(z, gates)
        else:
            y = y + self.dense(z)
        return y.reshape(b, cs, t, d).permute(0, 2, 1, 3), (gates if self.cfg.use_moe else None), new_state

    def forward(self, x: torch.Tensor, act: torch.Tensor, state_mask: torch.Tensor, action_mask: torch.Tensor,
                history: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, T, Cs, d)``, ``act (B, T, Ca, d)`` -> ``(x', routing (B, Cs, E) or None)``."""
        b, t, cs, d = x.shape
        prev = torch.cat([act.new_zeros(b, 1, act.shape[2], d), act[:, :-1]], dim=1)  # the action into each step
        h = self._attend(x, prev, state_mask, action_mask, first_has_action=False)
        y, g, _ = self._along_time(h, history)
        return y, (g.reshape(b, cs, -1) if g is not None else None)

    def forward_shared(self, x_hist: torch.Tensor, x_fut: torch.Tensor, act: torch.Tensor, state_mask: torch.Tensor,
                       action_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The block when every sample shares its history (MPPI: ``K`` futures from one past).

        Args:
            x_hist: ``(1, Th, Cs, d)`` the shared history's tokens.
            x_fut: ``(B, H, Cs, d)`` the future steps' tokens.
            act: ``(B, Th + H, Ca, d)`` action tokens; ``act[:, :Th - 1]`` must be the same for all samples.
            state_mask, action_mask: ``(B, Cs)``, ``(B, Ca)``, the same for all samples.

        Returns:
            ``(x_hist', x_fut', routing (1, Cs, E) or None)``, equal to :meth:`forward` on the whole batch
            (the history's part once, its SSM state and gates carried to every sample): :meth:`history_shared`
            then :meth:`future_shared`.
        """
        th, cs = x_hist.shape[1:3]
        yh, carry = self.history_shared(x_hist, act[:1], state_mask, action_mask)
        yf = self.future_shared(x_fut, act[:, th - 1:-1], carry, state_mask, action_mask)
        g = carry[1]
        return yh, yf, (g.reshape(1, cs, -1) if g is not None else None)

    def history_shared(self, x_hist: torch.Tensor, act: torch.Tensor, state_mask: torch.Tensor,
                       action_mask: torch.Tensor) -> tuple[torch.Tensor, tuple[SSMState, torch.Tensor | None]]:
        """The shared history's part of :meth:`forward_shared`: ``x_hist (1, Th, Cs, d)`` and the history's
        action tokens ``act (1, >= Th - 1, Ca, d)`` (masks: their first row is read) -> ``(x_hist', carry)``,
        ``carry`` = (the SSM state after the history ``(Cs, ...)``, the expert gates ``(Cs, E)`` or None)."""
        th = x_hist.shape[1]
        prev_hist = torch.cat([act.new_zeros(1, 1, act.shape[2], act.shape[3]), act[:1, :th - 1]], dim=1)
        hh = self._attend(x_hist, prev_hist, state_mask[:1], action_mask[:1], first_has_action=False)
        yh, g, st = self._along_time(hh, th, return_state=True)
        return yh, (st, g)

    def future_shared(self, x_fut: torch.Tensor, prev: torch.Tensor, carry: tuple[SSMState, torch.Tensor | None],
                      state_mask: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """The futures' part of :meth:`forward_shared`: ``x_fut (B, H, Cs, d)``, ``prev (B, H, Ca, d)`` the action
        token that leads into each future step, ``carry`` from :meth:`history_shared` (carried to every sample),
        masks ``(B, Cs)``, ``(B, Ca)`` -> ``x_fut' (B, H, Cs, d)``. Samples are independent here, so any split of
        the batch gives the same rows."""
        b = x_fut.shape[0]
        st, g = carry
        hf = self._attend(x_fut, prev, state_mask, action_mask, first_has_action=True)
        st = SSMState(*(v.repeat(b, 1, 1) for v in st))  # (Cs, ...) -> (B * Cs, ...), sample-major like the batch
        yf, _, _ = self._along_time(hf, None, state=st, gates=None if g is None else g.repeat(b, 1))
        return yf


class WestWorld(nn.Module):
    """The WestWorld trajectory world model (seed 003).

    ``forward(batch)`` returns logits ``(B, H, Cs, bins)`` for the ``H = T - Th`` future
    states of every channel and the routing weights of each block. ``loss(batch)`` is the
    soft-label cross-entropy of eq. (11) on real state channels; ``predict(batch)`` decodes
    the expected normalised value ``(B, H, Cs)``.
    """

    def __init__(self, cfg: WestWorldConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WestWorldConfig()
        d = cfg.d_model
        self.value_proj = nn.Linear(cfg.bins, d)
        # a soft label mixes bin embeddings: give them an embedding table's unit scale, so the
        # value is not drowned by the positional encodings at initialisation (learns faster)
        nn.init.normal_(self.value_proj.weight, std=1.0)
        self.time_proj = nn.Linear(d, d)
        self.chan_proj = nn.Linear(d, d)
        self.modality = nn.Embedding(2, d)
        self.query = nn.Parameter(torch.randn(d) * 0.02)
        self.struct = _StructEmbedding(d) if cfg.use_structure else None
        self.blocks = nn.ModuleList(SysMoEBlock(cfg) for _ in range(cfg.n_blocks))
        self.step_tokens = cfg.tokens == "step"
        if self.step_tokens:
            # the set encoding of a step's channels: the mean of GELU(W x + b) over the real ones, then a linear map
            self.pool_in, self.pool_out = nn.Linear(d, d), nn.Linear(d, d)
            self.act_pool_in, self.act_pool_out = nn.Linear(d, d), nn.Linear(d, d)  # the same for its actions,
            self.act_value = nn.Linear(1, d)  # whose values enter linearly (no HL-Gauss: the pool is the nonlinearity),
            nn.init.normal_(self.act_value.weight, std=1.0)  # at the scale of the positional encodings, as value_proj
            self.dec_step = nn.Linear(d, d)  # a channel's output: ReLU(W LN(y_step) + its own embedding), the head
            self.dec_chan = nn.Linear(d, d)
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.bins)
        centers = (torch.arange(cfg.bins, dtype=torch.float32) + 0.5) / cfg.bins
        self.register_buffer("bin_centers", centers)
        self.delta = cfg.target == "delta"
        if self.delta:
            self.raw_proj = nn.Linear(1, d)  # the unclamped value of a history token (it may leave [0, 1])
            # a head that starts at "no change": small weights and a broad Gaussian over the bins, symmetric
            # about the middle, so the decoded change starts at zero while every bin keeps a learnable share
            with torch.no_grad():
                self.head.weight.mul_(1e-2)
                self.head.bias.copy_(-0.5 * ((centers - 0.5) / 0.15).square())
        self.name = "westworld"

    def _static_embed(self, struct: torch.Tensor, modality: int, n_chan: int) -> torch.Tensor:
        """The part of a token's embedding that does not depend on its step or value: channel index,
        modality and structure, ``(B or 1, 1, C, d)``."""
        d = self.cfg.d_model
        base = self.chan_proj(sinusoidal(torch.arange(n_chan, device=struct.device), d))[None, None] + \
            self.modality.weight[modality]
        if self.struct is not None:
            base = base + self.struct(struct)[:, None]
        return base

    def _embed(self, values: torch.Tensor | None, struct: torch.Tensor, steps: torch.Tensor, modality: int,
               n_chan: int, static: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``(B, len(steps), C, d)``; ``values`` None means query tokens. ``static``: the
        :meth:`_static_embed` of ``struct``, ``modality`` and ``n_chan`` if already at hand."""
        d = self.cfg.d_model
        time = self.time_proj(sinusoidal(steps, d))[None, :, None]
        base = time + (self._static_embed(struct, modality, n_chan) if static is None else static)
        if values is None:
            return base + self.query
        if self.step_tokens and modality == 1:  # K x T x Ca action tokens per MPPI cycle: a linear value encoding
            return base + self.act_value((2.0 * values - 1.0).clamp(-10.0, 10.0).unsqueeze(-1))  # [0, 1] -> [-1, 1]
        tok = base + self.value_proj(hl_gauss(values, self.cfg.bins, self.cfg.hl_gauss_sigma))
        if self.delta and modality == 0:
            tok = tok + self.raw_proj(values.clamp(-10.0, 10.0).unsqueeze(-1))
        return tok

    def _pool(self, x: torch.Tensor, mask: torch.Tensor, actions: bool = False) -> torch.Tensor:
        """``tokens="step"``: channel tokens ``(B, T, C, d)`` -> one token per step ``(B, T, 1, d)``, the mean of
        ``GELU(pool_in(x))`` over the real channels (``mask (B, C)``), through ``pool_out`` (the ``act_pool_*``
        pair for action tokens)."""
        lin_in, lin_out = (self.act_pool_in, self.act_pool_out) if actions else (self.pool_in, self.pool_out)
        h = F.gelu(lin_in(x))
        if bool(mask.all()):
            h = h.mean(2, keepdim=True)
        else:
            m = mask[:, None, :, None].to(x.dtype)
            h = (h * m).sum(2, keepdim=True) / m.sum(2, keepdim=True).clamp_min(1.0)
        return lin_out(h)

    def _channel_logits(self, y: torch.Tensor, struct: torch.Tensor, n_chan: int) -> torch.Tensor:
        """Logits ``(B, H, Cs, bins)`` from the blocks' output ``y (B, H, C', d)``: ``C' = Cs`` channel
        tokens (the head on each), or ``C' = 1`` step token (``tokens="step"``: each channel's logits from
        ``ReLU(dec_step(LN(y)) + dec_chan(e_c))``, ``e_c`` its channel, modality and structural embedding; the
        per-channel part is one add, one ReLU and the head, as it runs on ``B x H x Cs`` tokens)."""
        if not self.step_tokens:
            return self.head(self.ln_out(y))
        d = self.cfg.d_model
        e = self.chan_proj(sinusoidal(torch.arange(n_chan, device=y.device), d))[None] + self.modality.weight[0]
        if self.struct is not None:
            e = e + self.struct(struct)  # (B or 1, Cs, d)
        z = torch.relu(self.dec_step(self.ln_out(y)) + self.dec_chan(e)[:, None])  # (B, H, Cs, d)
        return self.head(z.flatten(0, 2)).unflatten(0, z.shape[:3])  # 2-D: one GEMM with its bias (ONNX Gemm)

    def forward(self, batch: TrajectoryBatch, shared_history: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, H, Cs, bins)`` and each block's routing weights.

        ``shared_history``: every sample has the same history (states ``[:, :Th]``, actions ``[:, :Th - 1]``,
        masks and structure; MPPI's ``K`` futures from one past). The history is then run once and its SSM
        states and expert gates carried to every sample, which gives the same logits (to float rounding)
        for ``H`` instead of ``Th + H`` steps per sample. Raises ValueError if the histories differ.
        """
        if shared_history:
            return self._forward_shared(batch)
        th = batch.history
        b, t, cs = batch.states.shape
        steps = torch.arange(t, device=batch.states.device)
        hist = self._embed(batch.states[:, :th], batch.state_struct, steps[:th], 0, cs)
        queries = self._embed(None, batch.state_struct, steps[th:], 0, cs).expand(b, -1, -1, -1)
        x = torch.cat([hist, queries], dim=1)
        state_mask = batch.state_mask
        if self.step_tokens:
            x, state_mask = self._pool(x, state_mask), state_mask.new_ones(b, 1)
        act = self._embed(batch.actions, batch.action_struct, steps, 1, batch.actions.shape[2])
        if self.step_tokens:
            act = self._pool(act, batch.action_mask, actions=True)
        routing = []
        for blk in self.blocks:
            x, g = blk(x, act, state_mask, batch.action_mask, th)
            if g is not None:
                routing.append(g)
        return self._channel_logits(x[:, th:], batch.state_struct, cs), routing

    #: largest number of future tokens (samples x steps x channel tokens) one pass of a shared-history prediction
    #: holds in inference: a larger batch runs in chunks of samples, so that the expert layer's hidden units
    #: (``tokens x n_experts x expert_hidden`` floats) stay cache-sized instead of being allocated, page by page,
    #: at every call (at batch 256 and H = 100, half the time went to the kernel's page faults)
    SHARED_CHUNK_TOKENS = 4096

    def _forward_shared(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        chunks = list(self._shared_chunks(batch))
        logits = chunks[0][1] if len(chunks) == 1 else torch.cat([c[1] for c in chunks])
        return logits, chunks[0][2]

    def _shared_chunks(self, batch: TrajectoryBatch):
        """The shared-history forward (see :meth:`forward`), chunk by chunk of samples: yields
        ``(samples slice, logits (n, H, Cs, bins), routing)`` (routing over the whole batch, in the first chunk's
        tuple and every other). Without autograd, tracing or export, chunks hold at most
        :attr:`SHARED_CHUNK_TOKENS` future tokens (at least one sample); otherwise the batch is one chunk."""
        th = batch.history
        b, t, cs = batch.states.shape
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            same = [torch.equal(v, v[:1].expand_as(v)) for v in (batch.states[:, :th], batch.actions[:, :th - 1],
                                                                  batch.state_mask, batch.action_mask,
                                                                  batch.state_struct, batch.action_struct)]
            if not all(same):
                raise ValueError("shared_history needs the same history (states, actions, masks, structure) in every "
                                 "sample")
        steps = torch.arange(t, device=batch.states.device)
        x_hist = self._embed(batch.states[:1, :th], batch.state_struct[:1], steps[:th], 0, cs)
        x_fut = self._embed(None, batch.state_struct[:1], steps[th:], 0, cs)
        state_mask = batch.state_mask
        if self.step_tokens:
            x_hist, x_fut = self._pool(x_hist, state_mask[:1]), self._pool(x_fut, state_mask[:1])
            state_mask = state_mask.new_ones(b, 1)
        # the history's actions (all but the last, which leads into the first predicted step) are shared: once
        ca = batch.actions.shape[2]
        act = self._embed(batch.actions[:, th - 1:], batch.action_struct[:1], steps[th - 1:], 1, ca)  # one structure
        if self.step_tokens:
            act = self._pool(act, batch.action_mask, actions=True)
        past = None
        if th > 1:
            past = self._embed(batch.actions[:1, :th - 1], batch.action_struct[:1], steps[:th - 1], 1, ca)
            if self.step_tokens:
                past = self._pool(past, batch.action_mask[:1], actions=True)
        hist_act = torch.cat([past, act[:1, :1]], dim=1) if past is not None else act[:1, :1]
        carries, routing = [], []
        for blk in self.blocks:
            x_hist, carry = blk.history_shared(x_hist, hist_act, state_mask, batch.action_mask)
            carries.append(carry)
            if carry[1] is not None:
                routing.append(carry[1].reshape(1, x_hist.shape[2], -1).expand(b, -1, -1))
        whole = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.is_grad_enabled()
        per = b if whole else max(1, self.SHARED_CHUNK_TOKENS // (x_fut.shape[1] * x_fut.shape[2]))
        for i in range(0, b, per):
            sl = slice(i, min(b, i + per))
            n = sl.stop - sl.start
            x = x_fut.expand(n, -1, -1, -1)
            prev = act[sl, :-1]  # the action into each future step: a_{Th-1} .. a_{Th+H-2}
            for blk, carry in zip(self.blocks, carries):
                x = blk.future_shared(x, prev, carry, state_mask[sl], batch.action_mask[sl])
            yield sl, self._channel_logits(x, batch.state_struct[:1], cs), routing

    @torch.no_grad()
    def imagine(self, batch: TrajectoryBatch) -> "OnePassImagination":
        """A closed-loop imagination in the one-pass model: the history of ``batch`` (its first ``Th`` states
        and ``Th - 1`` actions; one sample) is run once, and then each :meth:`OnePassImagination.step` takes
        the action taken in the newest predicted state and returns the state it leads to, continuing every
        block's SSM state by one query step. ``step`` ``j`` returns exactly what :meth:`predict` gives for
        future step ``j`` given the actions stepped so far (the model is causal in the actions), at the cost
        of one step, where asking :meth:`predict` each time would rerun the history and every earlier step.

        Raises:
            ValueError: a batch of more than one sample.
        """
        return OnePassImagination(self, batch)

    def loss(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Eq. (11): soft cross-entropy over bins on the real state channels of future steps."""
        return self.loss_from_logits(self(batch)[0], batch)

    def targets(self, batch: TrajectoryBatch) -> torch.Tensor:
        """``(B, H, Cs)`` in [0, 1]: what the bins encode for the future states (see ``target``)."""
        fut = batch.states[:, batch.history:]
        if not self.delta:
            return fut
        change = fut - batch.states[:, batch.history - 1:batch.history]
        return delta_to_unit(change, self.cfg.delta_eps, self.cfg.delta_range)

    def loss_from_logits(self, logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
        """The loss of eq. (11) from ``forward``'s logits (see :func:`soft_cross_entropy`), on the
        encoding of ``target`` (:meth:`targets`)."""
        return soft_cross_entropy(logits, self.targets(batch), batch.state_mask, self.cfg.bins, self.cfg.hl_gauss_sigma)

    def decode(self, logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
        """Normalised future states ``(B, H, Cs)`` from ``forward``'s logits ``(B, H, Cs, bins)``: the
        expected bin position in [0, 1] (``"absolute"``: the value itself, as the seed's code decodes;
        ``"delta"``: mapped back through :func:`unit_to_delta` to a change, which is added to the last
        observed state)."""
        return self._decode(logits, batch.states[:, batch.history - 1:batch.history])

    def _decode(self, logits: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` with ``last (B, 1, Cs)``, the last observed state (read only for ``"delta"``)."""
        # a (bins, 1) matrix, not a vector: ONNX Runtime runs the product as a GEMM (its matrix-vector
        # MatMul was a tenth of a small student's MPPI cycle)
        u = (torch.softmax(logits.float(), dim=-1) @ self.bin_centers[:, None]).squeeze(-1)
        if not self.delta:
            return u
        return last + unit_to_delta(u, self.cfg.delta_eps, self.cfg.delta_range)

    @torch.no_grad()
    def predict(self, batch: TrajectoryBatch, shared_history: bool = False) -> torch.Tensor:
        """Expected normalised future states ``(B, H, Cs)`` (padding channels are zero); ``shared_history``
        as in :meth:`forward` (decoded chunk by chunk of samples, see :meth:`_shared_chunks`)."""
        if not shared_history:
            logits, _ = self(batch)
            return self.decode(logits, batch) * batch.state_mask[:, None, :]
        last = batch.states[:, batch.history - 1:batch.history]
        parts = [self._decode(logits, last[sl]) * batch.state_mask[sl, None, :]
                 for sl, logits, _ in self._shared_chunks(batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class OnePassImagination:
    """See :meth:`WestWorld.imagine`. ``step(action (1, Ca) normalised) -> (1, Cs)`` the next normalised state
    (padding channels zero); ``steps`` counts the steps taken."""

    def __init__(self, net: WestWorld, batch: TrajectoryBatch):
        if batch.states.shape[0] != 1:
            raise ValueError(f"imagine takes one sample, got a batch of {batch.states.shape[0]}")
        self.net, self.th = net, batch.history
        th, cs = self.th, batch.states.shape[2]
        self.cs, self.ca = cs, batch.actions.shape[2]
        self.state_mask, self.action_mask = batch.state_mask[:1], batch.action_mask[:1]
        self.state_struct, self.action_struct = batch.state_struct[:1], batch.action_struct[:1]
        self.last = batch.states[:1, th - 1:th]
        dev = batch.states.device
        x_hist = net._embed(batch.states[:1, :th], self.state_struct, torch.arange(th, device=dev), 0, cs)
        if net.step_tokens:
            x_hist = net._pool(x_hist, self.state_mask)
        self.mask = self.state_mask.new_ones(1, 1) if net.step_tokens else self.state_mask
        hist_act = batch.actions.new_zeros(1, 1, self.ca, net.cfg.d_model)  # a placeholder: history_shared reads :Th - 1
        if th > 1:
            past = net._embed(batch.actions[:1, :th - 1], self.action_struct, torch.arange(th - 1, device=dev), 1,
                              self.ca)
            if net.step_tokens:
                past = net._pool(past, self.action_mask, actions=True)
                hist_act = hist_act[:, :, :1]
            hist_act = torch.cat([past, hist_act], dim=1)
        elif net.step_tokens:
            hist_act = hist_act[:, :, :1]
        self.static_state = net._static_embed(self.state_struct, 0, cs)
        self.static_action = net._static_embed(self.action_struct, 1, self.ca)
        self.carries = []
        for blk in net.blocks:
            x_hist, carry = blk.history_shared(x_hist, hist_act, self.mask, self.action_mask)
            self.carries.append(carry)
        self.steps = 0

    @torch.no_grad()
    def step(self, action: torch.Tensor) -> torch.Tensor:
        net, j = self.net, self.steps
        dev = self.last.device
        t = torch.tensor([self.th + j], device=dev)
        x = net._embed(None, self.state_struct, t, 0, self.cs, self.static_state)  # the query of future step j
        a = net._embed(action.reshape(1, 1, self.ca).to(self.last.dtype), self.action_struct, t - 1, 1, self.ca,
                       self.static_action)
        if net.step_tokens:
            x, a = net._pool(x, self.state_mask), net._pool(a, self.action_mask, actions=True)
        for k, blk in enumerate(net.blocks):
            st, g = self.carries[k]
            h = blk._attend(x, a, self.mask, self.action_mask, first_has_action=True)
            x, _, st = blk._along_time(h, None, state=st, gates=g, return_state=True)
            self.carries[k] = (st, g)
        self.steps += 1
        logits = net._channel_logits(x, self.state_struct, self.cs)  # (1, 1, Cs, bins)
        return (net._decode(logits, self.last) * self.state_mask[:, None, :])[:, 0]
