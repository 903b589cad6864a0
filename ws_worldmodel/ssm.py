"""A Mamba-style selective state-space layer in pure PyTorch (seed 003 eq. 7; Gu & Dao 2023).

The recurrence per channel ``i`` and state ``n`` is

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t,      y_t = <C_t, h_t> + D * x_t,

with input-dependent (selective) ``dt_t``, ``B_t``, ``C_t``. It is linear in ``h``, so the
whole sequence is computed with an associative scan over pairs ``(a, b)`` combined as
``(a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2)``: :func:`parallel_scan` does it in
``ceil(log2 L)`` vectorised steps (Hillis-Steele), on CPU or CUDA alike, without custom
kernels; :func:`sequential_scan` is the plain loop it must equal.

Shapes: ``x (N, L, d_model) -> (N, L, d_model)``; causal along ``L``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["parallel_scan", "sequential_scan", "SelectiveSSM"]


def parallel_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of ``h_t = a_t * h_{t-1} + b_t`` (``h_{-1} = 0``) along dim 1.

    Args:
        a, b: ``(N, L, ...)`` tensors of the same shape (``a`` the decay, ``b`` the input).

    Returns:
        ``h`` of the same shape. Work ``O(L log L)``, depth ``O(log L)``.
    """
    length = a.shape[1]
    offset = 1
    while offset < length:
        b = torch.cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same recurrence as :func:`parallel_scan`, one step at a time (the reference)."""
    h = torch.zeros_like(b[:, 0])
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


class SelectiveSSM(nn.Module):
    """Mamba block: in-projection, causal depthwise conv, selective scan, gated output.

    Args:
        d_model: token width.
        d_state: SSM state size ``N`` per channel.
        d_conv: causal convolution width.
        expand: inner width factor (``d_inner = expand * d_model``).
        scan: ``"parallel"`` or ``"sequential"`` (identical results; the latter is for tests).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, scan: str = "parallel"):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = max(1, math.ceil(d_model / 16))
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        # S4D-real initialisation of A (Gu et al.), dt in [1e-3, 1e-1] (Mamba defaults)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.scan = parallel_scan if scan == "parallel" else sequential_scan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = self.conv(u.transpose(1, 2))[..., :length].transpose(1, 2)  # causal: drop the right padding
        u = F.silu(u)
        dt, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (n, L, d_inner)
        a = -torch.exp(self.A_log)  # (d_inner, N)
        decay = torch.exp(dt.unsqueeze(-1) * a)  # (n, L, d_inner, N), in (0, 1)
        inp = (dt * u).unsqueeze(-1) * b.unsqueeze(2)  # (n, L, d_inner, N)
        h = self.scan(decay, inp)
        y = (h * c.unsqueeze(2)).sum(-1) + self.D * u
        return self.out_proj(y * F.silu(z))
