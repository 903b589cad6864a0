"""walker2d_sim: see ws_ros.graphs.GRAPHS["walker2d_sim"]. Usage: ros2 launch worldscape walker2d_sim.launch.py [dynamics:=oracle]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("walker2d_sim")
