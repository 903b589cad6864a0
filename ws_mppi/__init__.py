"""MPPI planning with oracle or learned dynamics (core layer: NumPy and PyTorch, no ROS).

``mppi`` (seed 003 App. D.3 eqs. 12-16), ``costs`` (App. D.3.1-D.3.2), ``dynamics``
(oracle and learned), ``runner`` (closed-loop episodes), ``collect`` (App. C.5 datasets),
``report`` (``ws mppi run``), ``config`` (per-environment defaults, YAML).
"""
