"""Simulation (installed as ``ws_sim``): MuJoCo/Gymnasium environments, channel metadata,
the MuJoCo oracle dynamics and trajectory datasets (core layer, no ROS)."""
