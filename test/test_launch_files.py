"""Launch files and parameter files, as far as this machine allows (no ros2 launch here).

``launch``/``launch_ros`` are not on PyPI. What is checked: every launch file compiles and
names a graph that exists; built against recording stand-ins of those two modules, it
describes the nodes, names and parameter files that ``ws launch`` runs; every graph's
parameter file parses as a ROS 2 parameter file with a section per node, and the parameters
it sets are ones the nodes declare (read from the node sources).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from ws_ros.graphs import EXECUTABLES, GRAPHS, commands, params_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_file_names_an_existing_graph(path):
    tree = ast.parse(path.read_text())
    graph = path.name.removesuffix(".launch.py")
    assert graph in GRAPHS
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "launch_description"]
    assert [c.args[0].value for c in calls] == [graph]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def _declared_by(exe: str) -> set[str]:
    module = EXECUTABLES[exe][0]
    src = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    builtin = {"use_sim_time"}  # rclpy declares it on every node
    return set(re.findall(r'\bp\("(\w+)"', src)) | set(re.findall(r'declare_parameter\("(\w+)"', src)) | builtin


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_graph_parameter_files_match_the_nodes(graph):
    assert sorted(f.name for f in (ROOT / "launch").glob("*.launch.py")) == sorted(f"{g}.launch.py" for g in GRAPHS)
    for exe, file in GRAPHS[graph]["nodes"]:
        doc = yaml.safe_load(params_file(file).read_text())
        params = doc[exe]["ros__parameters"]
        unknown = set(params) - _declared_by(exe)
        assert not unknown, f"{file}: {exe} does not declare {unknown}"
    cmds = commands(graph, {"dynamics": "oracle"})
    assert [c[0] for c in cmds] == [exe for exe, _ in GRAPHS[graph]["nodes"]]
    for exe, argv in cmds:
        assert ("dynamics:=oracle" in argv) == (exe == "mppi_controller")


@pytest.mark.parametrize("path", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_file_describes_the_nodes_and_parameters_ws_launch_runs(path, monkeypatch):
    """``launch``/``launch_ros`` cannot be installed here, so minimal stand-ins that only record what
    they are given (no behaviour) let each launch file build its description: the same executables,
    node names and parameter files as ``ws launch`` runs, and the ``dynamics`` launch argument."""
    import importlib.util
    import sys
    import types

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    modules = {name: types.ModuleType(name) for name in
               ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions")}
    modules["launch"].LaunchDescription = Recorder
    modules["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (Recorder,), {})
    modules["launch.substitutions"].LaunchConfiguration = type("LaunchConfiguration", (Recorder,), {})
    modules["launch_ros.actions"].Node = type("Node", (Recorder,), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    desc = module.generate_launch_description()
    actions = desc.args[0]
    nodes = [a.kwargs for a in actions if type(a).__name__ == "Node"]
    graph = path.name.removesuffix(".launch.py")
    expected = GRAPHS[graph]["nodes"]
    assert [(n["package"], n["executable"], n["name"]) for n in nodes] == [("worldscape", exe, exe) for exe, _ in expected]
    for n, (exe, file) in zip(nodes, expected):
        assert n["parameters"][0] == str(params_file(file))
        argv = dict(commands(graph))[exe]
        assert argv[argv.index("--params-file") + 1] == n["parameters"][0]  # the file ws launch passes
    args = [a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"]
    expected_args = {"mppi_controller": "dynamics", "policy_executor": "checkpoint"}
    assert args == [expected_args[exe] for exe, _ in expected if exe in expected_args]
