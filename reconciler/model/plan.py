"""The plan as data: actions in buckets, each with its reason.  Its JSON is a contract
(``format_version`` 1), documented in the README and kept stable."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.model.ids import DEPLOYMENT_ID_RE

__all__ = ["ACTION_KINDS", "Action", "ActionKind", "Change", "ChangeField", "Plan"]

ActionKind = Literal["install", "update", "uninstall", "repair", "noop", "blocked", "held"]
ACTION_KINDS: tuple[ActionKind, ...] = (
    "install",
    "update",
    "uninstall",
    "repair",
    "noop",
    "blocked",
    # rolled back by hand (``reconcile rollback``): left alone until its file changes in git
    "held",
)
ChangeField = Literal[
    "image", "compose", "env", "routes", "domain", "onion", "resources", "source_revision", "spec"
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Change(_Frozen):
    """One reason an update is needed.  Env changes name keys only, never values."""

    field: ChangeField
    before: str | None = None
    after: str | None = None
    keys: list[str] = Field(default_factory=list)  # env: the keys that differ
    detail: str | None = None

    def describe(self) -> str:
        if self.detail:
            return f"{self.field}: {self.detail}"
        if self.keys:
            return f"{self.field}: {', '.join(self.keys)}"
        return f"{self.field}: {self.before or '(none)'} -> {self.after or '(none)'}"


class Action(_Frozen):
    # An agent reads actions a server of the next version sends (commands carry them):
    # a field it does not know yet (``routes`` was one) is descriptive, never a reason
    # to refuse the command.  What the agent acts on stays strict (``id``, ``action``).
    model_config = ConfigDict(extra="ignore", frozen=True)

    action: ActionKind
    deployment: str  # name
    # Checked on the wire: the agent builds ``apps/<id>`` from it, so an id such as
    # ``../../victim`` must be refused before any path is made of it.
    id: str = Field(pattern=DEPLOYMENT_ID_RE.pattern)
    agent: str
    reason: str
    changes: list[Change] = Field(default_factory=list)
    spec_hash: str | None = None  # desired hash (None for uninstall)
    url: str | None = None
    # install: every hostname the proxy will answer on for it (one per rendered route),
    # so a reviewer sees a second route (``match_var: admin_domain``) before it exists
    routes: list[str] = Field(default_factory=list)


class Plan(_Frozen):
    format_version: Literal[1] = 1
    namespace: str = "default"
    against: str = "empty"
    actions: list[Action] = Field(default_factory=list)
    summary: dict[str, int] = Field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        return any(a.action not in ("noop", "held") for a in self.actions)

    def bucket(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.action == kind]
