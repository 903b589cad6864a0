"""MLPEnsemble: the probabilistic-ensemble baseline dynamics model of seed 003 (Appendix D.1).

An ensemble of ``E`` MLPs, each a diagonal Gaussian over the next state given the current
state and action, trained by Gaussian negative log-likelihood on bootstrapped data; the
``elites`` members with the lowest validation error are used for prediction (PETS-style,
Chua et al. 2018). Inputs are normalised with training-split statistics; the output is the
normalised state *difference* ``s_{t+1} - s_t``. Channels that the dynamics is invariant to
(the root x position of a planar walker) are left out of the input.

Shapes: ``state (B, nx)``, ``action (B, nu)``, ``next_state (B, nx)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ws_sim.channels import Channel, check_channels_match

__all__ = ["MLPEnsembleConfig", "MLPEnsemble", "invariant_input_channels", "PaddedMLPEnsembleConfig",
           "PaddedMLPEnsemble"]


@dataclasses.dataclass
class MLPEnsembleConfig:
    """Architecture and training settings.

    Attributes:
        ensemble_size: members ``E``.
        elites: members used at prediction (lowest validation MSE).
        hidden: width of each hidden layer.
        layers: number of hidden layers (four in the seed).
        lr, weight_decay, batch_size: Adam settings.
        epochs: maximum passes over the training data.
        patience: epochs without validation improvement before stopping early.
        max_steps_per_epoch: cap on gradient steps per epoch (0: a full pass).
        lr_schedule: ``"constant"`` (``lr`` throughout) or ``"cosine"``: annealed per gradient step
            from ``lr`` to ``lr_min`` over ``epochs`` (SGDR without restarts, Loshchilov and Hutter
            2017), so a run planned for ``epochs`` ends at the small step size.
        lr_min: the cosine schedule's final learning rate.
    """

    ensemble_size: int = 5
    elites: int = 3
    hidden: int = 200
    layers: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    epochs: int = 100
    patience: int = 5
    max_steps_per_epoch: int = 400
    lr_schedule: str = "constant"
    lr_min: float = 1e-5

    def __post_init__(self):
        if not (1 <= self.elites <= self.ensemble_size):
            raise ValueError(f"elites ({self.elites}) must be in 1..ensemble_size ({self.ensemble_size})")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: 'constant' or 'cosine'")
        if not (0.0 <= self.lr_min <= self.lr):
            raise ValueError(f"lr_min ({self.lr_min}) must be in [0, lr ({self.lr})]")


def invariant_input_channels(channels: Sequence[Channel]) -> list[int]:
    """Indices of state channels the dynamics does not depend on (horizontal root position)."""
    out = []
    for i, c in enumerate(channels):
        if c.kind == "qpos" and (c.joint == "rootx" or c.name.endswith("/x") or c.name.endswith("/y")) and c.unit == "m":
            out.append(i)
    return out


class _EnsembleLinear(nn.Module):
    def __init__(self, e: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(e, fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(e, 1, fan_out))
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.trunc_normal_(self.weight, std=bound, a=-2 * bound, b=2 * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (E, B, in)
        return torch.baddbmm(self.bias, x, self.weight)


class MLPEnsemble(nn.Module):
    """Probabilistic MLP ensemble over next states.

    Args:
        state_channels, action_channels: the system's channel metadata.
        config: :class:`MLPEnsembleConfig`.
        stats: normalisation statistics ``{"in_mean", "in_std", "out_mean", "out_std"}``
            (arrays), usually from :meth:`fit_normalisation`.
    """

    def __init__(self, state_channels: Sequence[Channel], action_channels: Sequence[Channel],
                 config: MLPEnsembleConfig | None = None, stats: dict | None = None):
        super().__init__()
        self.config = config or MLPEnsembleConfig()
        self.state_channels = list(state_channels)
        self.action_channels = list(action_channels)
        self.state_dim = len(self.state_channels)
        self.action_dim = len(self.action_channels)
        drop = set(invariant_input_channels(self.state_channels))
        self.register_buffer("input_state_idx", torch.tensor([i for i in range(self.state_dim) if i not in drop]))
        n_in = len(self.input_state_idx) + self.action_dim
        e, h = self.config.ensemble_size, self.config.hidden
        dims = [n_in] + [h] * self.config.layers
        self.hidden_layers = nn.ModuleList(_EnsembleLinear(e, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = _EnsembleLinear(e, h, 2 * self.state_dim)
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.state_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.state_dim), -10.0))
        for k, n in (("in_mean", n_in), ("in_std", n_in), ("out_mean", self.state_dim), ("out_std", self.state_dim)):
            self.register_buffer(k, torch.zeros(n) if k.endswith("mean") else torch.ones(n))
        self.register_buffer("elite_idx", torch.arange(self.config.elites))
        if stats is not None:
            self.set_normalisation(stats)
        self.name = "mlp_ensemble"

    # --- normalisation -------------------------------------------------------------
    def model_inputs(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.cat([state[..., self.input_state_idx], action], dim=-1)

    @staticmethod
    def fit_normalisation(model_in: np.ndarray, delta: np.ndarray) -> dict:
        """Mean/std of inputs and state differences on the training split (std floored at 1e-6)."""
        return {"in_mean": model_in.mean(0), "in_std": np.maximum(model_in.std(0), 1e-6),
                "out_mean": delta.mean(0), "out_std": np.maximum(delta.std(0), 1e-6)}

    def set_normalisation(self, stats: dict) -> None:
        for k in ("in_mean", "in_std", "out_mean", "out_std"):
            getattr(self, k).copy_(torch.as_tensor(np.asarray(stats[k]), dtype=torch.float32))

    # --- forward -------------------------------------------------------------------
    def forward(self, x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_norm (E, B, n_in)`` -> normalised delta mean and log-variance ``(E, B, nx)``."""
        h = x_norm
        for layer in self.hidden_layers:
            h = F.silu(layer(h))
        mean, logvar = self.head(h).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def nll_loss(self, x_norm: torch.Tensor, y_norm: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL per member, summed over members (plus the log-variance bound penalty)."""
        mean, logvar = self(x_norm)
        nll = (((mean - y_norm) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def member_mse(self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """Per-member MSE of the normalised delta prediction, shape ``(E,)``."""
        x = (self.model_inputs(state, action) - self.in_mean) / self.in_std
        y = (next_state - state - self.out_mean) / self.out_std
        mean, _ = self(x.expand(self.config.ensemble_size, -1, -1))
        return ((mean - y) ** 2).mean(dim=(1, 2))

    @torch.no_grad()
    def predict(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Next state: the elites' mean prediction. ``(B, nx), (B, nu) -> (B, nx)``."""
        x = (self.model_inputs(state, action) - self.in_mean) / self.in_std
        w = [layer.weight[self.elite_idx] for layer in self.hidden_layers]
        b = [layer.bias[self.elite_idx] for layer in self.hidden_layers]
        h = x.expand(len(self.elite_idx), -1, -1)
        for wi, bi in zip(w, b):
            h = F.silu(torch.baddbmm(bi, h, wi))
        out = torch.baddbmm(self.head.bias[self.elite_idx], h, self.head.weight[self.elite_idx])
        mean = out[..., : self.state_dim].mean(0)
        return state + mean * self.out_std + self.out_mean

    # --- fused H-step rollout ------------------------------------------------------
    def _cache_key(self) -> tuple:
        """Identifies the weights, statistics and elite set the prepared tensors were made from:
        storage and in-place version of each (``load_state_dict``, optimiser steps, ``copy_`` and
        ``.to()`` all change one of them)."""
        ts = [p for layer in (*self.hidden_layers, self.head) for p in (layer.weight, layer.bias)]
        ts += [self.elite_idx, self.input_state_idx, self.in_mean, self.in_std, self.out_mean, self.out_std]
        # (an inference tensor has no version counter: it can only change inside inference mode)
        return tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device) for t in ts)

    def _elite_tensors(self) -> dict:
        """The elites' weights stacked as ``(E, in, out)`` contiguous tensors, the head cut to
        its mean columns, and the normalisation split into state and action parts: prepared
        once and kept until a weight, statistic or the elite set changes."""
        key = self._cache_key()
        cache = getattr(self, "_fast_cache", None)
        if cache is not None and cache["key"] == key:
            return cache
        with torch.inference_mode():
            elites = self.elite_idx.clone()
            idx = self.input_state_idx.clone()
            ns, nx = int(idx.numel()), self.state_dim
            contiguous = ns > 0 and bool(torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + ns,
                                                                        device=idx.device)))
            cache = {
                "key": key,
                "w": [layer.weight[elites].contiguous() for layer in self.hidden_layers],
                "b": [layer.bias[elites].contiguous() for layer in self.hidden_layers],
                # only the mean half of the head is read by predict: its columns are computed
                # alone (same dot products, same values)
                "wh": self.head.weight[elites][..., :nx].contiguous(),
                "bh": self.head.bias[elites][..., :nx].contiguous(),
                "state_slice": slice(int(idx[0]), int(idx[0]) + ns) if contiguous else None,
                "state_idx": idx,
                "ns": ns,
                "in_mean_s": self.in_mean[:ns].clone(), "in_std_s": self.in_std[:ns].clone(),
                "in_mean_a": self.in_mean[ns:].clone(), "in_std_a": self.in_std[ns:].clone(),
                "out_mean": self.out_mean.clone(), "out_std": self.out_std.clone(),
            }
            # the hidden layers and the head in bfloat16, for rollout(precision="bfloat16")
            cache["lp"] = {"w": [w.to(torch.bfloat16) for w in cache["w"]], "b": [b.to(torch.bfloat16) for b in cache["b"]],
                           "wh": cache["wh"].to(torch.bfloat16), "bh": cache["bh"].to(torch.bfloat16)}
        self._fast_cache = cache
        return cache

    def __getstate__(self):  # the prepared tensors are rebuilt on demand, never pickled or deep-copied
        state = self.__dict__.copy()
        state.pop("_fast_cache", None)
        return state

    @torch.inference_mode()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor, precision: str = "float32",
                disagreement: torch.Tensor | None = None) -> torch.Tensor:
        """``H`` steps of :meth:`predict` at once, with the same result (the same operations
        on the same numbers, in the same order).

        Args:
            state: ``(nx,)`` (or ``(1, nx)``) one start state for every sequence, or ``(K, nx)``.
            actions: ``(K, H, nu)``.
            precision: ``"float32"`` (exactly :meth:`predict`) or ``"bfloat16"``: the hidden
                layers and the head run in bfloat16 (8 significant bits; the normalised inputs are
                rounded to it too) while the state, its normalisation and the sum of the predicted
                changes stay in the inputs' float32. On a CPU with AVX512-BF16 or AMX, and on GPUs,
                a bfloat16 matmul runs about twice as fast; the predicted change per step differs by
                about 1 % of its size (``test_fast_ensemble.py`` bounds it; docs/control.md
                measures what it does to MPPI's reward).
            disagreement: an optional ``(K, H)`` float32 tensor filled with the elites'
                disagreement at each step: the variance across elites of the predicted change,
                in the normalised units the model was trained in (each state dimension's change
                divided by its std over the training data), averaged over the dimensions. It is
                near the model's one-step error where the data were dense and grows where they
                were thin (the epistemic term of PETS, Chua et al. 2018; MOPO's penalty, Yu et
                al. 2020). The returned states are unchanged by asking for it.

        Returns:
            ``(K, H, nx)``: row ``t`` is the state after ``actions[:, t]``.

        Raises:
            ValueError: a precision other than the two, or a ``state`` of another shape.

        The elites run as one batched matmul per layer on weights stacked once
        (:meth:`_elite_tensors`); the action normalisation for the whole horizon is one
        operation; each step writes into preallocated buffers, with no per-step indexing of
        the weights, no concatenation and no log-variance columns.
        """
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        k, h, nu = actions.shape
        c = self._elite_tensors()
        w0 = c["w"][0]
        if actions.dtype != w0.dtype or actions.device != w0.device or nu != self.action_dim:
            if precision != "float32" or disagreement is not None:
                raise ValueError(f"precision {precision!r} and disagreement need float32 actions of "
                                 f"{self.action_dim} values on the model's device, got {actions.dtype} {tuple(actions.shape)} on {actions.device}")
            return self._rollout_stepwise(state, actions)
        low = precision == "bfloat16"
        mats = c["lp"] if low else c
        nx, ns = self.state_dim, c["ns"]
        s = state.to(actions.dtype)
        s = s.expand(k, -1) if s.dim() == 1 or (s.dim() == 2 and s.shape[0] == 1) else s
        if s.shape != (k, nx):
            raise ValueError(f"state must be ({nx},) or ({k}, {nx}), got {tuple(state.shape)}")
        if disagreement is not None and (disagreement.shape != (k, h) or disagreement.dtype != torch.float32):
            raise ValueError(f"disagreement must be a float32 ({k}, {h}) tensor, got {disagreement.dtype} "
                             f"{tuple(disagreement.shape)}")
        a_norm = (actions - c["in_mean_a"]) / c["in_std_a"]  # elementwise: as predict's normalisation
        out = actions.new_empty(k, h, nx)
        x = actions.new_empty(k, ns + nu)
        x_s, x_a = x[:, :ns], x[:, ns:]
        e = w0.shape[0]
        dt = torch.bfloat16 if low else actions.dtype
        bufs = [actions.new_empty(e, k, w.shape[2], dtype=dt) for w in c["w"]]
        # with disagreement asked, every step's elite predictions are kept for one variance at the end
        heads = actions.new_empty(h if disagreement is not None else 1, e, k, nx, dtype=dt)
        if low:  # the bfloat16 layers read a bfloat16 copy of the inputs, the actions' part cast once
            x_low = actions.new_empty(k, ns + nu, dtype=dt)
            x_low_s, x_low_a, a_low = x_low[:, :ns], x_low[:, ns:], a_norm.to(dt)
        else:
            x_low = x
        sl, idx = c["state_slice"], c["state_idx"]
        im_s, is_s, om, os_ = c["in_mean_s"], c["in_std_s"], c["out_mean"], c["out_std"]
        for t in range(h):
            torch.sub(s[:, sl] if sl is not None else s[:, idx], im_s, out=x_s)
            if low:
                torch.div(x_s, is_s, out=x_low_s)
                x_low_a.copy_(a_low[:, t])
            else:
                x_s.div_(is_s)
                x_a.copy_(a_norm[:, t])
            z = x_low.expand(e, -1, -1)
            for wi, bi, buf in zip(mats["w"], mats["b"], bufs):
                z = F.silu(torch.baddbmm(bi, z, wi, out=buf), inplace=True)
            head = heads[t if disagreement is not None else 0]
            torch.baddbmm(mats["bh"], z, mats["wh"], out=head)
            change = head.sum(0, dtype=torch.float32).div_(e) if low else head.mean(0)
            s = torch.add(s, change.mul_(os_), out=out[:, t]).add_(om)
        if disagreement is not None:  # (torch's var over a middle axis is 30x slower than this)
            hf = heads.float()
            torch.mean(hf.sub(hf.mean(1, keepdim=True)).square_(), dim=(1, 3), out=disagreement.T)
        return out

    @torch.no_grad()
    def _rollout_stepwise(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The reference: :meth:`predict` called once per step."""
        k, h, _ = actions.shape
        s = state.to(actions.dtype)
        s = s.expand(k, -1) if s.dim() == 1 else s
        out = actions.new_empty(k, h, self.state_dim)
        for t in range(h):
            s = self.predict(s, actions[:, t])
            out[:, t] = s
        return out

    def check_matches(self, state_channels: Sequence[Channel], action_channels: Sequence[Channel],
                      what: str = "model") -> None:
        check_channels_match(state_channels, self.state_channels, f"{what} state")
        check_channels_match(action_channels, self.action_channels, f"{what} action")


@dataclasses.dataclass
class PaddedMLPEnsembleConfig:
    """The multi-system MLPEnsemble baseline of seed 003 (App. D.1): states and actions are
    zero-padded to fixed sizes before concatenation.

    Attributes:
        max_state_dim, max_action_dim: the fixed padded sizes (a system may not exceed them).
        ensemble_size, hidden, layers: as :class:`MLPEnsembleConfig`.
    """

    max_state_dim: int = 32
    max_action_dim: int = 8
    ensemble_size: int = 5
    hidden: int = 200
    layers: int = 4


class PaddedMLPEnsemble(nn.Module):
    """MLPEnsemble over padded, min-max normalised vectors, trained on mixed systems.

    Input: ``[s_t, a_t, state mask, action mask]`` padded to the fixed sizes (the masks tell
    the network which entries are real; a small addition to plain padding). Output: a
    diagonal Gaussian over ``s_{t+1} - s_t``. Training: Gaussian NLL on real channels of every
    consecutive pair of a window, with an online bootstrap (Poisson(1) weight per member and
    sample, Oza & Russell 2001). Prediction: autoregressive from the last history state,
    the mean over members at each step. Same ``loss(batch)`` / ``predict(batch)`` interface
    as WestWorld (:class:`~ws_worldmodel.westworld.TrajectoryBatch`).
    """

    def __init__(self, cfg: PaddedMLPEnsembleConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PaddedMLPEnsembleConfig()
        s, a, e, h = cfg.max_state_dim, cfg.max_action_dim, cfg.ensemble_size, cfg.hidden
        dims = [2 * s + 2 * a] + [h] * cfg.layers
        self.hidden_layers = nn.ModuleList(_EnsembleLinear(e, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.head = _EnsembleLinear(e, h, 2 * s)
        self.max_logvar = nn.Parameter(torch.full((1, 1, s), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, s), -10.0))

    def _pad(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, cs = batch.states.shape
        ca = batch.actions.shape[2]
        if cs > self.cfg.max_state_dim or ca > self.cfg.max_action_dim:
            raise ValueError(f"a system with {cs} state / {ca} action channels exceeds the padded sizes "
                             f"{self.cfg.max_state_dim} / {self.cfg.max_action_dim}")
        s = F.pad(batch.states * batch.state_mask[:, None], (0, self.cfg.max_state_dim - cs))
        a = F.pad(batch.actions * batch.action_mask[:, None], (0, self.cfg.max_action_dim - ca))
        sm = F.pad(batch.state_mask.float(), (0, self.cfg.max_state_dim - cs))
        am = F.pad(batch.action_mask.float(), (0, self.cfg.max_action_dim - ca))
        return s, a, sm, am

    def _forward(self, s: torch.Tensor, a: torch.Tensor, sm: torch.Tensor, am: torch.Tensor):
        """``s (N, S)``, ``a (N, A)`` -> delta mean and log-variance ``(E, N, S)``."""
        x = torch.cat([s, a, sm, am], dim=-1).expand(self.cfg.ensemble_size, -1, -1)
        for layer in self.hidden_layers:
            x = F.silu(layer(x))
        mean, logvar = self.head(x).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, batch) -> torch.Tensor:
        """Gaussian NLL of one-step transitions on real channels: mean over samples of each
        sample's mean (like WestWorld's loss), members summed, online bootstrap weights."""
        s, a, sm, am = self._pad(batch)
        b, t, d = s.shape
        cur, nxt = s[:, :-1].reshape(-1, d), s[:, 1:].reshape(-1, d)
        act = a[:, :-1].reshape(b * (t - 1), -1)
        m_s = sm[:, None].expand(b, t - 1, d).reshape(-1, d)
        m_a = am[:, None].expand(b, t - 1, -1).reshape(b * (t - 1), -1)
        mean, logvar = self._forward(cur, act, m_s, m_a)
        nll = ((mean - (nxt - cur)) ** 2 * torch.exp(-logvar) + logvar) * m_s  # (E, N, S)
        per_pair = nll.sum(-1) / m_s.sum(-1).clamp_min(1)  # (E, N)
        per_sample = per_pair.reshape(-1, b, t - 1).mean(-1)  # (E, B)
        if self.training:
            w = torch.poisson(torch.ones_like(per_sample))
            per_sample = per_sample * w
        return per_sample.mean(-1).sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        """Autoregressive ``H``-step prediction ``(B, H, Cs)`` from the last history state."""
        s, a, sm, am = self._pad(batch)
        th, t = batch.history, s.shape[1]
        cur = s[:, th - 1]
        out = []
        for k in range(th - 1, t - 1):
            mean, _ = self._forward(cur, a[:, k], sm, am)
            cur = (cur + mean.mean(0)) * sm
            out.append(cur)
        cs = batch.states.shape[2]
        return torch.stack(out, dim=1)[..., :cs]
