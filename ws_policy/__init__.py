"""WorldScape Policy: the video-depth-action Mixture-of-Transformers policy (seed 004).

``model`` (the policy network, :func:`~ws_policy.model.build_policy`), ``dit_policy`` (the
policy whose video-depth stream is the video world model), ``data`` (demonstration files; the
collection itself is :mod:`ws_sim.demos`), ``train`` (training, sampling, checkpoints),
``executor`` (the closed-loop executor), ``evaluate`` (``ws policy eval``), ``teleop``
(teleoperation core) and ``hitl`` (value function, advantage conditioning, HG-DAgger). Core
layer: imports ``ws_sim`` and ``ws_worldmodel``, no ROS.
"""
