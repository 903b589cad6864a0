"""ROS 2 layer of WorldScape: thin rclpy nodes over the core libraries (DESIGN.md, layer 2).

Importing this package does not import rclpy; the node modules in :mod:`ws_ros.nodes` do.
"""
