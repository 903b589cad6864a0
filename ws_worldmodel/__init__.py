"""Learned dynamics models (core layer: NumPy and PyTorch, no ROS).

Trajectory models (seed 003): the MLPEnsemble baseline (``mlp_ensemble``), WestWorld
(``westworld``), the TrajWorld and TDM baselines, their training, pretraining, protocols and
self-contained checkpoints. The video world model (seeds 000-002): ``video``.
"""
