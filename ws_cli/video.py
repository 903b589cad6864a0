"""``ws video clips|experts|revisit|distill``: the video world model's tools, the
``ws_worldmodel.video`` modules of the same names (``python -m ws_worldmodel.video.<tool>``
runs the same parser and code).

Each tool's arguments are its module's ``add_arguments``; the module (it imports torch and
MuJoCo) is imported only when its command is parsed or its help is shown, so other ``ws``
commands start as fast as before."""

from __future__ import annotations

import argparse
import importlib

from .common import Defaults, config_errors, group

#: tool -> one-line help (the module's docstring describes it in full)
TOOLS = {
    "clips": "RGB-D clips of the three control kinds (Go1 camera, PiPER joints and keypoints) from the simulators",
    "experts": "train and measure the control-expert video models: train, eval, drift, revisit",
    "revisit": "the memory's revisit test on a synthetic panning world: train, eval, coverage",
    "distill": "distil the bidirectional teacher into the chunk-causal student (Self-Forcing, DMD)",
}


def _tool(name: str):
    """The module ``ws_worldmodel.video.<name>``."""
    return importlib.import_module(f"ws_worldmodel.video.{name}")


class _ToolParser(argparse.ArgumentParser):
    """A parser whose arguments its tool's module adds the first time the parser is used."""

    def __init__(self, *args, tool: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._tool = tool

    def _load(self) -> None:
        """Add the tool's arguments (once) and its module docstring's first paragraph as description."""
        if self._tool:
            module, self._tool = _tool(self._tool), None
            self.description = module.__doc__.split("\n\n")[0]
            module.add_arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def cmd_video(args) -> int:
    """Run the video tool ``args.video_command`` (its module's ``run``)."""
    with config_errors(also=(OSError,)):  # as 'python -m' reports them: bad input, unreadable files
        return int(_tool(args.video_command).run(args) or 0)


def add_video(sub) -> None:
    """``ws video clips|experts|revisit|distill``."""
    vsub = group(sub, "video", help="the video world model: clips, control-expert models, revisit test, distillation",
                 description="The video world model's tools (ws_worldmodel.video): make RGB-D clips, train and "
                             "measure the control-expert models, run the memory's revisit test, distil the "
                             "teacher into the real-time student.", metavar="TOOL", parser_class=_ToolParser)
    for name, text in TOOLS.items():
        vsub.add_parser(name, help=text, tool=name, formatter_class=Defaults).set_defaults(func=cmd_video)
