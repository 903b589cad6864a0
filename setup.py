"""Install the WorldScape stack (ROS 2 ament_python package ``worldscape``).

``sim/`` installs as ``ws_sim`` and ``distill/`` as ``ws_distill`` (DESIGN.md), so nothing
installs a top-level module called ``sim``.
"""

from glob import glob

from setuptools import setup

PACKAGE = "worldscape"

cmdclass = {}
try:
    from setuptools.command.develop import develop as _develop
except ImportError:  # a setuptools without `develop`: nothing reads setup.cfg's [develop]
    _develop = None
if _develop is not None:

    class develop(_develop):
        """setup.cfg's script dirs (lib/worldscape, for `ros2 run`) for colcon's develop only.

        colcon build --symlink-install runs `setup.py develop --editable ...` (setuptools < 80).
        pip's legacy editable install (pip < 25 with `wheel` importable and no pyproject.toml,
        e.g. setup.sh's --system-site-packages venv over a ROS 2 install) runs `setup.py develop`
        without --editable: its scripts belong in the venv's bin/, so it drops the script dirs
        that setup.cfg gives ([develop] script_dir, [install] install_scripts), not those given
        on the command line. setuptools >= 80 reduced develop to `pip install -e .`, without a
        script_dir option: it is declared here so that setup.cfg still parses there.
        """

        if not any(opt[0].rstrip("=") == "script-dir" for opt in _develop.user_options):
            user_options = list(_develop.user_options) + [("script-dir=", None, "ignored: pip decides")]
            script_dir = None

        def finalize_options(self):
            if not getattr(self, "editable", False):
                for command, option in (("develop", "script_dir"), ("install", "install_scripts")):
                    given = self.distribution.get_option_dict(command)
                    if given.get(option, ("command line",))[0] != "command line":
                        del given[option]
                        if command == "develop":
                            self.script_dir = None
            super().finalize_options()

    cmdclass["develop"] = develop

setup(
    name=PACKAGE,
    version="0.1.0",
    description="WorldScape: learned world models for robot control (MPPI, policies, distillation)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["ws_worldmodel", "ws_worldmodel.video", "ws_mppi", "ws_policy", "ws_sim", "ws_distill", "ws_cli", "ws_ros", "ws_ros.nodes"],
    package_dir={"ws_sim": "sim", "ws_distill": "distill"},
    package_data={"ws_worldmodel": ["checkpoints/*.pt"], "ws_policy": ["checkpoints/*.pt"], "ws_sim": ["assets/*.xml"],
                  "ws_mppi": ["experts/*/*.pt", "experts/*/*.npz", "experts/*/*.json", "experts/*/*.csv",
                              "experts/*/*.png"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
        ("share/" + PACKAGE + "/config/ros", glob("config/ros/*.yaml")),
    ],
    install_requires=[
        "torch==2.13.0",
        "mujoco==3.17.0",
        "dm-control==1.0.50",
        "gymnasium[mujoco]>=1.0,<2",
        "numpy>=1.26",
        "h5py>=3.10",
        "minari>=0.5,<0.6",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "imageio>=2.34",
        "imageio-ffmpeg>=0.5",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "mcap>=1.2,<2",  # teleoperator recordings (DESIGN.md: MCAP, ROS 2 profile)
        "mcap-ros2-support>=0.5,<1",
        "stable-baselines3==2.9.2",  # trains the Hopper/Walker2d experts (ws expert; needs torch>=2.8)
        "mink==1.3.0",  # the PiPER's inverse kinematics (ws_sim.piper.solve_ik; brings qpsolvers and daqp)
    ],
    extras_require={
        "test": ["pytest>=8"],
        "bench": ["pytorch-mppi==0.9.1"],
        # ROS 2 Jazzy from PyPI wheels, for machines without a ROS 2 install (DESIGN.md);
        # on a robot, rclpy and the messages come from the sourced ROS 2 install instead
        "ros": ["ros-jazzy-rclpy", "ros-jazzy-rmw-fastrtps-cpp", "ros-jazzy-std-msgs", "ros-jazzy-sensor-msgs",
                "ros-jazzy-nav-msgs", "ros-jazzy-geometry-msgs", "ros-jazzy-trajectory-msgs",
                "ros-jazzy-diagnostic-msgs", "ros-jazzy-rosgraph-msgs", "ros-jazzy-std-srvs"],
    },
    entry_points={
        "console_scripts": [
            "ws = ws_cli.main:main",
            "sim_bridge = ws_ros.nodes.sim_bridge:main",
            "mppi_controller = ws_ros.nodes.mppi_controller:main",
            "go1_bridge = ws_ros.nodes.hardware_bridge:main_go1",
            "piper_bridge = ws_ros.nodes.hardware_bridge:main_piper",
            "policy_executor = ws_ros.nodes.policy_executor:main",
            "teleop = ws_ros.nodes.teleop:main",
            "correction_recorder = ws_ros.nodes.correction_recorder:main",
            "state_estimator = ws_ros.nodes.state_estimator:main",
        ],
    },
    cmdclass=cmdclass,
    zip_safe=False,
)
