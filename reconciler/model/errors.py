"""One exception tree, typed by what the caller should do next (kopf-style).

* :class:`InvalidSpec` -- the desired state is wrong; fix the repository. Never retried.
* :class:`TemporaryError` -- something outside us hiccuped; back off and retry.
* :class:`HostError` -- an agent cannot be reached; its actions become ``blocked``.

Validation never raises on the first mistake: it collects :class:`Problem` values
so a user sees every mistake in one run, and raises :class:`InvalidSpec` carrying
all of them only at the boundary that needs a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "HostError",
    "InvalidSpec",
    "Problem",
    "ReconcilerError",
    "Severity",
    "TemporaryError",
]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about one place in one file.

    ``file`` is relative to the repository root (posix separators) so messages read
    the same on every machine and in CI annotations.  ``fix`` is the concrete edit that
    makes the problem go away, when there is one.
    """

    file: str
    line: int
    col: int
    rule: str
    message: str
    fix: str | None = None
    severity: Severity = field(default=Severity.ERROR)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def location(self) -> str:
        """``file:line:col``, ``file`` alone without a line, and ``""`` without a file:
        a made-up ``:0:0`` would send editors and CI annotations nowhere."""
        if not self.file:
            return ""
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"

    def render(self) -> str:
        """``file:line:col: message: fix`` -- the compiler-style line editors can jump to."""
        where = self.location()
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f": {self.fix}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity.value,
            "rule": self.rule,
            "message": self.message,
            "fix": self.fix,
        }


class ReconcilerError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidSpec(ReconcilerError):
    """The desired state cannot be used as written. Retrying will not help."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="", line=0, col=0, rule="invalid", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


class TemporaryError(ReconcilerError):
    """A transient failure; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HostError(ReconcilerError):
    """An agent (host) is unknown, offline or refused; its actions are blocked."""

    def __init__(self, message: str, agent: str | None = None) -> None:
        super().__init__(message)
        self.agent = agent
