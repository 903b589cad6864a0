"""The ROS 2 package (ament_python ``worldscape``), checked without colcon, ros2 or rosdep.

``package.xml`` declares what the code imports from ROS 2, ``joy``, and a rosdep key or a word
on pip for every Python dependency; ``setup.cfg`` puts the node scripts in ``lib/worldscape``
(where ``ros2 run`` looks) for ``colcon build`` ([install]) and ``colcon build --symlink-install``
([develop]); each node named in the docs has a console script whose target imports. The last
tests run colcon's own ``setup.py develop`` invocation (colcon-core's PythonBuildTask, into a
temporary workspace) with an interpreter whose setuptools is one colcon supports (< 80).
"""

from __future__ import annotations

import ast
import configparser
import importlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "worldscape"
NODES = ("mppi_controller", "policy_executor", "sim_bridge", "teleop", "correction_recorder", "go1_bridge",
         "piper_bridge")
# Python sources that run as part of the ROS 2 package: the nodes, their library, the launch files.
ROS_SOURCES = ("ws_ros", "launch", "ws_cli")
# Top-level modules that are ROS 2 packages (besides *_msgs, *_srvs, *_interfaces).
ROS_MODULES = {"rclpy", "launch", "launch_ros", "ament_index_python", "rosbag2_py", "tf2_ros", "message_filters",
               "rosidl_runtime_py", "rclpy_message_converter"}
# Imports that need a package the import does not name.
IMPLIED = {"rclpy.lifecycle": "lifecycle_msgs"}
# setup.py's install_requires name -> its rosdep key, where rosdistro's python.yaml has one for apt.
ROSDEP_KEYS = {"numpy": "python3-numpy", "pyyaml": "python3-yaml", "h5py": "python3-h5py",
               "matplotlib": "python3-matplotlib", "tqdm": "python3-tqdm", "imageio": "python3-imageio"}


def _package_xml():
    return ET.parse(ROOT / "package.xml").getroot()


def _depends(root, *tags):
    return {e.text.strip() for tag in tags for e in root.findall(tag)}


def _setup_kwargs():
    """setup()'s keyword arguments in setup.py that are literals (no setup.py run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            pass
    return out


def _console_scripts():
    out = {}
    for line in _setup_kwargs()["entry_points"]["console_scripts"]:
        name, target = (s.strip() for s in line.split("=", 1))
        out[name] = target
    return out


def _ros_packages_imported():
    """{ROS 2 package: [file:line, ...]} for every import in ROS_SOURCES, function-level included."""
    found: dict[str, list[str]] = {}
    for top in ROS_SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    first = name.split(".")[0]
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    if first in ROS_MODULES or re.search(r"_(msgs|srvs|interfaces)$", first):
                        found.setdefault(first, []).append(where)
                    for prefix, pkg in IMPLIED.items():
                        if name == prefix or name.startswith(prefix + "."):
                            found.setdefault(pkg, []).append(where)
    return found


def test_package_xml_is_format_3_ament_python_named_worldscape():
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("version") == _setup_kwargs()["version"]
    assert root.findtext("export/build_type") == "ament_python"
    assert (ROOT / "resource" / PACKAGE).is_file()  # the ament index marker setup.py installs


def test_package_xml_declares_every_ros_package_the_code_imports():
    imported = _ros_packages_imported()
    # the scan sees the imports it is there for (nodes, lifecycle nodes, launch files)
    assert {"rclpy", "launch", "launch_ros", "sensor_msgs", "lifecycle_msgs"} <= set(imported), sorted(imported)
    declared = _depends(_package_xml(), "exec_depend", "depend")
    missing = {pkg: where[:3] for pkg, where in imported.items() if pkg not in declared}
    assert not missing, f"package.xml lacks <exec_depend> for {missing}"


def test_package_xml_declares_joy_and_a_rosdep_key_or_pip_for_every_python_dependency():
    root = _package_xml()
    declared = _depends(root, "exec_depend", "depend")
    assert "joy" in declared  # teleop/joy comes from `ros2 run joy joy_node`
    assert "python3-pytest" in _depends(root, "test_depend", "depend")
    with_comments = ET.parse(ROOT / "package.xml", parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    comments = " ".join(e.text or "" for e in with_comments.iter() if e.tag is ET.Comment).lower()
    assert "pip" in comments
    undecided = []
    for req in _setup_kwargs()["install_requires"]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        key = ROSDEP_KEYS.get(name)
        if key is not None:
            assert key in declared, f"{req}: rosdep key {key} not declared"
        elif not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", comments):
            undecided.append(req)
    assert not undecided, f"no rosdep key declared and no package.xml comment says they come from pip: {undecided}"
    # only keys that exist: rosdistro's rosdep/python.yaml (checked when this list was written)
    keys = {d for d in declared if d.startswith("python3-")}
    assert keys <= set(ROSDEP_KEYS.values()) | {"python3-scipy"}, keys


def test_setup_cfg_puts_the_scripts_in_lib_worldscape_for_install_and_develop():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")

    def get(section, key):
        return cfg.get(section, key, fallback=None) or cfg.get(section, key.replace("_", "-"), fallback=None)

    assert get("install", "install_scripts") == f"$base/lib/{PACKAGE}"
    assert get("develop", "script_dir") == f"$base/lib/{PACKAGE}"


@pytest.mark.filterwarnings("ignore:develop command is deprecated")
def test_setup_cfg_develop_section_parses_with_this_setuptools(monkeypatch):
    """setuptools >= 80 has no develop --script-dir; setup.py's develop command declares it."""
    import setuptools  # noqa: F401  (its distutils)
    from distutils.core import run_setup

    monkeypatch.chdir(ROOT)
    dist = run_setup(str(ROOT / "setup.py"), script_args=["develop"], stop_after="commandline")
    develop = dist.get_command_obj("develop")  # applies setup.cfg: DistutilsOptionError if unknown
    assert develop.script_dir == f"$base/lib/{PACKAGE}"


