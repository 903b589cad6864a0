"""Distillation and export (installed as ``ws_distill``, seed 003 App. G).

* :mod:`ws_distill.distill`: a small student WestWorld trained on a teacher's soft
  predictions and the ground truth (eqs. 37-38);
* :mod:`ws_distill.export`: ONNX export with a dynamic batch axis and the parity check
  against PyTorch; the ONNX Runtime model that MPPI plans with is
  :class:`ws_worldmodel.onnx_model.OnnxSequenceModel` (also importable from here as
  ``ws_distill.export.OnnxSequenceModel``).
"""
