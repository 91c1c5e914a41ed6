"""The wire protocol between the control plane and its agents, as pydantic models.

Both sides import these (the agent may see ``reconciler.model`` and
``reconciler.render.model`` only), so a field renamed on one side is a type error on the
other, not a silent ``None``.  Everything here is JSON over HTTP:

``POST /v1/agent/bootstrap``            BootstrapRequest  -> 201 BootstrapResponse
    (no agent auth: the one-time token *is* the credential; 401 when unknown, used or
    expired)

Every other ``/v1/agent/*`` call carries ``X-Agent-Id`` and ``X-Agent-Secret`` (401
otherwise):

``GET  /v1/agent/commands?wait=S``      -> 200 CommandBatch
    Long poll: answers as soon as the agent has unfinished commands, else after ``S``
    seconds (capped by the server) with an empty batch.  *Every* unfinished command of
    the agent whose deadline has not passed is returned on every poll: an agent that
    restarted mid-command simply gets it again and redoes it (actions are idempotent:
    an install onto an installed app redeploys the same files).  A running agent skips
    the ids it is already working on.
``GET  /v1/agent/commands/{id}/bundle`` -> 200 application/x-tar (404 when the command
    has no bundle): the repository files the action needs (the deployment's ``bundle``
    directory and/or its repo build context), paths relative to the repository root.
``POST /v1/agent/commands/{id}/result`` CommandResult -> 200 ResultAck
    Idempotent on the command id: a second result for the same id is acknowledged with
    ``duplicate: true`` and changes nothing.
``POST /v1/agent/commands/{id}/progress`` CommandProgress -> 202 ProgressAck
    Live steps of a running command, as the executor runs them, for
    ``GET /v1/events/stream``.  Best effort, never retried: progress is live-only and the
    result is what counts.  A server from before answers 404 (the agent then stops
    sending progress to it); unknown fields are ignored both ways.
``POST /v1/agent/report``               AgentReport -> 200 ReportAck
    The heartbeat; carries the host's actual state.  An agent whose last report is
    older than ``3 * heartbeat_seconds`` is offline: its actions are ``blocked``.
    The state travels only when it changed: the agent always sends ``state_digest``
    (``state_digest()`` of its state) and leaves ``state`` out while the digest equals
    the one the server last acknowledged in ``ReportAck.state_digest``.  A server that
    holds another digest (or none) answers with the digest it holds, and the agent sends
    the full state at once.  A server from before answers no digest, so the agent always
    sends the full state to it; an agent from before sends no digest and always a state.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from reconciler.model.day2 import OperationRequest
from reconciler.model.deployment import ProxyConfig
from reconciler.model.ids import COMMAND_ID_RE
from reconciler.model.plan import Action
from reconciler.model.state import AgentState

__all__ = [
    "PROTOCOL_VERSION",
    "AgentReport",
    "BootstrapRequest",
    "BootstrapResponse",
    "Command",
    "CommandBatch",
    "CommandProgress",
    "CommandResult",
    "ProgressAck",
    "ProgressStep",
    "ReportAck",
    "ResultAck",
    "state_digest",
]

PROTOCOL_VERSION = 1

# "operation": a day-2 operation on one deployment (``reconcile logs --server``...), in
# ``Command.operation``; its answer comes back in ``CommandResult.payload``.  An agent from
# before answers it with a failed result naming the kind, which the CLI shows.
CommandKind = Literal["install", "update", "uninstall", "repair", "operation"]


class _Wire(BaseModel):
    # Unknown fields are ignored, not refused: a newer server may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)


class BootstrapRequest(_Wire):
    token: str
    hostname: str = ""  # shown in the status API, never trusted for anything


class BootstrapResponse(_Wire):
    agent_id: str  # agt_<16 hex>
    secret: str  # shown once; the server keeps only a hash
    heartbeat_seconds: float = 10.0
    protocol: int = PROTOCOL_VERSION


class Command(_Wire):
    """One plan action for one agent, with everything the executor needs.

    ``deployment`` is the rendered deployment (a ``RenderedDeployment`` as JSON; kept
    as a plain dict here so the model layer does not import the render layer); it is
    absent for uninstalls.
    """

    # Checked here, like ``action.id``: the agent names a journal file and a URL after it.
    id: str = Field(pattern=COMMAND_ID_RE.pattern)
    kind: CommandKind
    action: Action
    deployment: dict[str, object] | None = None
    has_bundle: bool = False
    purge: bool = False
    proxy: ProxyConfig | None = None  # the repository's proxy settings (ports, tls)
    settle_seconds: float | None = None  # None: the agent's own default
    revision: str | None = None  # the repository commit the plan was made from
    created: AwareDatetime
    deadline: AwareDatetime  # after this the server gives up on it (result: expired)
    # kind "operation": what to do (``action`` is then a ``noop`` naming the deployment)
    operation: OperationRequest | None = None


class CommandBatch(_Wire):
    commands: list[Command] = Field(default_factory=list)
    heartbeat_seconds: float = 10.0


class CommandResult(_Wire):
    ok: bool
    message: str = ""
    rolled_back: bool = False
    seconds: float = 0.0
    url: str | None = None
    logs: str = ""  # last lines of the app's logs on failure (already truncated)
    # kind "operation": the answer (a reconciler.model.day2 value as JSON)
    payload: dict[str, object] | None = None


class ProgressStep(_Wire):
    """One executor step of a command (``agent.executor.StepEvent``), when it ran."""

    deployment: str = ""
    step: str
    detail: str = ""
    time: AwareDatetime | None = None


class CommandProgress(_Wire):
    # Bounded: the agent sends what it has gathered since its last post.
    steps: list[ProgressStep] = Field(default_factory=list, max_length=200)


class ProgressAck(_Wire):
    accepted: int = 0  # steps passed on to the stream


class ResultAck(_Wire):
    accepted: bool = True
    duplicate: bool = False


class AgentReport(_Wire):
    """The heartbeat: what runs on the host now, and what the agent is working on."""

    # None when unchanged since the server last acknowledged ``state_digest``.
    state: AgentState | None = None
    state_digest: str | None = None
    running: list[str] = Field(default_factory=list)  # command ids in progress
    version: str = ""
    hostname: str = ""
    # The host's total memory in MB.  Here, not in ``state``: a server from before it
    # ignores an unknown field here but refuses one in ``state``; an agent from before
    # sends none, and the planner then blocks nothing for memory.
    total_memory_mb: int | None = None
    # How many more networks the host's Docker daemon can create; here for the same reason.
    free_networks: int | None = None


class ReportAck(_Wire):
    heartbeat_seconds: float = 10.0
    # The digest of the state the server now holds for this agent; None from a server
    # from before (the agent then keeps sending full states).
    state_digest: str | None = None


def state_digest(state: AgentState) -> str:
    """The digest a heartbeat carries: sha256 of the state's canonical JSON, so equal
    states have equal digests on every Python and pydantic version that writes the same
    JSON."""
    body = json.dumps(state.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
