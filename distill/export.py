"""ONNX export of a WestWorld (teacher or student) for onboard runtimes, and an ONNX Runtime backend.

Graph layout (opset 17 by default; checked with ``onnx.checker``). One graph serves one
system, in physical units, with min-max normalisation and decoding inside the graph:

* input ``hist_states``: float32 ``(1, Th, Cs)``, the last ``Th`` observed states
  ``[qpos, qvel]`` (SI units), oldest first, shared by the whole batch (MPPI's ``K`` futures
  from one past: the history runs once and its SSM states carry to every sample); an export
  with ``shared_history=False`` (``ws export --per-sample-history``) takes ``(batch, Th, Cs)``
  instead and runs every sample's history;
* input ``actions``: float32 ``(batch, Th + H, Ca)``; ``actions[:, t]`` leads from state
  ``t`` to ``t + 1``, so entries ``Th - 1 .. Th + H - 2`` are the planned actions and the last
  one is never read;
* output ``pred_states``: float32 ``(batch, H, Cs)``, the expected states ``Th .. Th + H - 1``
  after the history (one forward pass, seed 003 sec. 4.3).

``batch`` is dynamic (the MPPI samples) unless the export fixes it (``batch=K``, ``ws export --batch K``:
the runtime then folds the shape arithmetic into constants); ``Th`` and ``H`` are fixed at export. The
metadata (``metadata_props``) records the system, ``Th``, ``H``, whether the history is shared, a fixed
batch, the channel records and the code version, so :class:`OnnxSequenceModel` serves the graph without
the checkpoint. With a shared history, ``actions[:, :Th - 1]`` must be the same in every sample.

Export traces the model with PyTorch's fused attention fast path off, so every operator is a
standard ONNX one, and writes the selective scan in one of three ways (equal outputs to float
rounding, tested): ``scan="unrolled"`` (the default), a plain loop over the ``Th + H`` steps holding
one step's state at a time, as the fused CPU scan does (about 14 operators a step);
``"vectorised"``, every step's decay and input computed at once and 2 operators a step; and
``"parallel"``, the log-depth scan over the materialised decays and inputs (``ceil(log2 L)``
doublings at ``log2 L`` times the arithmetic). The last two have fewer operators but hold the
``(N, L, N_state, d_inner)`` tensors: on the 2-core CPU of docs/distillation.md (``bench/bench_student_sizes.py
--scans``) neither was faster for the two-block step-token student in MPPI at K 64, H 20; for a one-block
student the vectorised scan was.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ws_worldmodel.onnx_model import OnnxSequenceModel

__all__ = ["export_onnx", "OnnxSequenceModel", "parity", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


class _PhysicalPredict(nn.Module):
    """``(hist_states, actions) -> pred_states`` in physical units for one system."""

    def __init__(self, model, system: str, shared_history: bool = False):
        super().__init__()
        self.shared_history = shared_history
        from ws_worldmodel.data import _ranges

        meta = model.systems[system]
        self.net = model.net
        self.history = model.history
        s_lo, s_hi = _ranges(meta["state_channels"])
        a_lo, a_hi = _ranges(meta["action_channels"])
        for name, v in (("s_lo", s_lo), ("s_span", s_hi - s_lo), ("a_lo", a_lo), ("a_span", a_hi - a_lo)):
            self.register_buffer(name, torch.as_tensor(v, dtype=torch.float32))
        self.register_buffer("s_struct", torch.as_tensor(meta["state_struct"], dtype=torch.long))
        self.register_buffer("a_struct", torch.as_tensor(meta["action_struct"], dtype=torch.long))

    def forward(self, hist_states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        from ws_worldmodel.westworld import TrajectoryBatch

        hb, th, cs = hist_states.shape
        b, t = actions.shape[:2]
        s = (hist_states - self.s_lo) / self.s_span
        s = torch.cat([s, s.new_zeros(hb, t - th, cs)], dim=1).expand(b, -1, -1)  # hb is 1 or b
        a = (actions - self.a_lo) / self.a_span
        ones_s = torch.ones_like(s[:, 0, :], dtype=torch.bool)
        ones_a = torch.ones_like(actions[:, 0, :], dtype=torch.bool)
        if self.shared_history:  # one structure for all: constants the runtime folds (no batch-shaped Expand)
            s_struct, a_struct = self.s_struct[None], self.a_struct[None]
        else:
            s_struct, a_struct = self.s_struct.expand(b, -1, -1), self.a_struct.expand(b, -1, -1)
        batch = TrajectoryBatch(s, a, ones_s, ones_a, s_struct, a_struct, th)
        return self.net.predict(batch, shared_history=self.shared_history) * self.s_span + self.s_lo


SCANS = ("unrolled", "vectorised", "parallel")


@contextlib.contextmanager
def _export_mode(net: nn.Module, scan: str):
    from ws_worldmodel.ssm import SelectiveSSM

    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    ssms = [m for m in net.modules() if isinstance(m, SelectiveSSM)]
    before = [m.export_scan for m in ssms]
    for m in ssms:
        m.export_scan = scan
    try:
        with warnings.catch_warnings():  # shape checks become constants in the trace, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
        for m, b in zip(ssms, before):
            m.export_scan = b


def export_onnx(model, system: str, horizon: int, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                shared_history: bool = True, scan: str = "unrolled", batch: int | None = None) -> Path:
    """Export ``model`` (a WestWorld ``TrajectoryWorldModel``) for ``system`` with ``horizon`` predicted steps.

    ``shared_history``: one history ``(1, Th, Cs)`` for the whole batch (MPPI; the default), or one per
    sample (False). ``scan``: how the selective scan is written, one of :data:`SCANS` (see the module
    docstring; equal outputs to float rounding). ``batch``: None (the default) leaves the batch axis
    dynamic; a number fixes it (the planner's ``K``), so that ONNX Runtime folds the graph's shape arithmetic
    into constants (fewer operators a call); :class:`OnnxSequenceModel` still serves any batch, padding a
    smaller one and running a larger one in pieces of ``batch``. See the module docstring for the graph.

    Raises:
        ValueError: not a WestWorld (TrajWorld and TDM decode step by step with a KV cache and
            are not exported), unknown system, a horizon below 1, an unknown scan, or a batch below 1.
    """
    import onnx

    from ws_sim.channels import channels_to_records
    from ws_worldmodel.checkpoint import code_version

    if model.kind != "westworld":
        raise ValueError(f"ONNX export covers WestWorld (one forward pass); got a {model.kind}")
    if system not in model.systems:
        raise ValueError(f"the checkpoint knows no system {system!r} (it knows {sorted(model.systems)})")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"batch must be >= 1 (or None: dynamic), got {batch}")
    meta = model.systems[system]
    cs, ca, th = len(meta["state_channels"]), len(meta["action_channels"]), model.history
    wrapper = _PhysicalPredict(model, system, shared_history).eval()
    n = 2 if batch is None else int(batch)
    example = (torch.zeros(1 if shared_history else n, th, cs), torch.zeros(n, th + horizon, ca))
    dynamic = ({} if batch is not None else
               {**({} if shared_history else {"hist_states": {0: "batch"}}), "actions": {0: "batch"},
                "pred_states": {0: "batch"}})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with _export_mode(wrapper, scan), torch.no_grad():
        torch.onnx.export(wrapper, example, str(tmp), input_names=["hist_states", "actions"],
                          output_names=["pred_states"], opset_version=opset, dynamo=False, dynamic_axes=dynamic)
    graph = onnx.load(str(tmp))
    props = {"worldscape.system": system, "worldscape.history": str(th), "worldscape.horizon": str(horizon),
             "worldscape.shared_history": "1" if shared_history else "0", "worldscape.scan": scan,
             **({} if batch is None else {"worldscape.batch": str(int(batch))}),
             "worldscape.kind": model.kind, "worldscape.code_version": code_version(),
             "worldscape.state_channels": json.dumps(channels_to_records(meta["state_channels"])),
             "worldscape.action_channels": json.dumps(channels_to_records(meta["action_channels"]))}
    for k, v in props.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path


def parity(model, onnx_model: OnnxSequenceModel, batch_sizes=(1, 64), seed: int = 0) -> dict:
    """ONNX Runtime against PyTorch on the same random inputs inside the system's data ranges.

    A shared-history export gets one random history per batch (and random futures), PyTorch the same
    history in every sample.

    Returns:
        ``{"max_abs_diff": float, "per_batch": {B: diff}}``, in physical units of the decoded states.
    """
    from ws_worldmodel.data import denormalise

    meta = model.systems[onnx_model.system]
    rng = np.random.default_rng(seed)
    th, h = onnx_model.history, onnx_model.horizon
    out = {}
    for b in batch_sizes:
        s = denormalise(rng.uniform(size=(b, th, len(meta["state_channels"]))), meta["state_channels"])
        a = denormalise(rng.uniform(size=(b, th + h, len(meta["action_channels"]))), meta["action_channels"])
        if onnx_model.shared_history:  # one past, b futures (MPPI)
            s = np.repeat(s[:1], b, axis=0)
            a[:, :th - 1] = a[:1, :th - 1]
        ref = model.predict(onnx_model.system, s, a)
        got = onnx_model.predict(onnx_model.system, s, a)
        out[int(b)] = float(np.abs(got - ref).max())
    return {"max_abs_diff": max(out.values()), "per_batch": out}
