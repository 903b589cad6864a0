"""The one error type of ``ws_worldmodel``: every error the package raises for bad input
(e.g. :class:`ws_worldmodel.checkpoint_io.CheckpointError`) subclasses :class:`WorldModelError`
(itself a ``ValueError``)."""

from __future__ import annotations

__all__ = ["WorldModelError"]


class WorldModelError(ValueError):
    """Bad input to a world model, its training or its files: the message names what was wrong."""
