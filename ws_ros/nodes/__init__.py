"""The WorldScape ROS 2 nodes (executables of package ``worldscape``)."""
