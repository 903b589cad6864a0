"""TrajWorld: the temporal-variate attention baseline of seed 003 (sec. 5, App. D.1).

After Yin et al., ICML 2025, "Trajectory World Models for Heterogeneous Environments" (the
seed's reference [46]); written from the paper, not from its JAX code.

Tokens. Every scalar channel at every step is a token, for the state channels ``s_t`` and
the action channels ``a_t`` alike. A value (min-max normalised to [0, 1], see
:mod:`ws_worldmodel.data`) is encoded as HL-Gauss soft labels over ``bins`` uniform bins
(:func:`~ws_worldmodel.westworld.hl_gauss`) and projected to ``d_model``; a projected
sinusoidal timestep, a projected sinusoidal channel index (counted separately for states and
actions) and a learned modality embedding (state / action) are added. No table bounds the
number of steps or channels.

Block (pre-norm residuals): variate attention across all tokens of one step (state and
action channels; padded channels are masked as keys), then temporal attention along the
steps of each channel (causal), then an MLP. A linear head gives ``bins`` logits per token.

Prediction. The output at the token of state channel ``c`` at step ``t`` predicts
``s_{t+1, c}`` (teacher forcing). Step ``t`` holds ``a_t``, the action leading from ``s_t``
to ``s_{t+1}``, so the prediction of ``s_{t+1}`` reads ``s_{<=t}`` and ``a_{<=t}`` and never
``a_{t+1}`` or later. Rollouts are autoregressive: the expected value over the bin centres
is fed back as the next state. Variate attention stays inside one step and temporal
attention is causal, so a rollout step only needs the new step's tokens plus the temporal
attention keys and values of earlier steps: :meth:`TrajWorld.predict` keeps them in a KV
cache (the seed's Table 12 protocol) and can recompute the full prefix instead.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from .westworld import TrajectoryBatch, hl_gauss, sinusoidal, soft_cross_entropy

__all__ = ["TrajWorldConfig", "TrajWorld", "CachedSelfAttention"]


@dataclasses.dataclass
class TrajWorldConfig:
    """Model size. The seed's App. D.1 values are lost in its text; defaults are CPU-sized.

    Attributes:
        d_model, n_heads, n_blocks: width, attention heads, temporal-variate blocks.
        bins: categorical bins per scalar.
        hl_gauss_sigma: HL-Gauss width in bins.
        mlp_hidden: hidden width of each block's GELU MLP.
        dropout: dropout in attention and MLPs.
    """

    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 2
    bins: int = 64
    hl_gauss_sigma: float = 0.75
    mlp_hidden: int = 128
    dropout: float = 0.0

    def __post_init__(self):
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(f"d_model ({self.d_model}) must be even and divisible by n_heads ({self.n_heads})")


def add_token_layers(module: nn.Module, cfg) -> None:
    """Give a discretised trajectory model its token embedding and output layers: the value
    projection of HL-Gauss labels, projected sinusoidal timestep and channel encodings, a
    state/action modality embedding, the output norm, the ``bins``-logit head and the bin
    centres used for decoding (shared by TrajWorld and TDM)."""
    d = cfg.d_model
    module.value_proj = nn.Linear(cfg.bins, d)
    module.time_proj = nn.Linear(d, d)
    module.chan_proj = nn.Linear(d, d)
    module.modality = nn.Embedding(2, d)
    module.ln_out = nn.LayerNorm(d)
    module.head = nn.Linear(d, cfg.bins)
    module.register_buffer("bin_centers", (torch.arange(cfg.bins, dtype=torch.float32) + 0.5) / cfg.bins)


class CachedSelfAttention(nn.Module):
    """Multi-head self-attention over ``(N, L, d)`` with an optional key/value cache.

    ``cache`` is a dict (one per layer, empty at the start); the keys and values of the new
    tokens are appended to it, and the queries attend to the cached ones as well.
    ``attn_mask`` (bool, true = may attend) broadcasts to ``(N, heads, L, past + L)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: dict | None = None) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, length, d))


def _mlp(cfg) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.mlp_hidden, cfg.d_model), nn.Dropout(cfg.dropout))


