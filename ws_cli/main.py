"""The ``ws`` command line: data, training and closed-loop evaluation.

    ws collect         oracle-MPPI datasets (seed 003, Appendix C.5)                 ws_cli/data.py
    ws corpus build    the multi-system pretraining corpus (dm_control + Gymnasium)  ws_cli/data.py
    ws train           fit a dynamics model (MLPEnsemble) on a dataset               ws_cli/worldmodel.py
    ws pretrain        pretrain WestWorld (or the TrajWorld/TDM baselines) on a corpus
    ws eval zero-shot  seed 003's Table 1 protocol on held-out systems               ws_cli/evaluation.py
    ws eval few-shot   seed 003's Table 2 / Fig. 6 protocol on an unseen system
    ws eval routing    seed 003's Fig. 4: routing weights per system
    ws eval scalability  seed 003's Fig. 3: error against the number of pretraining environments
    ws eval ablation   seed 003's Table 4: without Sys-MoE, without the structural embedding
    ws eval control    seed 003's Table 3: MPPI with each world model
    ws distill         distil a WestWorld into a small student                       ws_cli/distill.py
    ws export          a WestWorld as ONNX for MPPI
    ws launch          start a ROS 2 node graph without ros2 launch                  ws_cli/launch.py
    ws policy ...      the video-depth-action policy: collect, train, eval           ws_cli/policy.py
    ws teleop          drive the PiPER from the keyboard (teleop/joy for the teleop node)  ws_cli/teleop.py
    ws hitl ...        human-in-the-loop: convert, dagger, retrain, recover          ws_cli/hitl.py
    ws mppi run        MPPI closed loop with oracle, learned or zero dynamics        ws_cli/mppi.py
    ws expert ...      Hopper/Walker2d expert policies (stable-baselines3): train, export, eval  ws_cli/expert.py
    ws video ...       the video world model: clips, experts, revisit, distill      ws_cli/video.py

Every subcommand has ``--help``; every one where randomness enters takes ``--seed``; every
trainer takes ``--device``. Errors of the user's making (each library's error type) print one
line and exit 2 (:func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import data, distill, evaluation, expert, hitl, launch, mppi, policy, teleop, video, worldmodel
from .common import check_device, headless_gl, user_errors

#: the top-level commands in the order ``ws --help`` lists them
COMMANDS = (data.add_collect, worldmodel.add_train, data.add_corpus, worldmodel.add_pretrain, evaluation.add_eval,
            distill.add_distill, distill.add_export, launch.add_launch, policy.add_policy, teleop.add_teleop,
            hitl.add_hitl, mppi.add_mppi, expert.add_expert, video.add_video)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ws`` parser: every command group's parser under one ``COMMAND``."""
    p = argparse.ArgumentParser(prog="ws", description="WorldScape: learned world models for robot control.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``ws`` with ``argv`` (default: the process's); returns the exit status: 0, 2 for an
    error of the user's making (one line on stderr), 130 on Ctrl-C."""
    headless_gl()  # before anything imports mujoco: it picks its OpenGL backend at import time
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("ws", "ws_mppi", "ws_worldmodel", "ws_sim"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        check_device(getattr(args, "device", None))  # --device cuda without CUDA: before any work
        return int(args.func(args) or 0)
    except user_errors() as e:
        print(f"ws: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ws: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
