"""Learned dynamics models (core layer: NumPy and PyTorch, no ROS).

Now: the MLPEnsemble baseline of seed 003 (``mlp_ensemble``), its training (``train``) and
self-contained checkpoints (``checkpoint``). The WestWorld trajectory model comes next.
"""