@pytest.mark.parametrize("node", NODES)
def test_console_script_of_each_documented_node_exists_and_its_target_imports(node):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: pip install -e '.[ros]'")
    scripts = _console_scripts()
    assert node in scripts, f"setup.py has no console script {node}"
    module, func = scripts[node].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_every_node_the_docs_run_has_a_console_script():
    files = [ROOT / "README.md", *ROOT.glob("launch/*.md"), *(ROOT / "ws_ros").rglob("*.py")]
    docs = " ".join(p.read_text() for p in files)
    documented = set(re.findall(rf"ros2 run {PACKAGE} (\w+)", docs))
    assert set(NODES) <= documented, set(NODES) - documented
    assert documented <= set(_console_scripts()), documented - set(_console_scripts())


# ---- colcon's `setup.py develop` (colcon build --symlink-install), emulated -------------------------

def _old_setuptools_python():
    """An interpreter whose setuptools colcon supports (< 80, with develop --editable), or None."""
    candidates = [getattr(sys, "_base_executable", None), "/usr/bin/python3"]
    for exe in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        r = subprocess.run([exe, "-c", "import setuptools; print(setuptools.__version__)"], capture_output=True,
                           text=True, timeout=60)
        if r.returncode == 0 and int(r.stdout.strip().split(".")[0]) < 80:
            return exe
    return None


def _colcon_develop(tmp_path, python, extra_args=("--editable",)):
    """colcon-core's PythonBuildTask for `colcon build --symlink-install`: symlink the sources into
    build/worldscape, point sys.prefix at install/worldscape (its sitecustomize), and run
    `setup.py develop --editable --build-directory build/worldscape/build --no-deps` there.
    Returns (install base, the process)."""
    build, install = tmp_path / "build" / PACKAGE, tmp_path / "install" / PACKAGE
    (build / "prefix_override").mkdir(parents=True)
    prefix, purelib = subprocess.check_output(
        [python, "-c", "import sys, sysconfig; print(sys.prefix); "
                       "print(sysconfig.get_path('purelib', vars={'base': '/B', 'platbase': '/B'}))"],
        text=True).split("\n")[:2]
    python_lib = install / os.path.relpath(purelib, "/B")
    python_lib.mkdir(parents=True)
    (build / "prefix_override" / "sitecustomize.py").write_text(
        f"import sys\nif sys.prefix == {prefix!r}:\n    sys.real_prefix = sys.prefix\n"
        f"    sys.prefix = sys.exec_prefix = {str(install)!r}\n")
    kwargs = _setup_kwargs()
    renamed = kwargs.get("package_dir", {})
    temp = []
    for item in ["setup.py", "setup.cfg"] + [p for p in kwargs["packages"] if "." not in p]:
        src = renamed.get(item, item)
        (build / src).symlink_to(ROOT / src)
        if src != item:  # colcon links both names while setup.py runs, then drops the source name
            (build / item).symlink_to(ROOT / src)
            temp.append(build / src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(build / "prefix_override"), str(python_lib)]))
    env.pop("PYTHONHOME", None)
    cmd = [python, "setup.py", "develop", *extra_args, "--build-directory", str(build / "build"), "--no-deps"]
    try:
        proc = subprocess.run(cmd, cwd=build, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for link in temp:
            link.unlink()
    return install, proc


def _scripts(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_colcon_symlink_install_develop_puts_the_node_scripts_in_lib_worldscape(tmp_path):
    python = _old_setuptools_python()
    if python is None:
        pytest.skip("no interpreter with setuptools < 80 (colcon's develop needs one) on this machine")
    install, proc = _colcon_develop(tmp_path, python)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    installed = _scripts(install / "lib" / PACKAGE)
    assert set(NODES) | {"ws"} <= set(installed), (installed, proc.stdout[-2000:])
    assert _scripts(install / "bin") == []
    teleop = (install / "lib" / PACKAGE / "teleop").read_text()
    assert "console_scripts" in teleop and "teleop" in teleop  # an entry-point wrapper, not a copy
    assert not list(ROOT.glob("*.egg-link")) and not (ROOT / "build").exists()  # nothing in the sources


def test_pips_legacy_setup_py_develop_keeps_the_scripts_in_bin(tmp_path):
    """pip < 25 runs `setup.py develop` (no --editable) where `wheel` imports and there is no
    pyproject.toml (e.g. a --system-site-packages venv over ROS 2): its scripts go to bin/."""
    python = _old_setuptools_python()
    if python is None:
        pytest.skip("no interpreter with setuptools < 80 on this machine")
    install, proc = _colcon_develop(tmp_path, python, extra_args=())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert set(NODES) <= set(_scripts(install / "bin")), (_scripts(install / "bin"), proc.stdout[-2000:])
    assert _scripts(install / "lib" / PACKAGE) == []