class TemporalVariateBlock(nn.Module):
    """Variate attention within a step, causal temporal attention per channel, MLP (pre-norm)."""

    def __init__(self, cfg: TrajWorldConfig):
        super().__init__()
        d = cfg.d_model
        self.ln_var = nn.LayerNorm(d)
        self.var_attn = CachedSelfAttention(d, cfg.n_heads, cfg.dropout)
        self.ln_time = nn.LayerNorm(d)
        self.time_attn = CachedSelfAttention(d, cfg.n_heads, cfg.dropout)
        self.ln_mlp = nn.LayerNorm(d)
        self.mlp = _mlp(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``x (B, n, C, d)`` (``n`` new steps), ``key_mask (B, C)`` true for real channels -> ``(B, n, C, d)``."""
        b, n, c, d = x.shape
        # variate attention: all channels of one step; padded channels are never keys
        h = x.reshape(b * n, c, d)
        mask = key_mask[:, None, None, :].expand(b, n, 1, c).reshape(b * n, 1, 1, c)
        h = h + self.var_attn(self.ln_var(h), attn_mask=mask)
        # temporal attention: per channel along the steps, causal (past steps from the cache)
        h = h.reshape(b, n, c, d).transpose(1, 2).reshape(b * c, n, d)
        past = cache["k"].shape[2] if cache and "k" in cache else 0
        if past and n > 1:
            causal = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(diagonal=past)
            h = h + self.time_attn(self.ln_time(h), attn_mask=causal, cache=cache)
        else:
            h = h + self.time_attn(self.ln_time(h), is_causal=not past and n > 1, cache=cache)
        h = h + self.mlp(self.ln_mlp(h))
        return h.reshape(b, c, n, d).transpose(1, 2)


class TrajWorld(nn.Module):
    """TrajWorld baseline (Yin et al., ICML 2025; seed 003 ref. [46]): temporal-variate Transformer.

    ``forward(batch)`` -> logits ``(B, T-1, Cs, bins)``: teacher-forced predictions of
    ``s_1 .. s_{T-1}`` (row ``r`` predicts ``s_{r+1}`` from ``s_{<=r}``, ``a_{<=r}``).
    ``loss(batch)`` is the HL-Gauss cross-entropy on the real state channels of the future
    steps ``t >= history``. ``predict(batch)`` -> ``(B, H, Cs)``, ``H = T - history``: an
    autoregressive rollout from the history states (KV cache optional). See the module
    docstring for the tokens and the block.
    """

    def __init__(self, cfg: TrajWorldConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TrajWorldConfig()
        add_token_layers(self, cfg)
        self.blocks = nn.ModuleList(TemporalVariateBlock(cfg) for _ in range(cfg.n_blocks))
        self.name = "trajworld"

    #: largest number of decoded tokens (samples x predicted steps x state and action channels) one chunk of a
    #: shared-history rollout holds (:meth:`predict`). Each decoded step grows every chunk's KV cache; small
    #: chunks keep it cache-sized, large ones keep a step's operators busy (``bench/bench_world_models.py`` times
    #: the whole batch in one chunk beside it: docs/westworld.md)
    SHARED_CHUNK_TOKENS = 32768

    def _embed(self, values: torch.Tensor, steps: torch.Tensor, modality: int) -> torch.Tensor:
        """``values (B, n, C)`` at ``steps (n,)`` -> tokens ``(B, n, C, d)``."""
        d = self.cfg.d_model
        time = self.time_proj(sinusoidal(steps, d))[None, :, None]
        chan = self.chan_proj(sinusoidal(torch.arange(values.shape[2], device=values.device), d))[None, None]
        val = self.value_proj(hl_gauss(values, self.cfg.bins, self.cfg.hl_gauss_sigma))
        return val + time + chan + self.modality.weight[modality]

    def _run(self, batch: TrajectoryBatch, states: torch.Tensor, actions: torch.Tensor, first_step: int,
             caches: list[dict] | None = None) -> torch.Tensor:
        """Logits ``(B, n, Cs, bins)`` for ``states (B, n, Cs)``, ``actions (B, n, Ca)`` of steps ``first_step..``."""
        n, cs = states.shape[1], states.shape[2]
        steps = torch.arange(first_step, first_step + n, device=states.device)
        x = torch.cat([self._embed(states * batch.state_mask[:, None], steps, 0),
                       self._embed(actions * batch.action_mask[:, None], steps, 1)], dim=2)
        key_mask = torch.cat([batch.state_mask, batch.action_mask], dim=1)
        for k, blk in enumerate(self.blocks):
            x = blk(x, key_mask, None if caches is None else caches[k])
        return self.head(self.ln_out(x[:, :, :cs]))

    def _decode(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Expected value over the bin centres, ``(B, Cs, bins) -> (B, Cs)``, zero on padding."""
        return (torch.softmax(logits, dim=-1) @ self.bin_centers) * mask

    def forward(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Teacher-forced logits ``(B, T-1, Cs, bins)``; row ``r`` predicts ``s_{r+1}``."""
        return self._run(batch, batch.states[:, :-1], batch.actions[:, :-1], 0)

    def loss(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Soft-label cross-entropy on the real state channels of steps ``history .. T-1``."""
        th = batch.history
        return soft_cross_entropy(self(batch)[:, th - 1:], batch.states[:, th:], batch.state_mask,
                                  self.cfg.bins, self.cfg.hl_gauss_sigma)

    @torch.no_grad()
    def predict(self, batch: TrajectoryBatch, use_cache: bool = True, shared_history: bool = False) -> torch.Tensor:
        """Autoregressive rollout ``(B, H, Cs)``: row ``j`` is ``s_{history + j}`` (padding is 0).

        Reads ``states[:, :history]`` and ``actions[:, :T-1]`` only. ``use_cache`` keeps the
        temporal attention keys/values of past steps; False recomputes the whole prefix at
        every step (the same numbers, slower). ``shared_history`` (with the cache): every sample
        has the same history (states ``[:, :Th]``, actions ``[:, :Th - 1]``, masks; MPPI's ``K``
        futures from one past), so steps ``0 .. Th - 2`` run once and their keys and values are
        copied to every sample (the same predictions), and a large batch is decoded in chunks of samples of
        at most :attr:`SHARED_CHUNK_TOKENS` decoded tokens each (every chunk's KV cache stays cache-sized; the
        same predictions). Raises ValueError if the histories differ.
        """
        th, t_len = batch.history, batch.states.shape[1]
        smask = batch.state_mask
        states = batch.states[:, :th] * smask[:, None]
        preds = []
        if use_cache and shared_history and th > 1 and states.shape[0] > 1:
            if not all(torch.equal(v, v[:1].expand_as(v)) for v in (batch.states[:, :th], batch.actions[:, :th - 1],
                                                                     batch.state_mask, batch.action_mask)):
                raise ValueError("shared_history needs the same history (states, actions, masks) in every sample")
            hist = [{} for _ in self.blocks]
            fields = [f.name for f in dataclasses.fields(batch)[:6]]
            one = TrajectoryBatch(*(getattr(batch, f)[:1] for f in fields), th)
            self._run(one, states[:1, :th - 1], batch.actions[:1, :th - 1], 0, hist)
            b = states.shape[0]
            tokens = (t_len - th) * (states.shape[2] + batch.actions.shape[2])  # per sample, decoded steps
            per = b if torch.jit.is_tracing() else max(1, self.SHARED_CHUNK_TOKENS // max(1, tokens))
            parts = []
            for i in range(0, b, per):  # chunks of samples: each keeps its own, cache-sized KV cache
                sl = slice(i, min(b, i + per))
                n = sl.stop - sl.start
                sub = TrajectoryBatch(*(getattr(batch, f)[sl] for f in fields), th)
                # (C, heads, Th - 1, dh) -> (n * C, ...), sample-major like the batch
                caches = [{"k": c["k"].repeat(n, 1, 1, 1), "v": c["v"].repeat(n, 1, 1, 1)} for c in hist]
                chunk = []
                logits = self._run(sub, states[sl, th - 1:], sub.actions[:, th - 1:th], th - 1, caches)[:, -1]
                chunk.append(self._decode(logits, sub.state_mask))
                for t in range(th, t_len - 1):
                    logits = self._run(sub, chunk[-1][:, None], sub.actions[:, t:t + 1], t, caches)[:, -1]
                    chunk.append(self._decode(logits, sub.state_mask))
                parts.append(torch.stack(chunk, dim=1))
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        elif use_cache:
            caches = [{} for _ in self.blocks]
            logits = self._run(batch, states, batch.actions[:, :th], 0, caches)[:, -1]
            preds.append(self._decode(logits, smask))
            for t in range(th, t_len - 1):
                logits = self._run(batch, preds[-1][:, None], batch.actions[:, t:t + 1], t, caches)[:, -1]
                preds.append(self._decode(logits, smask))
        else:
            for t in range(th - 1, t_len - 1):  # predict s_{t+1} from steps 0..t
                logits = self._run(batch, states, batch.actions[:, :t + 1], 0)[:, -1]
                preds.append(self._decode(logits, smask))
                states = torch.cat([states, preds[-1][:, None]], dim=1)
        return torch.stack(preds, dim=1)
