"""piper_robot: see ws_ros.graphs.GRAPHS["piper_robot"]. Usage: ros2 launch worldscape piper_robot.launch.py [dynamics:=oracle]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("piper_robot")
