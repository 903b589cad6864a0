"""The node graphs WorldScape launches: one definition for ``ros2 launch`` and ``ws launch``.

Each graph names its nodes (executables of package ``worldscape``) and the ROS parameter
file in ``config/ros/`` they read. ``launch/<graph>.launch.py`` turns a graph into a
``launch_ros`` description (:func:`launch_description`) for users' ROS 2 installs;
``ws launch <graph>`` starts the same nodes with the same parameter files without ``ros2
launch``, for machines that have rclpy from PyPI but no launch system: in one process on a
``SingleThreadedExecutor`` (:func:`run_in_process`, the default; see :func:`ws_ros.common.run_nodes` for why), or as one process per node
like ``ros2 launch`` (:func:`run` over :func:`commands`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

__all__ = ["GRAPHS", "EXECUTABLES", "NODES", "params_file", "commands", "launch_description", "run", "run_in_process"]

#: executable -> (module, function) of its entry point (mirrors setup.py's console_scripts)
EXECUTABLES = {
    "sim_bridge": ("ws_ros.nodes.sim_bridge", "main"),
    "mppi_controller": ("ws_ros.nodes.mppi_controller", "main"),
    "go1_bridge": ("ws_ros.nodes.hardware_bridge", "main_go1"),
    "piper_bridge": ("ws_ros.nodes.hardware_bridge", "main_piper"),
    "policy_executor": ("ws_ros.nodes.policy_executor", "main"),
    "teleop": ("ws_ros.nodes.teleop", "main"),
    "correction_recorder": ("ws_ros.nodes.correction_recorder", "main"),
    "state_estimator": ("ws_ros.nodes.state_estimator", "main"),
}

#: executable -> (module, class, constructor args): the node an executable runs (``ws launch`` in one process)
NODES = {
    "sim_bridge": ("ws_ros.nodes.sim_bridge", "SimBridge", ()),
    "mppi_controller": ("ws_ros.nodes.mppi_controller", "MPPIControllerNode", ()),
    "go1_bridge": ("ws_ros.nodes.hardware_bridge", "HardwareBridge", ("go1",)),
    "piper_bridge": ("ws_ros.nodes.hardware_bridge", "HardwareBridge", ("piper",)),
    "policy_executor": ("ws_ros.nodes.policy_executor", "PolicyExecutorNode", ()),
    "teleop": ("ws_ros.nodes.teleop", "TeleopNode", ()),
    "correction_recorder": ("ws_ros.nodes.correction_recorder", "CorrectionRecorder", ()),
    "state_estimator": ("ws_ros.nodes.state_estimator", "StateEstimatorNode", ()),
}

#: graph -> description and ``(executable, params file)`` per node
GRAPHS = {
    "go1_sim": {"description": "Go1 sim-in-the-loop: sim_bridge + mppi_controller (learned dynamics)",
                "nodes": [("sim_bridge", "go1_sim.yaml"), ("mppi_controller", "go1_sim.yaml")]},
    "go1_sim_estimated": {"description": "Go1 sim-in-the-loop on its own sensors: sim_bridge (hardware-like: imu and "
                                         "joint_states only, with noise) + state_estimator (odom) + mppi_controller",
                          "nodes": [("sim_bridge", "go1_sim_estimated.yaml"),
                                    ("state_estimator", "go1_sim_estimated.yaml"),
                                    ("mppi_controller", "go1_sim_estimated.yaml")]},
    "go1_robot": {"description": "Go1 on the robot: go1_bridge (unitree_legged_sdk) + state_estimator (odom from "
                                 "imu and joints) + mppi_controller (activate by hand)",
                  "nodes": [("go1_bridge", "go1_robot.yaml"), ("state_estimator", "go1_robot.yaml"),
                            ("mppi_controller", "go1_robot.yaml")]},
    "hopper_sim": {"description": "Hopper sim-in-the-loop: sim_bridge + mppi_controller (shipped MLPEnsemble)",
                   "nodes": [("sim_bridge", "hopper_sim.yaml"), ("mppi_controller", "hopper_sim.yaml")]},
    "walker2d_sim": {"description": "Walker2d sim-in-the-loop: sim_bridge + mppi_controller (oracle MPPI)",
                     "nodes": [("sim_bridge", "walker2d_sim.yaml"), ("mppi_controller", "walker2d_sim.yaml")]},
    "piper_sim": {"description": "PiPER sim-in-the-loop: sim_bridge + mppi_controller reaching the point on 'goal' "
                                 "(oracle MPPI)",
                  "nodes": [("sim_bridge", "piper_sim.yaml"), ("mppi_controller", "piper_sim.yaml")]},
    "piper_robot": {"description": "PiPER on the robot: piper_bridge (piper_sdk, CAN) + mppi_controller reaching "
                                   "(activate by hand)",
                    "nodes": [("piper_bridge", "piper_robot.yaml"), ("mppi_controller", "piper_robot.yaml")]},
    "piper_policy_sim": {"description": "PiPER pick-and-place sim-in-the-loop: sim_bridge (task scene, RGB-D camera, "
                                        "instruction) + policy_executor (set checkpoint:=...)",
                         "nodes": [("sim_bridge", "piper_policy_sim.yaml"),
                                   ("policy_executor", "piper_policy_sim.yaml")]},
    "piper_policy_robot": {"description": "PiPER with the policy on the robot: piper_bridge + policy_executor "
                                          "(a camera driver publishes the images; activate by hand)",
                           "nodes": [("piper_bridge", "piper_policy_robot.yaml"),
                                     ("policy_executor", "piper_policy_robot.yaml")]},
    "piper_hitl_sim": {"description": "PiPER human-in-the-loop in sim: sim_bridge (scene and wrist cameras) + policy_executor "
                                      "(the shipped policy, or checkpoint:=...) "
                                      "+ teleop (drive it with 'ws teleop' or a pad) + correction_recorder (MCAP)",
                       "nodes": [("sim_bridge", "piper_hitl_sim.yaml"), ("policy_executor", "piper_hitl_sim.yaml"),
                                 ("teleop", "piper_hitl_sim.yaml"), ("correction_recorder", "piper_hitl_sim.yaml")]},
    "piper_hitl_robot": {"description": "PiPER human-in-the-loop on the robot: piper_bridge + policy_executor + teleop "
                                        "+ correction_recorder (a camera driver publishes the images; activate by hand)",
                         "nodes": [("piper_bridge", "piper_hitl_robot.yaml"),
                                   ("policy_executor", "piper_hitl_robot.yaml"), ("teleop", "piper_hitl_robot.yaml"),
                                   ("correction_recorder", "piper_hitl_robot.yaml")]},
}


def params_file(name: str) -> Path:
    """The parameter file ``config/ros/<name>``: the source tree's when running from a checkout,
    else the installed ``share/worldscape/config/ros``.

    Raises:
        FileNotFoundError: neither exists.
    """
    local = Path(__file__).resolve().parents[1] / "config" / "ros" / name
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("worldscape")) / "config" / "ros" / name
        if shared.is_file():
            return shared
    except (ImportError, LookupError, ValueError):
        pass
    raise FileNotFoundError(f"parameter file config/ros/{name} not found in the source tree or the installed package")


def _graph(name: str) -> dict:
    if name not in GRAPHS:
        raise KeyError(f"unknown graph {name!r}; choose one of {sorted(GRAPHS)}")
    return GRAPHS[name]


def commands(name: str, overrides: dict | None = None) -> list[tuple[str, list[str]]]:
    """``(executable, argv)`` per node of a graph, runnable without ``ros2 launch``.

    ``overrides`` (parameter -> value) apply to every node that declares the parameter in
    its parameter file.

    Raises:
        KeyError: unknown graph.
    """
    out = []
    for exe, file in _graph(name)["nodes"]:
        path = params_file(file)
        declared = _declared(exe, path)
        module, func = EXECUTABLES[exe]
        argv = [sys.executable, "-c", f"from {module} import {func}; {func}()", "--ros-args", "-r", f"__node:={exe}",
                "--params-file", str(path)]
        for k, v in (overrides or {}).items():
            if k in declared:
                argv += ["-p", f"{k}:={v}"]
        out.append((exe, argv))
    return out


def _declared(exe: str, path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}).get(exe, {}).get("ros__parameters", {})


def launch_description(name: str):
    """A ``launch.LaunchDescription`` of a graph (needs ``launch`` and ``launch_ros`` from a ROS 2
    install). Launch argument ``dynamics`` (default: the parameter file's) sets the controller's
    dynamics: ``ros2 launch worldscape go1_sim.launch.py dynamics:=oracle``."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    actions = []
    for exe, file in _graph(name)["nodes"]:
        path = params_file(file)
        params: list = [str(path)]
        if exe == "mppi_controller":
            actions.append(DeclareLaunchArgument(
                "dynamics", default_value=str(_declared(exe, path).get("dynamics", "default")),
                description="oracle, default (the shipped checkpoint) or a checkpoint path"))
            params.append({"dynamics": LaunchConfiguration("dynamics")})
        if exe == "policy_executor":
            actions.append(DeclareLaunchArgument(
                "checkpoint", default_value=str(_declared(exe, path).get("checkpoint", "")),
                description="policy checkpoint from 'ws policy train'"))
            params.append({"checkpoint": LaunchConfiguration("checkpoint")})
        actions.append(Node(package="worldscape", executable=exe, name=exe, output="screen", parameters=params))
    return LaunchDescription(actions)


def run(name: str, overrides: dict | None = None, duration: float | None = None, out=None) -> int:
    """Start a graph's nodes as processes (``ws launch``), forward their output line by line
    prefixed with the node name, and stop them all on Ctrl-C, after ``duration`` seconds, or
    as soon as one exits.

    Returns:
        0 when every node stopped cleanly on request; otherwise the first failing exit status.

    Raises:
        KeyError: unknown graph.
    """
    import signal
    import subprocess
    import threading
    import time

    out = out or sys.stdout
    lock = threading.Lock()
    procs = []

    def forward(exe, stream):
        for line in stream:
            with lock:
                out.write(f"[{exe}] {line}")
                out.flush()

    for exe, argv in commands(name, overrides):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             preexec_fn=_default_sigint)  # the nodes stop on the SIGINT this forwards
        threading.Thread(target=forward, args=(exe, p.stdout), daemon=True).start()
        procs.append((exe, p))
    end = None if duration is None else time.monotonic() + duration
    failed = None
    try:
        while end is None or time.monotonic() < end:
            done = [(exe, p) for exe, p in procs if p.poll() is not None]
            if done:
                exe, p = done[0]
                failed = (exe, p.returncode)
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for exe, p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if failed is not None:
        with lock:
            out.write(f"ws launch: {failed[0]} exited with status {failed[1]}; stopped the graph\n")
        return failed[1] or 1
    bad = [(exe, p.returncode) for exe, p in procs if p.returncode not in (0, -signal.SIGINT)]
    return bad[0][1] if bad else 0


