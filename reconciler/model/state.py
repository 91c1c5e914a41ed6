"""Actual state as a value: what runs on each agent, as far as planning needs to know.

The agent keeps the authoritative record (``state.json`` in the app's state dir) and
checks it against containers by label; whatever observes a host (the local Docker
engine, a control plane, a snapshot file) produces this same value, so the planner
never knows or cares where it came from.  It is also the snapshot file format
(``reconcile status --format json``), hence ``format_version``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActualState",
    "AgentState",
    "ContainerState",
    "DeployedApp",
    "Hold",
    "RouteRecord",
    "SpecRecord",
]

ContainerStatus = Literal[
    "running", "exited", "restarting", "created", "paused", "dead", "removing", "missing"
]
Health = Literal["healthy", "unhealthy", "starting", "none"]


class _Frozen(BaseModel):
    # Reports cross versions: an agent one release ahead may add a field (``held``,
    # ``last_error`` were such), and the server it reports to must still read the rest
    # rather than refuse the heartbeat and take the host for offline.
    model_config = ConfigDict(extra="ignore", frozen=True)


class RouteRecord(_Frozen):
    domain: str
    upstream: str


class SpecRecord(_Frozen):
    """What was applied, without secret values: enough to explain an update as changes.

    ``env`` maps each key to a digest of its value, so a plan can say *which* keys
    changed without anyone being able to read them.
    """

    images: dict[str, str] = Field(default_factory=dict)  # service -> image reference
    compose_digest: str = ""
    env: dict[str, str] = Field(default_factory=dict)  # key -> value digest
    routes: list[RouteRecord] = Field(default_factory=list)
    domain: str | None = None
    onion: bool = False
    resources: dict[str, float | int | None] = Field(default_factory=dict)
    source_revision: str | None = None
    # Files shipped beside a compose file (bind-mounted): a change there needs a restart
    # even when the compose file is the same.  None in records written before it existed.
    bundle_digest: str | None = None


class ContainerState(_Frozen):
    service: str
    name: str = ""
    status: ContainerStatus = "running"
    health: Health = "none"
    restarts: int = 0
    exit_code: int | None = None
    one_shot: bool = False  # restart: "no" -- exiting 0 is success, not a crash
    # When its current run began (epoch seconds, Docker's State.StartedAt), if known: the
    # settle gate ages a container by it (agent/gate.py).
    started_at: float | None = None


class Hold(_Frozen):
    """A manual rollback: the planner leaves the deployment alone until git changes it.

    ``spec_hash`` is the spec the deployment ran when it was rolled back (what git wanted
    then, normally): a desired spec hash other than this one means its file changed in
    git, and that releases the hold.  Nothing else has to be remembered about git.
    """

    release: str  # the release it was rolled back to (a name under ``releases/``)
    release_spec_hash: str
    spec_hash: str  # the spec it was held at
    at: str  # ISO 8601 UTC
    reason: str = "rolled back by hand"


class DeployedApp(_Frozen):
    id: str
    name: str
    namespace: str
    spec_hash: str
    status: Literal["running", "failed", "uninstalled"] = "running"
    services: list[str] = Field(default_factory=list)  # services the spec expects
    containers: list[ContainerState] = Field(default_factory=list)
    record: SpecRecord | None = None  # None when only labels were seen
    # vars whose value in the applying host's environment is no longer the one deployed
    stale_env: list[str] = Field(default_factory=list)
    # Where it answers: ``<56 base32>.onion`` when its onion service is on, and every URL
    # (DOMAIN_URL, then ``http://<onion>``).  Optional: snapshots from before have neither.
    onion_address: str | None = None
    urls: list[str] = Field(default_factory=list)
    # Why the last apply failed (status "failed"): the classified reason on the first line,
    # then the output's last lines.  Local only: an agent's heartbeat leaves it out (a
    # server from before refuses unknown fields here); the server has the command results.
    last_error: str | None = None
    # Rolled back by hand and held there (``reconcile rollback``); None: git decides.
    held: Hold | None = None


class AgentState(_Frozen):
    agent: str
    online: bool = True
    reason: str | None = None  # why it is offline, for the blocked action
    deployments: dict[str, DeployedApp] = Field(default_factory=dict)  # by deployment id
    # The host's total memory (Docker's ``MemTotal``), for the planner to block what cannot
    # fit; None when unknown (an older agent, a snapshot from before): nothing is blocked.
    total_memory_mb: int | None = None
    # How many more networks the Docker daemon can create from its address pools (each
    # new deployment needs at least one); None when unknown: nothing is blocked for it.
    free_networks: int | None = None


class ActualState(_Frozen):
    format_version: Literal[1] = 1
    source: str = "empty"
    agents: dict[str, AgentState] = Field(default_factory=dict)

    @classmethod
    def empty(cls, agents: list[str] | None = None) -> ActualState:
        """Every named agent online and running nothing (``--against empty``)."""
        return cls(source="empty", agents={a: AgentState(agent=a) for a in agents or []})
