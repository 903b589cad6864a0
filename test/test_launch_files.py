"""Launch files and parameter files, as far as this machine allows (no ros2 launch here).

``launch``/``launch_ros`` are not on PyPI, so the launch descriptions are not built here;
what is checked: every launch file compiles and names a graph that exists, every graph's
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
