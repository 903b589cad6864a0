"""piper_hitl_sim: see ws_ros.graphs.GRAPHS["piper_hitl_sim"]. Usage: ros2 launch worldscape piper_hitl_sim.launch.py [checkpoint:=policy.pt]"""

from ws_ros.graphs import launch_description


def generate_launch_description():
    return launch_description("piper_hitl_sim")
