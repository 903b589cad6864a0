"""An exported trajectory world model served by ONNX Runtime, a dynamics model like the checkpoints.

:class:`OnnxSequenceModel` reads a graph that ``ws export`` (:func:`ws_distill.export.export_onnx`,
whose docstring gives the graph layout and metadata) wrote, and predicts with the same contract as
``TrajectoryWorldModel.predict``, so the MPPI planner runs it through
``ws_mppi.dynamics.SequenceDynamics`` (``ws mppi run --dynamics model.onnx``) as it runs a
checkpoint from :func:`ws_worldmodel.checkpoint.load_checkpoint`. It lives here, beside the other
world models, so that the planner does not import the distillation package;
``ws_distill.export.OnnxSequenceModel`` is the same class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["OnnxSequenceModel"]


class OnnxSequenceModel:
    """An exported WestWorld served by ONNX Runtime, usable wherever a trajectory world model is
    (``ws_mppi.dynamics.SequenceDynamics``, ``ws mppi run --dynamics model.onnx``).

    Args:
        path: the ``.onnx`` file from :func:`ws_distill.export.export_onnx`.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (None: ONNX Runtime's default).

    Raises:
        FileNotFoundError: no such file. ValueError: not a WorldScape export.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        from ws_sim.channels import channels_from_records

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist (make one with 'ws export')")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if "worldscape.system" not in props:
            raise ValueError(f"{path} is not a WorldScape world-model export (no worldscape metadata)")
        self.system = props["worldscape.system"]
        self.history = int(props["worldscape.history"])
        self.horizon = int(props["worldscape.horizon"])
        self.fixed_horizon = self.horizon  # predict() takes exactly this many future steps
        #: one history for the whole batch (inputs hist_states (1, Th, Cs)); exports older than this flag take one per sample
        self.shared_history = props.get("worldscape.shared_history", "0") == "1"
        #: the batch the graph was exported with (None: dynamic); other batches are padded or cut into pieces
        self.batch = int(props["worldscape.batch"]) if "worldscape.batch" in props else None
        self.kind = "westworld-onnx"
        self.name = f"onnx:{path.name}"
        self.systems = {self.system: {
            "state_channels": channels_from_records(json.loads(props["worldscape.state_channels"])),
            "action_channels": channels_from_records(json.loads(props["worldscape.action_channels"]))}}

    def predict(self, system: str, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Same contract as ``TrajectoryWorldModel.predict``: ``states (B, Th, Cs)``,
        ``actions (B, Th + H, Ca)`` -> ``(B, H, Cs)``, physical units.

        A shared-history export (:attr:`shared_history`) takes ``states`` with one row or ``B`` equal rows,
        and ``actions[:, :Th - 1]`` equal in every sample (one past, ``B`` futures, as MPPI asks). An export
        with a fixed :attr:`batch` serves any ``B``: a smaller batch is padded with copies of its last sample,
        a larger one runs in pieces of :attr:`batch` (the same predictions; one call when ``B`` is the batch).

        Raises:
            KeyError: another system. ValueError: shapes other than the exported ``Th``/``H``, or
            different histories given to a shared-history export.
        """
        if system != self.system:
            raise KeyError(f"this ONNX model serves {self.system!r}, not {system!r}")
        if states.shape[1] != self.history or actions.shape[1] != self.history + self.horizon:
            raise ValueError(f"exported for {self.history} history and {self.horizon} predicted steps; got states "
                             f"{states.shape} and actions {actions.shape} (re-export with --horizon)")
        if self.shared_history:
            th = self.history
            if np.any(states != states[:1]) or np.any(actions[:, :th - 1] != actions[:1, :th - 1]):
                raise ValueError("this export shares one history across the batch, but the samples' histories differ "
                                 "(re-export with 'ws export --per-sample-history')")
            states = states[:1]
        if self.batch is None or len(actions) == self.batch:
            return self._run(states, actions)
        b, n = len(actions), self.batch
        pad = -b % n
        actions = np.concatenate([actions, np.repeat(actions[-1:], pad, axis=0)])
        if not self.shared_history:
            states = np.concatenate([states, np.repeat(states[-1:], pad, axis=0)])
        out = [self._run(states if self.shared_history else states[k:k + n], actions[k:k + n])
               for k in range(0, len(actions), n)]
        return np.concatenate(out)[:b]

    def _run(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"hist_states": np.ascontiguousarray(states, dtype=np.float32),
                                       "actions": np.ascontiguousarray(actions, dtype=np.float32)})[0]
