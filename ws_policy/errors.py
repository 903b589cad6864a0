"""The one error type of ``ws_policy``: every error the package raises for bad input
(:class:`ws_policy.model.PolicyInputError`, :class:`ws_policy.train.PolicyCheckpointError`)
subclasses :class:`PolicyError` (itself a ``ValueError``)."""

from __future__ import annotations

__all__ = ["PolicyError"]


class PolicyError(ValueError):
    """Bad input to the policy, its training or its files: the message names what was wrong."""
