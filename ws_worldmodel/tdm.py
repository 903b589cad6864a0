"""TDM: the Gato-style generalist dynamics model baseline of seed 003 (sec. 5, App. D.1).

After Schubert et al., 2023, "A Generalist Dynamics Model for Control" (the seed's
reference [33]), which builds on Gato (Reed et al., 2022); written from the papers.

Sequence. Each step contributes its state channels and then its action channels,
``[s_{t,0} .. s_{t,Cs-1}, a_{t,0} .. a_{t,Ca-1}]``, and the steps ``t = 0 .. T-1`` are
concatenated into one long sequence (the last step's actions are dropped: nothing follows
them). Tokens are embedded as in :mod:`ws_worldmodel.trajworld`: HL-Gauss soft labels of the
value projected to ``d_model``, plus a projected sinusoidal timestep, a projected sinusoidal
channel index and a modality embedding; these fix every token's place in the sequence, so
no table bounds its length. One causal pre-norm Transformer runs over the sequence and every
token's output predicts the value of the next token; only state tokens are targets.

Mixed-size batches. Each sample is laid out on the batch's padded grid (``Cs`` state and
``Ca`` action slots per step), so the real tokens keep their order and the padding slots lie
between them. Padding tokens are masked as attention keys, and a token is predicted from the
output of the previous **real** token of its sample, so a sample's predictions do not depend
on the padding or on the other samples in the batch.

:meth:`TDM.predict` decodes token by token (the expected value over the bin centres of each
state token is fed back), with a key/value cache (the seed's Table 12 protocol) or by
recomputing the whole prefix.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .trajworld import CachedSelfAttention, TrajWorldConfig, _mlp, add_token_layers
from .westworld import TrajectoryBatch, hl_gauss, sinusoidal, soft_cross_entropy

__all__ = ["TDMConfig", "TDM"]


@dataclasses.dataclass
class TDMConfig(TrajWorldConfig):
    """Model size of TDM: the fields of :class:`~ws_worldmodel.trajworld.TrajWorldConfig`
    (``n_blocks`` counts Transformer blocks over the flattened sequence)."""


class _Block(nn.Module):
    """Pre-norm causal self-attention and MLP."""

    def __init__(self, cfg: TDMConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CachedSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = _mlp(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask=attn_mask, cache=cache)
        return x + self.mlp(self.ln_mlp(x))


class TDM(nn.Module):
    """TDM baseline (Schubert et al. 2023; seed 003 ref. [33]): one causal Transformer over flattened tokens.

    ``forward(batch)`` -> logits ``(B, T-1, Cs, bins)``: teacher-forced predictions of
    ``s_1 .. s_{T-1}``, each state token predicted from all tokens before it (``s_{t+1,c}``
    reads ``s_{<=t}``, ``a_{<=t}`` and ``s_{t+1,<c}``). ``loss(batch)`` is the HL-Gauss
    cross-entropy on the real state channels of steps ``t >= history``. ``predict(batch)`` ->
    ``(B, H, Cs)``, ``H = T - history``: token-by-token autoregressive decoding (KV cache
    optional). See the module docstring for the sequence layout and padding.
    """

    def __init__(self, cfg: TDMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TDMConfig()
        add_token_layers(self, cfg)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_blocks))
        self.name = "tdm"

    # ----------------------------------------------------------------- layout
    @staticmethod
    def _layout(batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened values and realness ``(B, T*K)``, ``K = Cs + Ca`` slots per step."""
        b, t = batch.states.shape[:2]
        vals = torch.cat([batch.states * batch.state_mask[:, None], batch.actions * batch.action_mask[:, None]], dim=2)
        real = torch.cat([batch.state_mask, batch.action_mask], dim=1)[:, None].expand(b, t, -1)
        return vals.reshape(b, -1), real.reshape(b, -1)

    def _position(self, pos: torch.Tensor, cs: int, ca: int) -> torch.Tensor:
        """Timestep + channel + modality embedding of flat positions ``pos (n,)`` -> ``(n, d)``."""
        d = self.cfg.d_model
        step, slot = pos // (cs + ca), pos % (cs + ca)
        is_action = slot >= cs
        chan = torch.where(is_action, slot - cs, slot)
        return (self.time_proj(sinusoidal(step, d)) + self.chan_proj(sinusoidal(chan, d))
                + self.modality(is_action.long()))

    def _encode(self, vals: torch.Tensor, real: torch.Tensor, first: int, cs: int, ca: int,
                caches: list[dict] | None = None, past_real: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``(B, n, d)`` of tokens ``vals (B, n)`` at flat positions ``first..``.

        ``real (B, n)`` marks real tokens; ``past_real (B, first)`` those already in ``caches``.
        """
        n = vals.shape[1]
        pos = torch.arange(first, first + n, device=vals.device)
        x = self.value_proj(hl_gauss(vals, self.cfg.bins, self.cfg.hl_gauss_sigma)) + self._position(pos, cs, ca)
        keys = real if past_real is None else torch.cat([past_real, real], dim=1)  # (B, first + n)
        causal = torch.ones(n, first + n, dtype=torch.bool, device=vals.device).tril(diagonal=first)
        mask = causal[None, None] & keys[:, None, None, :]
        for k, blk in enumerate(self.blocks):
            x = blk(x, mask, None if caches is None else caches[k])
        return self.ln_out(x)

    @staticmethod
    def _previous_real(real: torch.Tensor) -> torch.Tensor:
        """For every position, the index of the last real token before it (0 if none): ``(B, L)``."""
        idx = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)

    # ---------------------------------------------------------------- model API
    def forward(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Teacher-forced logits ``(B, T-1, Cs, bins)``; row ``r`` predicts ``s_{r+1}``."""
        b, t, cs = batch.states.shape
        ca = batch.actions.shape[2]
        k = cs + ca
        vals, real = self._layout(batch)
        vals, real = vals[:, :t * k - ca], real[:, :t * k - ca]  # the last step's actions predict nothing
        h = self._encode(vals, real, 0, cs, ca)
        # state slots of steps 1..T-1, each read from the previous real token's output
        slots = (torch.arange(1, t, device=h.device)[:, None] * k + torch.arange(cs, device=h.device)).reshape(-1)
        src = self._previous_real(real)[:, slots]  # (B, (T-1) * Cs)
        out = torch.gather(h, 1, src[..., None].expand(-1, -1, h.shape[2]))
        return self.head(out).reshape(b, t - 1, cs, -1)

    def loss(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Soft-label cross-entropy on the real state channels of steps ``history .. T-1``."""
        th = batch.history
        return soft_cross_entropy(self(batch)[:, th - 1:], batch.states[:, th:], batch.state_mask,
                                  self.cfg.bins, self.cfg.hl_gauss_sigma)

    @torch.no_grad()
    def predict(self, batch: TrajectoryBatch, use_cache: bool = True) -> torch.Tensor:
        """Token-by-token rollout ``(B, H, Cs)``: row ``j`` is ``s_{history + j}`` (padding is 0).

        Reads ``states[:, :history]`` and ``actions[:, :T-1]`` only. ``use_cache`` keeps every
        layer's keys and values; False recomputes the whole prefix for every token (the same
        numbers, slower).
        """
        th = batch.history
        b, t, cs = batch.states.shape
        ca = batch.actions.shape[2]
        k = cs + ca
        vals, real = self._layout(batch)
        end = (t - 1) * k + cs  # one past the last state slot of step T-1
        vals, real = vals[:, :end].clone(), real[:, :end]
        first = th * k  # the prefix: every token of steps 0..th-1
        preds = vals.new_zeros(b, t - th, cs)
        caches = [{} for _ in self.blocks] if use_cache else None
        h = self._encode(vals[:, :first], real[:, :first], 0, cs, ca, caches)
        last = h[torch.arange(b), self._previous_real(real)[:, first]]  # (B, d): output of the last real token
        for p in range(first, end):
            step, slot = divmod(p, k)
            if slot < cs:  # a state token: decode it from the previous real token's output
                value = (torch.softmax(self.head(last), dim=-1) @ self.bin_centers) * batch.state_mask[:, slot]
                preds[:, step - th, slot] = value
                vals[:, p] = value
            if p == end - 1:
                break
            if use_cache:
                h = self._encode(vals[:, p:p + 1], real[:, p:p + 1], p, cs, ca, caches, real[:, :p])[:, 0]
            else:
                h = self._encode(vals[:, :p + 1], real[:, :p + 1], 0, cs, ca)[:, -1]
            last = torch.where(real[:, p, None], h, last)
        return preds
