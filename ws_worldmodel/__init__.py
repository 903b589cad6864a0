"""Learned dynamics models (core layer: NumPy and PyTorch, no ROS).

Trajectory models (seed 003): the MLPEnsemble baseline (``mlp_ensemble``), WestWorld
(``westworld``), the TrajWorld and TDM baselines, their training, pretraining, protocols and
self-contained checkpoints (``checkpoint``, over the file I/O of ``checkpoint_io``); an exported
WestWorld served by ONNX Runtime (``onnx_model``). The video world model (seeds 000-002):
``video``. Imports only ``ws_sim`` among the WorldScape packages.
"""
