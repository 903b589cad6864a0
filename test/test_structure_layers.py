"""The package layering of ../shared/DESIGN.md, checked on the source with the standard library's ``ast``.

Every ``.py`` file of the installed packages is parsed (nothing is imported), and every import is
counted: at module level, inside functions and methods, under ``if``/``try``, and
``importlib.import_module`` calls with a literal name (an f-string counts by its literal start).

* :data:`ALLOWED` is the rule: which WorldScape package may import which. The core libraries sit
  on ``ws_sim`` (MuJoCo models, environments, data, robot I/O and the safety layer), the world
  models on ``ws_sim``, and the planner, the policy and distillation on both; the ROS 2 nodes
  (``ws_ros``) and the ``ws`` command (``ws_cli``) are the outer layers.
* No two modules import each other, directly or through others (no cycles in the module graph).
* No core library imports ``rclpy`` or a ROS 2 message package.

A package ``__init__`` that imports its own submodules is not a cycle with them: importing
``pkg.mod`` runs ``pkg/__init__.py`` first, so only the imports written in a file are edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the WorldScape packages it may import (DESIGN.md's layers, inside out)
ALLOWED: dict[str, frozenset[str]] = {
    "ws_sim": frozenset(),
    "ws_worldmodel": frozenset({"ws_sim"}),
    "ws_mppi": frozenset({"ws_sim", "ws_worldmodel"}),
    "ws_policy": frozenset({"ws_sim", "ws_worldmodel"}),
    "ws_distill": frozenset({"ws_sim", "ws_worldmodel"}),
    "ws_ros": frozenset({"ws_sim", "ws_worldmodel", "ws_mppi", "ws_policy", "ws_distill"}),
    "ws_cli": frozenset({"ws_sim", "ws_worldmodel", "ws_mppi", "ws_policy", "ws_distill", "ws_ros"}),
}
#: modules of an outer layer kept off a package their layer may import: the policy executor and
#: the bridges share the safety layer (``ws_sim.safety``) with the MPPI controller, not the planner
NOT_IMPORTED_BY = {
    "ws_ros.nodes.policy_executor": frozenset({"ws_mppi"}),
    "ws_ros.nodes.sim_bridge": frozenset({"ws_mppi", "ws_policy"}),
    "ws_ros.nodes.hardware_bridge": frozenset({"ws_mppi", "ws_policy"}),
    "ws_ros.drivers": frozenset({"ws_mppi", "ws_policy"}),
}
CORE = ("ws_sim", "ws_worldmodel", "ws_mppi", "ws_policy", "ws_distill")
ROS_ONLY = ("rclpy", "rosidl_runtime_py", "rosgraph_msgs")  # plus every *_msgs / *_srvs package


def setup_packages(root: Path = ROOT) -> dict[str, Path]:
    """Top-level package -> its folder, from setup.py's ``packages`` and ``package_dir`` (read with ast)."""
    tree = ast.parse((root / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("packages", "package_dir")}
    dirs = kw.get("package_dir", {})
    return {p: root / dirs.get(p, p) for p in kw["packages"] if "." not in p}


def collect_modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``) for every ``.py`` file of ``packages``."""
    mods = {}
    for pkg, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            is_init = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return mods


def _literal_prefix(node: ast.expr) -> tuple[str, bool] | None:
    """A string literal (exact) or an f-string's literal start (inexact) -> (text, exact)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value), False
    return None


