"""What every command group of ``ws`` shares: the parser shapes, the run-time setup (threads,
offscreen rendering, the device) and the one place library errors become one-line messages."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Callable

Defaults = argparse.ArgumentDefaultsHelpFormatter


def group(sub, name: str, help: str, description: str, metavar: str = "SUBCOMMAND", **kw):
    """A command group ``ws NAME ...``: its parser under ``sub`` and the action to add its
    subcommands to (their name lands in ``args.<name>_command``; ``kw`` as ``add_subparsers``')."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar, **kw)


def command(sub, name: str, func: Callable, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A command ``NAME`` under ``sub`` that runs ``func(args)``, its defaults shown in ``--help``."""
    kw = {} if description is None else {"description": description}
    p = sub.add_parser(name, help=help, formatter_class=Defaults, **kw)
    p.set_defaults(func=func)
    return p


def environments() -> list[str]:
    """The environment names ``--env`` takes (for help texts)."""
    from ws_sim.envs import ENVIRONMENTS

    return sorted(ENVIRONMENTS) + ["go1", "piper"]


def add_threads(p: argparse.ArgumentParser, help: str | None = "torch CPU threads", default: int | None = None) -> None:
    """``--threads N``."""
    p.add_argument("--threads", type=int, default=default, help=help)


def add_seed(p: argparse.ArgumentParser, help: str | None = None, default: int = 0) -> None:
    """``--seed N``."""
    p.add_argument("--seed", type=int, default=default, help=help)


def add_device(p: argparse.ArgumentParser, auto: bool = False) -> None:
    """``--device``: where a trainer keeps its model and batches. ``auto`` (the world-model
    trainers, which have always taken CUDA when present) adds the choice ``auto``, its default."""
    if auto:
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where the model and batches live while training (auto: CUDA when present, else the CPU)")
    else:
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where the model and batches live while training")


def device_of(args) -> str | None:
    """``args.device`` as the libraries take it: None for ``auto`` (their own choice)."""
    return None if args.device == "auto" else args.device


def check_device(device: str | None) -> None:
    """Refuse a CUDA device on a machine without one, before any work.

    Raises:
        ConfigError: ``device`` is a CUDA device and torch sees no GPU.
    """
    if not device or not device.startswith("cuda"):
        return
    import torch

    from ws_mppi.config import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                          f"use --device cpu")


def headless_gl() -> None:
    """Offscreen MuJoCo rendering on a machine without a display (OSMesa on CPU)."""
    if not os.environ.get("DISPLAY") and "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def set_threads(n: int | None) -> int:
    """Give torch ``n`` CPU threads (None: all cores); returns the number."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def split_list(text: str | None) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]`` (empty or None: ``[]``)."""
    return [s for s in (text or "").split(",") if s]


@contextlib.contextmanager
def config_errors(prefix: str = "", also: tuple[type[BaseException], ...] = ()):
    """Inside it, a plain ``ValueError`` (and any of ``also``) raised by a library call is the
    user's error: re-raised as ``ConfigError`` (``prefix`` + its message), so :func:`ws_cli.main.main`
    reports it in one line. Use it around calls whose documented ``ValueError`` means bad input;
    the libraries' own error types pass through as they are."""
    from ws_mppi.config import ConfigError

    try:
        yield
    except user_errors():
        raise
    except (ValueError, *also) as e:
        raise ConfigError(f"{prefix}{e}") from e


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user asked for: each package's one error type (``SimError``,
    ``WorldModelError``, ``MPPIError``, ``PolicyError``; every error a package raises for bad input
    subclasses it), recordings, and missing or unreadable files. Reported in one line, no
    traceback. Imported only when an error reaches :func:`ws_cli.main.main`."""
    from ws_mppi.errors import MPPIError
    from ws_policy.errors import PolicyError
    from ws_ros.mcap_io import RecordingError
    from ws_sim.errors import SimError
    from ws_worldmodel.errors import WorldModelError

    return (SimError, WorldModelError, MPPIError, PolicyError, RecordingError,
            FileNotFoundError, IsADirectoryError, PermissionError)
