"""The plan's data model lives in :mod:`reconciler.model.plan` (agents read plans too)."""

from reconciler.model.plan import ACTION_KINDS, Action, ActionKind, Change, ChangeField, Plan

__all__ = ["ACTION_KINDS", "Action", "ActionKind", "Change", "ChangeField", "Plan"]
