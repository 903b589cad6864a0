"""``ws launch``: start a ROS 2 node graph of ``ws_ros/graphs.py`` without ``ros2 launch``."""

from __future__ import annotations

from .common import command


def cmd_launch(args) -> int:
    """List the graphs, or start one (in this process, or one process per node) until Ctrl-C."""
    from ws_mppi.config import ConfigError
    from ws_ros.graphs import GRAPHS, run

    if args.list or not args.graph:
        for name, g in GRAPHS.items():
            print(f"{name:<14} {g['description']}")
        return 0
    if args.graph not in GRAPHS:  # graphs.py raises KeyError: named here, before rclpy is looked for
        raise ConfigError(f"unknown graph {args.graph!r}; choose one of {sorted(GRAPHS)}")
    import importlib.util

    if importlib.util.find_spec("rclpy") is None:
        raise ConfigError("ws launch needs rclpy: source a ROS 2 install, or pip install -e '.[ros]'")
    overrides = {}
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ConfigError(f"-p expects NAME:=VALUE (ROS 2's syntax), got {item!r}")
        overrides[name] = value
    if args.dynamics:
        overrides["dynamics"] = args.dynamics
    import signal

    # A shell starts background jobs with SIGINT ignored, and Python keeps it ignored: then neither
    # Ctrl-C nor 'kill -INT' would stop the graph. ros2 launch handles SIGINT whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.processes:
        return run(args.graph, overrides, duration=args.duration)
    from ws_ros.graphs import run_in_process

    return run_in_process(args.graph, overrides, duration=args.duration)


def add_launch(sub) -> None:
    """``ws launch``."""
    la = command(sub, "launch", cmd_launch,
                 help="start a ROS 2 node graph (go1_sim, hopper_sim, ...) without ros2 launch",
                 description="Start the nodes of a graph defined in ws_ros/graphs.py with their parameter "
                             "files from config/ros/, the graph 'ros2 launch worldscape <graph>.launch.py' "
                             "starts: in this process on one executor, or with --processes as "
                             "one process per node talking over DDS. Ctrl-C stops them all.")
    la.add_argument("graph", nargs="?", default="", help="graph name (see --list)")
    la.add_argument("--list", action="store_true", help="list the graphs")
    la.add_argument("--dynamics", default="", help="override the controller's dynamics (oracle, default or a path)")
    la.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    la.add_argument("--processes", action="store_true", help="one process per node (as ros2 launch does)")
    la.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="set a parameter on every node of the graph whose parameter file declares it, e.g. "
                         "-p real_time_factor:=0.5 (repeatable)")
