"""The ``python -m ws_worldmodel.video.<tool>`` entry point the video tools share: the module's
``add_arguments`` and ``run``, the same ones ``ws video <tool>`` runs."""

from __future__ import annotations

import argparse
import sys


def tool_main(module: str, doc: str, add_arguments, run, argv=None,
              errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Parse ``argv`` with ``add_arguments`` (prog ``python -m module``, description the first
    paragraph of ``doc``) and ``run`` it; ``errors`` print ``error: ...`` and return 2."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
