"""go1_sim_estimated: see ws_ros.graphs.GRAPHS["go1_sim_estimated"].
Usage: ros2 launch worldscape go1_sim_estimated.launch.py [dynamics:=oracle]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("go1_sim_estimated")
