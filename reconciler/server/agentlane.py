"""The agents' heartbeat and long poll, answered in front of the web framework.

These two requests are nearly all of a fleet's traffic: 5,000 agents send some 500
heartbeats and 170 long polls a second, and every other endpoint together is a rounding
error.  Measured on the 2-core test machine, one heartbeat through FastAPI cost about
470 us of CPU, of which the work itself (check the secret, update one row) is 25 us:
the rest is the middleware chain, dependency solving, two hops to a worker thread (one
for the auth dependency, one for the handler) and the coroutines and exit stacks each
layer keeps alive.  Those objects also live as long as a long poll waits (up to a
minute), which is what CPython's collector kept walking at 5,000 agents.

So the two paths, and only they, go to :class:`AgentLane`, a plain ASGI app that keeps
the contract of :mod:`reconciler.model.agentapi` exactly: the same headers and secret
check, the same header-count and body-size limits as the rest of the API
(:mod:`reconciler.server.limits`), the same ``{"error": ...}`` bodies and status codes,
and one hop to a worker thread for everything that touches the store.  Everything else,
the agents' rarer calls included, stays in FastAPI (``ControlPlaneAPI`` dispatches).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from reconciler.model.agentapi import AgentReport, Command, CommandBatch, ReportAck, state_digest
from reconciler.model.state import AgentState
from reconciler.server.config import ServerConfig
from reconciler.server.fields import TooManyDeployments, cap_report
from reconciler.server.limits import (
    MAX_API_BODY,
    Receive,
    Scope,
    Send,
    body_over,
    declared_over,
    headers_over,
)
from reconciler.server.notify import Notifier, spread_wait
from reconciler.server.store import Store
from reconciler.server.worker import Reconciler, Worker

__all__ = ["COMMANDS", "REPORT", "AgentEndpoints", "AgentLane", "ControlPlaneAPI", "Refusal"]

log = logging.getLogger("reconciler.server")

REPORT = "/v1/agent/report"
COMMANDS = "/v1/agent/commands"
_METHOD = {REPORT: "POST", COMMANDS: "GET"}


class Refusal(Exception):
    """A refusal: answered as ``{"error": message}`` with ``status`` (and ``headers``),
    by the lane and by every FastAPI endpoint of the control plane alike."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


CLOSE = {"Connection": "close"}


