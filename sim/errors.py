"""The one error type of ``ws_sim``: every error the package raises for bad input subclasses
:class:`SimError` (itself a ``ValueError``), so callers such as the ``ws`` command line catch
the package's errors with one name."""

from __future__ import annotations

__all__ = ["SimError"]


class SimError(ValueError):
    """Bad input to a ``ws_sim`` function: the message names what was wrong."""
