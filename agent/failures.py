"""What went wrong in a failed step, from its output: a reason on one line, the last
lines of the output, and a hint that says what to do.

``docker compose`` prints progress lines, then the daemon's error, which can run to
several hundred characters ("could not find an available, non-overlapping IPv4 address
pool among the defaults to assign to the network").  Printed raw, a summary table of
twenty apps becomes unreadable and the cause hides in the middle of a line.  So a failed
step is classified here, purely from its text: the summary shows the reason, the JSON
and ``reconcile status`` the full text.  Patterns are matched on the lower-cased output,
most specific first; anything unknown keeps its last line as the reason.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LAST_LINES", "Failure", "FailureKind", "classify"]

#: Lines of output kept with a failure (compose's progress lines come first; the error last).
LAST_LINES = 10
#: A reason longer than this is cut: it is shown on one line.
_REASON_CHARS = 200


class FailureKind(StrEnum):
    POOL_EXHAUSTED = "address-pool-exhausted"
    IMAGE_NOT_FOUND = "image-not-found"
    PORT_IN_USE = "port-in-use"
    DISK_FULL = "disk-full"
    BAD_COMPOSE_FILE = "bad-compose-file"
    OTHER = "other"


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A classified failure: ``reason`` is one line, ``last_lines`` the output's tail."""

    step: str
    kind: FailureKind
    reason: str
    last_lines: tuple[str, ...]
    hint: str | None = None

    def headline(self) -> str:
        """One short line for a summary table: the step and the reason."""
        return f"{self.step}: {self.reason}"

    def summary(self, note: str = "") -> str:
        """One line: the step, the reason, the hint and ``note`` (e.g. the rollback)."""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.headline()}{hint}{note}"

    def text(self, note: str = "") -> str:
        """The summary, then the output's last lines: the full text for JSON and status
        (not again when the output was just the line the reason repeats)."""
        tail = () if self.last_lines == (self.reason,) else self.last_lines
        return "\n".join((self.summary(note), *tail))

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "kind": self.kind.value,
            "reason": self.reason,
            "hint": self.hint,
            "last_lines": list(self.last_lines),
        }


@dataclass(frozen=True)
class _Rule:
    kind: FailureKind
    pattern: str  # compiled on the first failure: a no-op run never pays for it
    reason: str
    hint: str
    flags: int = 0


_RULES: tuple[_Rule, ...] = (
    _Rule(
        FailureKind.POOL_EXHAUSTED,
        r"could not find an available, non-overlapping ipv[46] address pool",
        "address pool exhausted: the Docker daemon has no subnet left for another network",
        "give dockerd more, smaller subnets with `default-address-pools` in "
        "/etc/docker/daemon.json and restart it (scripts/setup.sh does this for the dockerd "
        "it starts); `reconcile plan` shows how many networks are left",
    ),
    _Rule(
        FailureKind.DISK_FULL,
        r"no space left on device|disk quota exceeded",
        "disk full: no space left on the Docker host",
        "free space on the Docker host (`docker system df`, then prune what you own) "
        "and apply again",
    ),
    _Rule(
        FailureKind.PORT_IN_USE,
        r"port is already allocated|address already in use|bind: address in use",
        "port in use: a host port this app publishes is taken",
        "stop the container or process that holds the port, or publish another one",
    ),
    _Rule(
        FailureKind.IMAGE_NOT_FOUND,
        r"pull access denied|manifest unknown|not found: manifest|manifest for .* not found"
        r"|no such image|repository does not exist|failed to resolve reference"
        r"|lookup [^ ]+ on [^ ]+: no such host|registry-1\.docker\.io.*(timeout|refused)",
        "image not found: the image is not available locally and no registry answered with it",
        "check the image name and tag, or build/load the image on the host first "
        "(`docker image ls`); with no registry reachable, only local images run",
    ),
    _Rule(
        FailureKind.BAD_COMPOSE_FILE,
        r"^(validating|failed to parse|failed to load) .*\.ya?ml|yaml: line \d+"
        r"|additional property .* is not allowed|services\.\S+ must be|invalid compose project"
        r"|service \S+ (refers to|depends on) undefined",
        "bad compose file: docker compose refused it",
        "fix the compose file at the place the last lines name; "
        "`reconcile validate` checks it before anything runs",
        re.MULTILINE,
    ),
)


@functools.cache
def _compiled(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def classify(step: str, output: str, hint: str | None = None) -> Failure:
    """The failure of ``step`` given its output (stderr, or an error message).

    ``hint``: the caller's own hint, kept when no rule knows better.  Pure: no I/O.
    """
    lines = [line.rstrip() for line in output.strip().splitlines() if line.strip()]
    tail = tuple(lines[-LAST_LINES:])
    low = output.lower()
    for rule in _RULES:
        if _compiled(rule.pattern, rule.flags).search(low):
            return Failure(
                step=step, kind=rule.kind, reason=rule.reason, last_lines=tail, hint=rule.hint
            )
    last = lines[-1] if lines else "failed with no output"
    reason = last if len(last) <= _REASON_CHARS else last[: _REASON_CHARS - 3] + "..."
    return Failure(step=step, kind=FailureKind.OTHER, reason=reason, last_lines=tail, hint=hint)
