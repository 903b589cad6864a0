"""go1_robot: see ws_ros.graphs.GRAPHS["go1_robot"]. Usage: ros2 launch worldscape go1_robot.launch.py [dynamics:=oracle]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("go1_robot")