def invalid_request(errors: Sequence[Any]) -> str:
    """The one wording of a request that is not the expected shape (pydantic's errors,
    at most five), for FastAPI's validation errors and the lane's alike."""
    parts = []
    for e in list(errors)[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "invalid request: " + "; ".join(parts)


@dataclass
class AgentEndpoints:
    """What the heartbeat and the long poll do, with HTTP left to :class:`AgentLane`.

    The synchronous methods touch the store and run in a worker thread, one hop per
    request; the secret is checked in the same hop as the work it guards.
    """

    config: ServerConfig
    store: Store
    reconciler: Reconciler
    worker: Worker
    notifier: Notifier
    jitter: random.Random

    def authenticate(self, agent_id: str | None, secret: str | None) -> str:
        if not agent_id or not secret:
            raise Refusal(401, "X-Agent-Id and X-Agent-Secret are required")
        if not self.store.check_agent(agent_id, secret):
            raise Refusal(401, "unknown agent or wrong secret")
        return agent_id

    # ------------------------------------------------------------------ heartbeat

    def report(self, agent_id: str | None, secret: str | None, raw: bytes) -> ReportAck:
        agent = self.authenticate(agent_id, secret)
        try:
            body = AgentReport.model_validate_json(raw)
        except ValidationError as exc:
            raise Refusal(400, invalid_request(exc.errors())) from None
        try:
            body = cap_report(body)
        except TooManyDeployments as exc:
            raise Refusal(413, str(exc)) from None
        if body.state is None and body.state_digest is None:
            raise Refusal(422, "the report carries neither a state nor a state_digest")
        now = self.reconciler.clock()
        state: AgentState | None = None
        stored_state: dict[str, Any] | None = None
        digest = body.state_digest
        if body.state is not None:
            # The agent's digest is kept as it says (it is what it compares with); an agent
            # from before sends none, and its state's own digest tells a change all the same.
            digest = digest or state_digest(body.state)
            state = body.state.model_copy(
                update={
                    "agent": agent,
                    "online": True,
                    "reason": None,
                    "total_memory_mb": body.total_memory_mb,
                    "free_networks": body.free_networks,
                }
            )
            stored_state = state.model_dump(mode="json")
        seen = self.store.record_report(
            agent,
            body.model_dump(mode="json", exclude={"state"}),
            state=stored_state,
            digest=digest,
            hostname=body.hostname,
            version=body.version,
            now=now,
        )
        previous = seen.previous
        if previous is None or now - previous > self.config.offline_after:
            self._online(agent, body, state)
        elif state is not None and seen.changed:
            # Only a changed state can show new drift: an unchanged heartbeat costs one row.
            reasons = self.reconciler.drift_in_report(agent, state)
            if reasons:
                self.store.record_event("drift", {"agent": agent, "reasons": reasons[:20]})
                self.worker.trigger(f"drift: {agent}: {reasons[0]}")
        return ReportAck(heartbeat_seconds=self.config.heartbeat, state_digest=seen.digest)

    def _online(self, agent: str, body: AgentReport, state: AgentState | None) -> None:
        self.store.record_event("agent.online", {"agent": agent, "hostname": body.hostname})
        log.info(
            "agent %s online (hostname %r, reconcile-agent %s, %s deployments)",
            agent,
            body.hostname,
            body.version or "?",
            len(state.deployments) if state is not None else "unchanged",
            extra={
                "fields": {
                    "event": "agent.online",
                    "agent": agent,
                    "hostname": body.hostname,
                    "version": body.version,
                }
            },
        )
        self.worker.trigger(f"agent: {agent} online")

    # ------------------------------------------------------------------ long poll

    def batch(self, agent: str) -> CommandBatch:
        commands = [Command.model_validate(c.payload) for c in self.store.pending_commands(agent)]
        return CommandBatch(commands=commands, heartbeat_seconds=self.config.heartbeat)

    def first_batch(self, agent_id: str | None, secret: str | None) -> CommandBatch:
        return self.batch(self.authenticate(agent_id, secret))

    async def commands(self, agent_id: str | None, secret: str | None, wait: float) -> CommandBatch:
        # An empty answer comes a little early, at random: polls that a restart bunched
        # into one second drift apart instead of arriving together every ``wait`` seconds.
        wait = spread_wait(max(0.0, min(wait, self.config.long_poll_max)), self.jitter)
        deadline = time.monotonic() + wait
        with self.notifier.waiting(agent_id or "") as wake:
            # Registered before reading: a command created after this read wakes us.  (An
            # unknown id is registered for the length of one refusal.)
            wake.clear()
            found = await run_in_threadpool(self.first_batch, agent_id, secret)
            agent = agent_id or ""
            while True:
                left = deadline - time.monotonic()
                if found.commands or left <= 0:
                    return found
                try:
                    async with asyncio.timeout(left):
                        await wake.wait()
                except TimeoutError:
                    # Not woken: no command was made for this agent since the read above
                    # (a lost cross-replica wake-up waits one more poll, which reads
                    # first).  So the empty answer costs no second read: after a restart
                    # thousands of polls end within seconds of each other.
                    return found
                wake.clear()
                found = await run_in_threadpool(self.batch, agent)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _wait(query: bytes) -> float:
    """The ``wait`` query parameter (seconds, default 0), as FastAPI would have read it."""
    wait = 0.0
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "wait":
            try:
                wait = float(value)
            except ValueError:
                raise Refusal(
                    400, "invalid request: query.wait: Input should be a valid number"
                ) from None
            if not math.isfinite(wait):
                raise Refusal(400, "invalid request: query.wait: Input should be a finite number")
    return wait


class AgentLane:
    """The ASGI app of :data:`REPORT` and :data:`COMMANDS` (see the module's docstring)."""

    paths = frozenset(_METHOD)

    def __init__(
        self,
        endpoints: AgentEndpoints,
        *,
        max_headers: int,
        max_body: int = MAX_API_BODY,
    ) -> None:
        self.endpoints = endpoints
        self.max_headers = max_headers
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        try:
            headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
            if len(headers) > self.max_headers:
                raise Refusal(431, headers_over(self.max_headers), CLOSE)
            if scope["method"] != _METHOD[path]:
                raise Refusal(405, "Method Not Allowed", {"Allow": _METHOD[path]})
            agent_id = _header(headers, b"x-agent-id")
            secret = _header(headers, b"x-agent-secret")
            answer: ReportAck | CommandBatch
            if path == REPORT:
                raw = await self._body(scope, receive)
                if raw is None:
                    return  # the client went away
                answer = await run_in_threadpool(self.endpoints.report, agent_id, secret, raw)
            else:
                wait = _wait(scope.get("query_string") or b"")
                answer = await self.endpoints.commands(agent_id, secret, wait)
        except Refusal as exc:
            await _respond(send, exc.status, _error(exc.message), exc.headers)
            return
        await _respond(send, 200, answer.model_dump_json().encode())

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        if declared_over(scope.get("headers") or [], self.max_body):
            raise Refusal(413, body_over(self.max_body), CLOSE)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Refusal(413, body_over(self.max_body), CLOSE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def _respond(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class ControlPlaneAPI(FastAPI):
    """The control plane's FastAPI app, with :class:`AgentLane` answering its two paths
    before any middleware or route of the framework sees them."""

    lane: AgentLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and scope["type"] == "http" and scope["path"] in lane.paths:
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