def _default_sigint() -> None:
    """In a node's child process before exec: SIGINT back to its default (an ignored SIGINT, as a
    background job inherits it, would survive exec and make the node deaf to the launcher)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_in_process(name: str, overrides: dict | None = None, duration: float | None = None) -> int:
    """Run a graph's nodes in this process on one executor (``ws launch``).

    The nodes read the graph's parameter files as ``ros2 launch`` passes them; ``overrides``
    (parameter -> value, parsed as YAML) go to every node whose parameter file declares the
    parameter, through one more parameter file. Stops on Ctrl-C or after ``duration`` seconds.

    Returns:
        0 after a clean stop, 2 when a node fails to start.

    Raises:
        KeyError: unknown graph.
    """
    import importlib
    import os
    import tempfile

    nodes = _graph(name)["nodes"]
    files = list(dict.fromkeys(str(params_file(f)) for _, f in nodes))
    extra = {}
    for exe, file in nodes:
        declared = _declared(exe, params_file(file))
        chosen = {k: yaml.safe_load(str(v)) for k, v in (overrides or {}).items() if k in declared}
        if chosen:
            extra[exe] = {"ros__parameters": chosen}
    factories = []
    for exe, _ in nodes:
        module, cls, args = NODES[exe]
        factories.append(lambda m=module, c=cls, a=args: getattr(importlib.import_module(m), c)(*a))
    from ws_ros.common import run_nodes

    with tempfile.TemporaryDirectory(prefix="ws-launch-") as tmp:
        ros_args = ["--ros-args"]
        for f in files:
            ros_args += ["--params-file", f]
        if extra:
            path = os.path.join(tmp, "overrides.yaml")
            with open(path, "w") as fh:
                yaml.safe_dump(extra, fh)
            ros_args += ["--params-file", path]
        return run_nodes(factories, ["ws-launch", *ros_args], duration=duration)
