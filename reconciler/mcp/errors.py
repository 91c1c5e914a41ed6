"""The one error a tool raises, carried to the MCP client as a structured result."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.model.errors import Problem

__all__ = ["ToolFailure", "problem_json"]


def problem_json(problem: Problem) -> dict[str, Any]:
    """A validation problem as the client sees it: where, what, and the edit that fixes it."""
    return {
        "file": problem.file,
        "line": problem.line,
        "column": problem.col,
        "rule": problem.rule,
        "severity": str(problem.severity.value),
        "message": problem.message,
        "fix": problem.fix,
    }


@dataclass
class ToolFailure(Exception):
    """The tool could not do what was asked, and changed nothing.

    ``code`` says what to do next: ``invalid`` (fix the input or the repository, see
    ``problems``), ``not_found``, ``exists``, ``conflict``, ``unauthorized`` (set the
    admin token), ``unavailable`` (the server or Docker did not answer: retry later),
    ``refused`` (the server or the agent would not do it, and says why),
    ``not_supported`` (this server or host lacks the feature), ``git`` (the clone refused
    the change).
    """

    code: str
    message: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    hint: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def invalid(
        cls, message: str, problems: Iterable[Problem], hint: str | None = None
    ) -> ToolFailure:
        return cls("invalid", message, [problem_json(p) for p in problems], hint)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.problems:
            out["problems"] = self.problems
        if self.hint:
            out["hint"] = self.hint
        return out
