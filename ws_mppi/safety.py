"""The controller's safety layer now lives in :mod:`ws_sim.safety`, which the MPPI controller, the
policy executor and the bridges share without importing the planner; this module re-exports it so
that old ``ws_mppi.safety`` imports keep working."""

from ws_sim.safety import (REJECT_REASONS, CommandLimiter, Decision, InvalidState, JointLimits, Mode,
                           SafetySupervisor, StateValidator)

__all__ = ["JointLimits", "InvalidState", "StateValidator", "CommandLimiter", "Mode", "Decision",
           "SafetySupervisor", "REJECT_REASONS"]