def imports_of(name: str, path: Path, is_init: bool) -> list[tuple[str, int, bool]]:
    """Every import in a file as ``(dotted target, line, exact)``; relative imports resolved.

    ``from X import a`` yields ``X.a`` (a submodule or a name in ``X``: :func:`resolve` decides).
    """
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, True) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_init else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out += [(f"{module}.{a.name}", node.lineno, True) for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__"):
                lit = _literal_prefix(node.args[0])
                if lit and lit[0] and not lit[0].startswith("."):
                    out.append((lit[0].rstrip("."), node.lineno, lit[1]))
    return out


def resolve(target: str, mods: dict) -> str | None:
    """The longest known module that ``target`` names (``pkg.mod.func`` -> ``pkg.mod``)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return None


def import_graph(mods: dict) -> tuple[dict[str, dict[str, int]], list[tuple[str, str, int]]]:
    """``(edges, imports)``: module -> {imported module: line}, and every ``(module, target, line)``."""
    edges, imports = {}, []
    for name, (path, is_init) in mods.items():
        for target, line, exact in imports_of(name, path, is_init):
            imports.append((name, target, line))
            dst = resolve(target, mods) if exact else None
            if dst is not None and dst != name:
                edges.setdefault(name, {}).setdefault(dst, line)
    return edges, imports


def cycles(nodes, edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def layer_violations(mods: dict, imports: list, allowed: dict[str, frozenset[str]]) -> list[str]:
    out = []
    for name, target, line in imports:
        src, dst = name.split(".")[0], target.split(".")[0]
        if dst in allowed and dst != src and dst not in allowed[src]:
            out.append(f"{mods[name][0].relative_to(ROOT)}:{line}: {src} imports {target} ({src} may import "
                       f"{sorted(allowed[src]) or 'no other WorldScape package'})")
    return out


def describe_cycles(found: list[list[str]], edges: dict) -> list[str]:
    return [f"cycle {' <-> '.join(comp)}: " + ", ".join(f"{a} -> {b} (line {edges[a][b]})" for a in comp
                                                        for b in edges.get(a, {}) if b in comp) for comp in found]


class _Tree(tuple):
    def __repr__(self):  # pytest prints fixtures of failing tests: keep it one line
        return f"<the {len(self[1])} modules of {', '.join(self[0])}>"


@pytest.fixture(scope="module")
def tree():
    packages = setup_packages()
    mods = collect_modules(packages)
    edges, imports = import_graph(mods)
    return _Tree((packages, mods, edges, imports))


def test_the_rules_cover_every_installed_package_and_are_layered(tree):
    packages, mods, _, _ = tree
    assert set(packages) == set(ALLOWED), "every top-level package in setup.py needs a rule in ALLOWED"
    assert sum(1 for m in mods if m.startswith("ws_sim.")) > 5 and "ws_distill.export" in mods  # sim/, distill/ read
    assert not cycles(list(ALLOWED), {p: dict.fromkeys(deps, 0) for p, deps in ALLOWED.items()}), \
        "the rules themselves must be layered (no two packages allowed to import each other)"
    for outer in ("ws_ros", "ws_cli"):
        assert not any(outer in ALLOWED[p] for p in CORE), f"no core library may import {outer}"


def test_every_package_imports_only_the_layers_below_it(tree):
    _, mods, _, imports = tree
    bad = layer_violations(mods, imports, ALLOWED)
    assert not bad, "imports against DESIGN.md's layers:\n" + "\n".join(bad)


def test_the_policy_executor_and_the_bridges_do_not_import_the_planner(tree):
    _, mods, _, imports = tree
    assert set(NOT_IMPORTED_BY) <= set(mods)
    bad = [f"{mods[name][0].relative_to(ROOT)}:{line}: {target}" for name, target, line in imports
           if target.split(".")[0] in NOT_IMPORTED_BY.get(name, ())]
    assert not bad, "these modules share ws_sim.safety instead:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules(tree):
    _, mods, edges, _ = tree
    found = cycles(sorted(mods), edges)
    assert not found, "modules that import each other:\n" + "\n".join(describe_cycles(found, edges))


def test_no_core_library_imports_ros(tree):
    _, mods, _, imports = tree
    bad = [f"{mods[name][0].relative_to(ROOT)}:{line}: {target}" for name, target, line in imports
           if name.split(".")[0] in CORE
           and (target.split(".")[0] in ROS_ONLY or target.split(".")[0].endswith(("_msgs", "_srvs")))]
    assert not bad, "core libraries are plain Python, NumPy and PyTorch (DESIGN.md):\n" + "\n".join(bad)


def test_the_checker_sees_function_level_relative_and_dynamic_imports(tmp_path):
    """The checker itself, on a small tree: each kind of import it must count."""
    (tmp_path / "setup.py").write_text('setup(packages=["low", "high"], package_dir={"low": "l"})\n')
    (tmp_path / "l").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "l" / "__init__.py").write_text("from . import a  # an __init__ importing its own module\n")
    (tmp_path / "l" / "a.py").write_text("from .b import f\n")
    (tmp_path / "l" / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (tmp_path / "l" / "c.py").write_text("import importlib\n\ndef g(n):\n    return importlib.import_module(f'high.{n}')\n")
    (tmp_path / "high" / "__init__.py").write_text("")
    (tmp_path / "high" / "h.py").write_text("import low.a\nfrom low import b\n")
    packages = setup_packages(tmp_path)
    assert packages == {"low": tmp_path / "l", "high": tmp_path / "high"}
    mods = collect_modules(packages)
    edges, imports = import_graph(mods)
    assert cycles(sorted(mods), edges) == [["low.a", "low.b"]]  # b's import inside a function counts
    assert edges["high.h"] == {"low.a": 1, "low.b": 2} and "low" not in edges.get("low.a", {})
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        bad = layer_violations(mods, imports, {"low": frozenset(), "high": frozenset({"low"})})
    finally:
        ROOT = saved
    assert bad == ["l/c.py:4: low imports high (low may import no other WorldScape package)"]


def test_each_package_has_one_error_type_the_cli_reports():
    """Every error class a core package defines for bad input subclasses the package's one error type, and
    the command line reports exactly those types in one line."""
    import inspect

    from ws_cli.common import user_errors
    from ws_mppi import config, expert
    from ws_mppi.errors import MPPIError
    from ws_policy import model, train
    from ws_policy.errors import PolicyError
    from ws_sim import channels, corpus, dataset, demos, envs, piper, safety
    from ws_sim.errors import SimError
    from ws_worldmodel import checkpoint_io
    from ws_worldmodel.errors import WorldModelError

    for base, modules in ((SimError, (channels, corpus, dataset, demos, envs, piper, safety)),
                          (MPPIError, (config, expert)), (WorldModelError, (checkpoint_io,)), (PolicyError, (model, train))):
        for mod in modules:
            errors = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                      if issubclass(c, ValueError) and c.__module__ == mod.__name__]
            assert errors, mod.__name__
            for c in errors:
                assert issubclass(c, base), f"{mod.__name__}.{c.__name__} is not a {base.__name__}"
    assert {SimError, WorldModelError, MPPIError, PolicyError} <= set(user_errors())
