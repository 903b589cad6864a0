"""piper_sim: see ws_ros.graphs.GRAPHS["piper_sim"]. Usage: ros2 launch worldscape piper_sim.launch.py [dynamics:=oracle]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("piper_sim")
