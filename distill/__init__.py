"""Distillation and export (installed as ``ws_distill``): students, ONNX, TensorRT.

Not built yet (issue 6); the package exists so the layout of DESIGN.md holds.
"""
