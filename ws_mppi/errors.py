"""The one error type of ``ws_mppi``: every error the package raises for bad input
(:class:`ws_mppi.config.ConfigError`, :class:`ws_mppi.expert.ExpertError`) subclasses
:class:`MPPIError` (itself a ``ValueError``)."""

from __future__ import annotations

__all__ = ["MPPIError"]


class MPPIError(ValueError):
    """Bad input to the planner, its configuration or its experts: the message names what was wrong."""
