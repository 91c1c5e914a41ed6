"""Pure planning: desired (rendered) x actual -> a Plan of actions with reasons."""

from reconciler.plan.model import ACTION_KINDS, Action, Change, Plan
from reconciler.plan.planner import PlanOptions, diff_records, drift, plan

__all__ = [
    "ACTION_KINDS",
    "Action",
    "Change",
    "Plan",
    "PlanOptions",
    "diff_records",
    "drift",
    "plan",
]
