"""A Mamba-style selective state-space layer in pure PyTorch (seed 003 eq. 7; Gu & Dao 2023).

The recurrence per channel ``i`` and state ``n`` is

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t,      y_t = <C_t, h_t> + D * x_t,

with input-dependent (selective) ``dt_t``, ``B_t``, ``C_t``. It is linear in ``h``, so the
whole sequence is computed with an associative scan over pairs ``(a, b)`` combined as
``(a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2)``: :func:`parallel_scan` does it in
``ceil(log2 L)`` vectorised steps (Hillis-Steele), on CPU or CUDA alike, without custom
kernels; :func:`sequential_scan` is the plain loop it must equal. :func:`linear_recurrence`
wraps either in an autograd function whose backward is the reverse recurrence (no graph of
L small operations); on CPU a fused loop beats the log-depth scan, which does
``O(L log L)`` work, so ``"auto"`` picks the loop there and the parallel scan on CUDA.
Without autograd on CPU (prediction, MPPI) ``"auto"`` and ``"loop"`` go further:
:func:`fused_selective_scan` keeps one ``(N_state, d_inner)`` state per sequence and reads
``y_t`` out at every step, never materialising the ``(N, L, d_inner, N_state)`` decays,
inputs and states whose memory traffic bounded the loop (about 3x faster at batch 8, equal to
1e-5, tested).

Shapes: ``x (N, L, d_model) -> (N, L, d_model)``; causal along ``L``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["parallel_scan", "sequential_scan", "linear_recurrence", "fused_selective_scan", "SelectiveSSM", "SSMState"]


class SSMState(NamedTuple):
    """What :class:`SelectiveSSM` carries from one part of a sequence to the next.

    Attributes:
        conv: ``(N, d_conv - 1, d_inner)`` the last inputs of the causal convolution (zeros before
            the sequence's start).
        h: ``(N, d_inner, N_state)`` the recurrent state after the last step.
    """

    conv: torch.Tensor
    h: torch.Tensor


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


def _loop_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sequential scan without autograd bookkeeping (time-major copy, fused multiply-add)."""
    at, bt = a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous()
    out = torch.empty_like(bt)
    out[0] = bt[0]
    for t in range(1, at.shape[0]):
        torch.addcmul(bt[t], at[t], out[t - 1], out=out[t])
    return out.transpose(0, 1)


def _time_major(u, dt, b, c, a):
    """The fused loops' layout: time-major inputs (every step's slice contiguous) and states laid out
    ``(N, N_state, d_inner)``, so the per-step products broadcast along the contiguous ``d_inner`` and
    the read-out is one bmm. Returns ``dt (L, N, d)``, ``dt u (L, N, d)``, ``b (L, N, N_state, 1)``,
    ``c (L, N, 1, N_state)`` and ``a`` transposed ``(N_state, d)``."""
    return (dt.transpose(0, 1).contiguous(), (dt * u).transpose(0, 1).contiguous(),
            b.transpose(0, 1).unsqueeze(-1).contiguous(), c.transpose(0, 1).unsqueeze(2).contiguous(),
            a.T.contiguous())


def _fused_loop(dt_t, du_t, b_t, c_t, a_t, keep: int | None, chunk: int | None, h0: torch.Tensor | None = None):
    """The fused forward on :func:`_time_major` inputs: ``y (L, N, 1, d)``, the state after step
    ``keep`` as ``(N, d, N_state)`` (None without ``keep``), with ``chunk`` the state before every
    ``chunk`` steps ``(ceil(L / chunk), N, N_state, d)`` (else None), and the state after the last step
    ``(N, N_state, d)``. ``h0 (N, d, N_state)``: the state before the first step (default zero)."""
    length, n, d = du_t.shape
    if h0 is None:
        h = du_t.new_zeros(n, a_t.shape[0], d)
    else:  # a copy: the loop updates h in place, and the caller's state must survive
        h = h0.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    buf = torch.empty_like(h)
    y = du_t.new_empty(length, n, 1, d)
    snaps = du_t.new_empty((length + chunk - 1) // chunk, *h.shape) if chunk else None
    h_keep = None
    for t in range(length):
        if chunk and t % chunk == 0:
            snaps[t // chunk].copy_(h)
        torch.mul(dt_t[t].unsqueeze(1), a_t, out=buf)
        buf.exp_()
        h.mul_(buf)
        torch.mul(du_t[t].unsqueeze(1), b_t[t], out=buf)
        h.add_(buf)
        torch.bmm(c_t[t], h, out=y[t])
        if t == keep:
            h_keep = h.transpose(1, 2).contiguous()
    return y, h_keep, snaps, h


def fused_selective_scan(u: torch.Tensor, dt: torch.Tensor, b: torch.Tensor, c: torch.Tensor, a: torch.Tensor,
                         keep: int | None = None, h0: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The selective scan's read-out without the ``(N, L, d_inner, N_state)`` tensors (no autograd).

    ``h_t = exp(dt_t a) * h_{t-1} + (dt_t u_t) b_t`` and ``y_t = <c_t, h_t>`` (seed 003 eq. 7;
    Gu & Dao 2023, Alg. 2), one step at a time on a state of ``(N, N_state, d_inner)`` held in
    cache-sized buffers, where the autograd path materialises the decays, the inputs and every
    ``h_t`` (four tensors of ``N L d_inner N_state`` floats, which bound its speed by memory traffic).

    Args:
        u, dt: ``(N, L, d_inner)`` the convolved input and the step sizes (after softplus).
        b, c: ``(N, L, N_state)`` the selective input and output matrices.
        a: ``(d_inner, N_state)`` the (negative) state matrix ``-exp(A_log)``.
        keep: also return ``h`` after this step (0-based), e.g. for a branch off the recurrence.
        h0: ``(N, d_inner, N_state)`` the state before the first step (None: zero), to continue a
            recurrence run on an earlier part of the sequence.

    Returns:
        ``y`` ``(N, L, d_inner)`` (without the ``D u`` skip term), ``h_keep`` ``(N, d_inner, N_state)``
        or None, and the state after the last step ``(N, d_inner, N_state)``.
    """
    y, h_keep, _, h_last = _fused_loop(*_time_major(u, dt, b, c, a), keep, None, h0)
    return y.squeeze(2).transpose(0, 1), h_keep, h_last.transpose(1, 2)


class _FusedSelectiveScan(torch.autograd.Function):
    """:func:`fused_selective_scan` with an analytic backward (training on CPU).

    Forward: the fused loop, keeping the state only at the start of every ``chunk`` steps.
    Backward: chunk by chunk from the end, the chunk's states recomputed from its snapshot, then
    the reverse recurrence ``g_h_{t-1} = exp(dt_t a) g_h_t`` with, per step,
    ``g_c_t = h_t^T g_y_t``, ``g_(dt u)_t = b_t^T g_h_t``, ``g_b_t = g_h_t (dt u)_t``, and the
    decay's share ``g_h_t h_{t-1} exp(dt_t a)`` to ``dt`` (times ``a``) and ``a`` (times ``dt``). No
    ``(N, L, d_inner, N_state)`` tensor exists in either direction. Layout: states ``(N, N_state,
    d_inner)``. ``keep`` -1: no state is returned (a zero tensor stands in for it).
    """

    @staticmethod
    def forward(ctx, u, dt, b, c, a, keep, chunk):
        dt_t, du_t, b_t, c_t, a_t = _time_major(u, dt, b, c, a)
        y, h_keep, snaps, _ = _fused_loop(dt_t, du_t, b_t, c_t, a_t, keep, chunk)
        if h_keep is None:
            h_keep = u.new_zeros(u.shape[0], u.shape[2], a.shape[-1])
        ctx.save_for_backward(u, dt, a_t, dt_t, du_t, b_t, c_t, snaps)
        ctx.keep, ctx.chunk = keep, chunk
        return y.squeeze(2).transpose(0, 1), h_keep

    @staticmethod
    def backward(ctx, g_y, g_keep):
        u, dt, a_t, dt_t, du_t, b_t, c_t, snaps = ctx.saved_tensors
        keep, chunk = ctx.keep, ctx.chunk
        length, n, d = du_t.shape
        ns = a_t.shape[0]
        g_y_t = g_y.transpose(0, 1).unsqueeze(-1).contiguous()  # (L, N, d, 1)
        g_keep_t = g_keep.transpose(1, 2) if g_keep is not None else None  # (N, ns, d)
        g_du = torch.empty_like(du_t)  # (L, N, d)
        g_dt = torch.empty_like(dt_t)
        g_b = u.new_empty(length, n, ns, 1)
        g_c = u.new_empty(length, n, ns, 1)
        g_a = torch.zeros_like(a_t)  # (ns, d)
        gh = u.new_zeros(n, ns, d)
        buf = torch.empty_like(gh)
        for k in range(snaps.shape[0] - 1, -1, -1):
            t0, t1 = k * chunk, min(length, (k + 1) * chunk)
            hs, decays = [snaps[k]], []
            for t in range(t0, t1):  # recompute the chunk's states
                dec = torch.exp(dt_t[t].unsqueeze(1) * a_t)
                decays.append(dec)
                hs.append(dec * hs[-1] + du_t[t].unsqueeze(1) * b_t[t])
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                h_now, h_prev, dec = hs[i + 1], hs[i], decays[i]
                gh.baddbmm_(c_t[t].transpose(1, 2), g_y_t[t].transpose(1, 2))  # + c_t (x) g_y_t
                if t == keep and g_keep_t is not None:
                    gh.add_(g_keep_t)
                torch.bmm(h_now, g_y_t[t], out=g_c[t])
                torch.bmm(b_t[t].transpose(1, 2), gh, out=g_du[t].unsqueeze(1))
                torch.bmm(gh, du_t[t].unsqueeze(-1), out=g_b[t])
                torch.mul(gh, h_prev, out=buf)
                buf.mul_(dec)  # the gradient of the decay's exponent dt_t a
                torch.sum(buf * a_t, dim=1, out=g_dt[t])
                g_a.add_((buf * dt_t[t].unsqueeze(1)).sum(0))
                gh.mul_(dec)
        g_du = g_du.transpose(0, 1)
        g_u = g_du * dt
        g_dtt = g_dt.transpose(0, 1) + g_du * u
        return g_u, g_dtt, g_b.squeeze(-1).transpose(0, 1), g_c.squeeze(-1).transpose(0, 1), g_a.T, None, None


def _unrolled_selective_scan(u, dt, b, c, a, keep: int | None = None, h0: torch.Tensor | None = None):
    """The fused scan in plain traceable operators (no ``out=``), for ONNX export: unrolled over the
    steps, each step's state ``(N, N_state, d_inner)`` only, so the exported graph never holds the
    ``(N, L, d_inner, N_state)`` tensors either. Same results as :func:`fused_selective_scan`.

    Every input is cut into its steps once, already in the shape a step uses (one ``Split`` per input,
    ``b`` reshaped so that its pieces are columns), so a step exports as its six arithmetic operators
    (``Mul``, ``Exp``, ``Mul``, ``Mul``, ``Add``, ``MatMul``) where indexing ``x[:, t]`` added a
    ``Gather`` and an ``Unsqueeze`` per input per step (2.3x the operators, each a fixed cost in ONNX
    Runtime at a student's sizes)."""
    n, length, d = u.shape
    ns = a.shape[-1]
    a_t = a.T  # (N_state, d)
    dts = dt.split(1, dim=1)  # (N, 1, d): broadcasts against a_t to (N, N_state, d)
    dus = (dt * u).split(1, dim=1)
    bs = b.reshape(n, length * ns, 1).split(ns, dim=1)  # (N, N_state, 1)
    cs = c.split(1, dim=1)  # (N, 1, N_state): the row that reads the state out
    h = u.new_zeros(n, ns, d) if h0 is None else h0.transpose(1, 2)
    ys, h_keep = [], None
    for t in range(length):
        h = torch.exp(dts[t] * a_t) * h + dus[t] * bs[t]
        ys.append(torch.bmm(cs[t], h))
        if t == keep:
            h_keep = h.transpose(1, 2)
    return torch.cat(ys, dim=1), h_keep, h.transpose(1, 2)


def _vectorised_selective_scan(u, dt, b, c, a, keep: int | None = None, h0: torch.Tensor | None = None):
    """The same scan for ONNX export with every step's decay and input computed at once (``(N, L, N_state,
    d_inner)``, a few large operators), then the recurrence as two operators per step on one split of them,
    and the read-out of all steps at once: about ``2 L + 10`` operators instead of :func:`_unrolled_selective_scan`'s
    ``14 L``, at the memory of the materialised tensors (small for a student). Same results."""
    decay = torch.exp(dt.unsqueeze(2) * a.T)  # (N, L, N_state, d)
    inp = (dt * u).unsqueeze(2) * b.unsqueeze(-1)
    h = u.new_zeros(u.shape[0], 1, a.shape[-1], u.shape[2]) if h0 is None else h0.transpose(1, 2).unsqueeze(1)
    hs, h_keep = [], None
    for t, (d_t, i_t) in enumerate(zip(decay.split(1, dim=1), inp.split(1, dim=1))):
        h = d_t * h + i_t
        hs.append(h)
        if t == keep:
            h_keep = h[:, 0].transpose(1, 2)
    y = (torch.cat(hs, dim=1) * c.unsqueeze(-1)).sum(2)  # (N, L, d): <C_t, h_t> for every step at once
    return y, h_keep, h[:, 0].transpose(1, 2)


def _scan_for(x: torch.Tensor, mode: str):
    if mode == "auto":
        mode = "parallel" if x.is_cuda else "loop"
    return {"parallel": parallel_scan, "loop": _loop_scan, "sequential": sequential_scan}[mode]


class _LinearRecurrence(torch.autograd.Function):
    """``h_t = a_t h_{t-1} + b_t`` with an analytic backward: the gradient is the same
    recurrence run backwards, ``g_b[t] = g_h[t] + a[t+1] g_b[t+1]`` and ``g_a[t] = g_b[t] h[t-1]``,
    so neither direction records a graph of L small operations."""

    @staticmethod
    def forward(ctx, a, b, mode):
        scan = _scan_for(a, mode)
        with torch.no_grad():
            h = scan(a, b)
        ctx.save_for_backward(a, h)
        ctx.mode = mode
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        scan = _scan_for(a, ctx.mode)
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        grad_b = scan(a_next.flip(1), grad_h.flip(1)).flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        return grad_b * h_prev, grad_b, None


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """Differentiable ``h_t = a_t h_{t-1} + b_t`` along dim 1 (``h_{-1} = 0``), shapes ``(N, L, ...)``.

    ``mode``: ``"parallel"`` (log-depth associative scan, the default on CUDA), ``"loop"`` (a
    fused sequential loop, the default on CPU, where it is several times faster) or ``"auto"``.
    Both directions use the same scan; the result equals :func:`sequential_scan` (tested).
    """
    if torch.onnx.is_in_onnx_export():  # traced into a graph (ws export): the plain loop, unrolled
        return sequential_scan(a, b)
    return _LinearRecurrence.apply(a, b, mode)


class SelectiveSSM(nn.Module):
    """Mamba block: in-projection, causal depthwise conv, selective scan, gated output.

    Args:
        d_model: token width.
        d_state: SSM state size ``N`` per channel.
        d_conv: causal convolution width.
        expand: inner width factor (``d_inner = expand * d_model``).
        scan: ``"auto"`` (parallel scan on CUDA, fused loop on CPU), ``"parallel"``, ``"loop"``, or
            ``"sequential"`` (plain autograd through the loop; the reference for tests).
    """

    #: steps between the state snapshots the fused backward recomputes from
    FUSED_CHUNK = 32

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, scan: str = "auto"):
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
        if scan not in ("auto", "parallel", "loop", "sequential"):
            raise ValueError(f"unknown scan {scan!r}")
        self.scan_mode = scan
        #: on CPU, scan fused (:func:`fused_selective_scan`, and its analytic backward when training) instead of
        #: materialising every state (False: the earlier path, kept for comparisons and benchmarks)
        self.fused_cpu = True
        #: how ``torch.onnx.export`` writes the scan: ``"unrolled"`` (the fused loop, one step's state at a time:
        #: ~14 operators per step), ``"vectorised"`` (decays and inputs of all steps at once, then 2 operators per
        #: step) or ``"parallel"`` (:func:`parallel_scan`, log-depth); the last two trade operators for memory
        #: (see ``ws_distill.export``). Set by ``ws_distill.export.export_onnx(scan=)``.
        self.export_scan = "unrolled"

    def _projections(self, u: torch.Tensor):
        """``dt (..., d_inner)`` after softplus, ``b``, ``c`` ``(..., N)`` of the input ``u``."""
        dt, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), b, c

    def _selective(self, u: torch.Tensor):
        dt, b, c = self._projections(u)
        decay = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log))  # (..., d_inner, N), in (0, 1)
        inp = (dt * u).unsqueeze(-1) * b.unsqueeze(-2)  # (..., d_inner, N)
        return decay, inp, c

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None, extra_after: int = 0,
                state: SSMState | None = None, return_state: bool = False):
        """Run the layer along the sequence.

        Args:
            x: ``(N, L, d_model)``.
            extra: optional ``(N, 1, d_model)`` token to read out as if it followed the first
                ``extra_after`` tokens of ``x`` (a branch off the recurrence: the main
                sequence is not affected). WestWorld's system embedding uses this.
            extra_after: how many tokens of ``x`` the extra token follows (1..L).
            state: the :class:`SSMState` after an earlier part of the sequence (``return_state``
                of a call on it): ``x`` continues that sequence, exactly as if both parts had run
                in one call. None: ``x`` starts the sequence.
            return_state: also return the :class:`SSMState` after the last token of ``x``.

        Returns:
            ``(N, L, d_model)``; with ``extra``, also its output ``(N, d_model)``; with
            ``return_state``, also the state (last).

        Raises:
            ValueError: ``extra_after`` outside 1..L, or a ``state`` of another batch or width.
        """
        n, length, _ = x.shape
        width = self.conv.kernel_size[0]
        u_pre, z = self.in_proj(x).chunk(2, dim=-1)
        if state is None:
            u_conv = self.conv(u_pre.transpose(1, 2))[..., :length]  # causal: drop right padding
            h0 = None
        else:
            if state.conv.shape != (n, width - 1, self.d_inner) or state.h.shape != (n, self.d_inner, self.d_state):
                raise ValueError(f"state of shapes {tuple(state.conv.shape)}, {tuple(state.h.shape)} does not continue "
                                 f"{n} sequences of width {self.d_inner} and state size {self.d_state}")
            past = torch.cat([state.conv, u_pre], dim=1)  # (n, width - 1 + L, d_inner)
            if length <= width and not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
                # a few steps (a step-by-step continuation): the taps as one product, no conv kernel
                u_conv = (past.unfold(1, width, 1) * self.conv.weight[:, 0]).sum(-1).transpose(1, 2) + self.conv.bias[:, None]
            else:
                u_conv = F.conv1d(past.transpose(1, 2), self.conv.weight, self.conv.bias, groups=self.d_inner)
            h0 = state.h
        u = F.silu(u_conv.transpose(1, 2))
        k = int(extra_after)
        if extra is not None and not 1 <= k <= length:
            raise ValueError(f"extra_after must be in 1..{length}, got {k}")
        keep = k - 1 if extra is not None else None
        exporting = torch.onnx.is_in_onnx_export()
        if self.fused_cpu and exporting and self.export_scan in ("unrolled", "vectorised"):  # written into the graph
            scan = _unrolled_selective_scan if self.export_scan == "unrolled" else _vectorised_selective_scan
        elif self.fused_cpu and self.scan_mode in ("auto", "loop") and not u.is_cuda and not exporting:
            if not torch.is_grad_enabled():  # inference on CPU: the read-out without materialising every state
                scan = fused_selective_scan
            elif h0 is None and not return_state:  # training on CPU: the fused loop with its analytic backward
                def scan(*args, keep):
                    return (*_FusedSelectiveScan.apply(*args, -1 if keep is None else keep, self.FUSED_CHUNK), None)
            else:  # a carried state under autograd (not a training path here): the plain recurrence
                scan = None
        else:
            scan = None
        if scan is not None:
            dt, b, c = self._projections(u)
            y, h_k, h_last = scan(u, dt, b, c, -torch.exp(self.A_log), keep=keep, **({} if h0 is None else {"h0": h0}))
            y = y + self.D * u
        else:
            decay, inp, c = self._selective(u)
            if h0 is not None:  # h_0 = a_0 h_{-1} + b_0: fold the carried state into the first input
                inp = torch.cat([inp[:, :1] + decay[:, :1] * h0.unsqueeze(1), inp[:, 1:]], dim=1)
            if exporting:  # export_scan "parallel": log-depth, a handful of operators per doubling
                h = parallel_scan(decay, inp)
            elif self.scan_mode == "sequential":
                h = sequential_scan(decay, inp)
            else:
                h = linear_recurrence(decay, inp, self.scan_mode)  # (n, L, d_inner, N)
            y = (h * c.unsqueeze(2)).sum(-1) + self.D * u
            h_k = h[:, k - 1] if extra is not None else None
            h_last = h[:, -1]
        out = self.out_proj(y * F.silu(z))
        result = [out]
        if extra is not None:
            ue_pre, ze = self.in_proj(extra[:, 0]).chunk(2, dim=-1)  # (n, d_inner)
            past = u_pre if state is None else torch.cat([state.conv, u_pre], dim=1)
            k_past = k + (0 if state is None else width - 1)
            window = torch.cat([past[:, max(0, k_past - width + 1):k_past], ue_pre[:, None]], dim=1)  # (n, <=width, d)
            weight = self.conv.weight[:, 0, width - window.shape[1]:].T  # the taps that reach real inputs
            ue = F.silu((window * weight).sum(1) + self.conv.bias)
            decay_e, inp_e, c_e = self._selective(ue)
            h_e = decay_e * h_k + inp_e
            y_e = (h_e * c_e.unsqueeze(-2)).sum(-1) + self.D * ue
            result.append(self.out_proj(y_e * F.silu(ze)))
        if return_state:
            past = torch.cat([u_pre.new_zeros(n, width - 1, self.d_inner) if state is None else state.conv, u_pre], dim=1)
            result.append(SSMState(past[:, past.shape[1] - (width - 1):], h_last))
        return result[0] if len(result) == 1 else tuple(result)
