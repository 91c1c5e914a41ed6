"""Day-2 operations on one deployment, as values: what ``reconcile logs``, ``restart``,
``show``, ``history``, ``rollback``, ``credentials`` and ``backup`` return.

The same values travel three ways: returned by :mod:`agent.operations` on the local
host, carried as a command's result payload from an agent through the control plane,
and returned to the MCP server and the dashboard.  So they live in the model layer, and
the wire forms ignore unknown fields (a newer agent may add some).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.model.errors import ReconcilerError
from reconciler.model.state import ContainerState, Hold

__all__ = [
    "OPERATIONS",
    "BackupResult",
    "Credentials",
    "DeploymentDetail",
    "HistoryEntry",
    "HistoryList",
    "LogChunk",
    "OperationError",
    "OperationKind",
    "OperationRequest",
    "OperationResult",
    "RestartResult",
    "RollbackResult",
]

OperationKind = Literal[
    "logs", "restart", "show", "history", "rollback", "release", "credentials", "backup"
]
OPERATIONS: tuple[OperationKind, ...] = (
    "logs",
    "restart",
    "show",
    "history",
    "rollback",
    "release",
    "credentials",
    "backup",
)


class OperationError(ReconcilerError):
    """The operation cannot be done as asked (no such deployment, no such release, no
    backup hook...); nothing was changed.  The message names what to do instead."""


class _Value(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class HistoryEntry(_Value):
    """One apply of the deployment as the host recorded it (newest first in a history)."""

    at: str
    spec_hash: str
    status: str  # running | failed | uninstalled | rolled back | held | released
    revision: str | None = None  # the repository commit it was applied from, when known
    message: str | None = None
    release: str | None = None  # the kept release with this spec (a rollback target)


class HistoryList(_Value):
    entries: list[HistoryEntry] = Field(default_factory=list)


class DeploymentDetail(_Value):
    id: str
    name: str
    namespace: str
    status: str
    spec_hash: str
    revision: str | None = None
    domain: str | None = None
    urls: list[str] = Field(default_factory=list)
    updated_at: str = ""
    last_error: str | None = None
    hint: str | None = None
    held: Hold | None = None
    services: list[str] = Field(default_factory=list)
    containers: list[ContainerState] = Field(default_factory=list)
    images: dict[str, str] = Field(default_factory=dict)
    env_keys: list[str] = Field(default_factory=list)  # names only, never values
    hooks: list[str] = Field(default_factory=list)
    releases: list[HistoryEntry] = Field(default_factory=list)


class LogChunk(_Value):
    text: str
    # The time the logs were read up to (RFC 3339, the daemon's clock): the next
    # ``--since`` of a follow that polls through the control plane.
    until: str


class RestartResult(_Value):
    restarted: list[str] = Field(default_factory=list)  # services
    message: str = ""


class RollbackResult(_Value):
    release: str
    spec_hash: str
    held: Hold | None = None
    message: str = ""


class Credentials(_Value):
    """Generated secret values of one deployment: shown to an admin, audited each time."""

    values: dict[str, str] = Field(default_factory=dict)


class BackupResult(_Value):
    exit_code: int
    path: str  # where its output is kept, in the app's state dir
    output_tail: str = ""


class OperationRequest(_Value):
    """A day-2 operation for an agent, carried by a command of kind ``operation``."""

    op: OperationKind
    deployment: str  # name or dpl_ id
    service: str | None = None
    tail: int | None = Field(default=100, ge=0, le=10_000)  # None: every line (since ...)
    since: str | None = None
    to: str | None = None  # rollback: a release name (or unique prefix / spec hash prefix)


class OperationResult(_Value):
    ok: bool
    error: str | None = None
    payload: dict[str, object] | None = None
