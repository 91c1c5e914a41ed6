"""Events out: outbound webhooks (generic JSON, Slack, Discord) from a durable outbox.

An event the server records (:meth:`Store.record_event`) is mapped here to the public
events of the issue's list (``deployment.installed``, ``agent.offline``, ...) and, for
every ``notify:`` subscription whose patterns match, one outbox row is written in the
*same* transaction as the event: a crash after the commit loses nothing, a crash before
it loses the change and its notification together.

:class:`Sender` delivers the rows: one thread per target, so a slow or dead receiver
delays only its own deliveries, never another target's and never a reconcile (the
worker only ever writes rows).  A 2xx is delivered; a 5xx, 408, 429, a timeout or a
refused connection is tried again after 1, 2, 4 ... at most 300 s (with jitter), up to
``MAX_ATTEMPTS`` times; any other 4xx is the receiver's final answer (retrying would
send the same bytes to the same refusal).  Delivery is at least once: a crash between
the receiver's 2xx and our commit sends that row again, under the same delivery id, so
a receiver that must not act twice dedupes on ``X-Reconcile-Delivery``.

The JSON body is ``{"id", "type", "time", "data"}``, signed like GitHub's webhooks:
``X-Reconcile-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` with the target's
secret; ``X-Reconcile-Event`` and ``X-Reconcile-Delivery`` carry the type and the id of
this delivery.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from reconciler.model.errors import InvalidSpec
from reconciler.model.secretenv import secret_from_env
from reconciler.server.config import NotifyTarget
from reconciler.server.store import CommandRow, OutboxRow, Store

__all__ = [
    "PUBLIC_EVENTS",
    "Delivery",
    "Router",
    "Sender",
    "Target",
    "deployment_events",
    "matches",
    "public_events",
    "render_body",
    "result_fields",
    "sign",
]

log = logging.getLogger("reconciler.server")

#: Every public event kind, for the README and for patterns that could never match.
PUBLIC_EVENTS = (
    "deployment.created",
    "deployment.installed",
    "deployment.updated",
    "deployment.failed",
    "deployment.rolled_back",
    "deployment.domain_changed",
    "deployment.uninstalled",
    "deployment.git_redeployed",
    "deployment.blocked",
    "agent.online",
    "agent.offline",
    "reconcile.failed",
)
#: The server's own event kinds that may map to a public one (the rest never do).
_SOURCES = frozenset(
    {
        "agent.online",
        "agent.offline",
        "reconcile.failed",
        "reconcile.invalid",
        "command.created",
        "command.result",
        "deployment.blocked",
    }
)
RETRY_BASE = 1.0  # seconds before the first retry; doubled each time
RETRY_MAX = 300.0  # seconds: the longest wait between two tries
MAX_ATTEMPTS = 15  # ~1 h of tries at the cap, then the row is given up on (dead)
TIMEOUT = 10.0  # seconds a receiver has to answer
RETRIED_STATUS = frozenset({408, 425, 429})
MAX_LINES = 20  # last log lines carried by deployment.failed
# The agent's "(hint: ...)" (agent.executor), wherever it sits: "; previous release
# restored" may follow it.  One level of parentheses inside a hint is allowed.
_HINT = re.compile(r"\s*\(hint: (?P<hint>[^()]*(?:\([^()]*\)[^()]*)*)\)")


def matches(patterns: Sequence[str], kind: str) -> bool:
    """``deployment.*`` matches the family, ``*`` everything, anything else itself."""
    return any(fnmatch.fnmatchcase(kind, p) for p in patterns)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def deployment_events(fields: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The public events one command result stands for (``fields``: a ``command.result``).

    A failure is ``deployment.failed`` (plus ``.rolled_back`` when the agent restored the
    last release); a success is ``.installed``, ``.updated`` (plus ``.domain_changed`` or
    ``.git_redeployed`` when those were among its changes) or ``.uninstalled``.
    """
    base = {
        "deployment": fields.get("name") or fields.get("deployment"),
        "deployment_id": fields.get("deployment"),
        **{k: fields.get(k) for k in ("agent", "command", "revision", "url")},
    }
    if not fields.get("ok"):
        message = str(fields.get("message") or "")
        found = list(_HINT.finditer(message))
        last = found[-1] if found else None
        lines = str(fields.get("logs") or "").splitlines()[-MAX_LINES:]
        failed = {
            **base,
            "action": fields.get("kind"),
            "reason": message[: last.start()] + message[last.end() :] if last else message,
            "hint": last.group("hint") if last else None,
            "last_lines": lines,
            "rolled_back": bool(fields.get("rolled_back")),
        }
        out = [("deployment.failed", failed)]
        if fields.get("rolled_back"):
            out.append(("deployment.rolled_back", failed))
        return out
    kind = fields.get("kind")
    changes = [str(c) for c in fields.get("changes") or ()]
    if kind == "install":
        return [("deployment.installed", base)]
    if kind == "uninstall":
        return [("deployment.uninstalled", base)]
    out = [("deployment.updated", {**base, "action": kind, "changes": changes})]
    if "domain" in changes:
        out.append(("deployment.domain_changed", base))
    if "source_revision" in changes and fields.get("source") == "git":
        out.append(("deployment.git_redeployed", base))
    return out


def result_fields(command: CommandRow, result: Mapping[str, Any]) -> dict[str, Any]:
    """The ``command.result`` event of one result: what the log and the public
    ``deployment.*`` events need (name, changes and source kind from the command)."""
    payload = command.payload
    action = payload.get("action") or {}
    deployment = payload.get("deployment") or {}
    return {
        "command": command.id,
        "agent": command.agent,
        "deployment": command.deployment,
        "name": action.get("deployment"),
        "kind": command.kind,
        "ok": bool(result.get("ok")),
        "message": result.get("message", ""),
        "rolled_back": bool(result.get("rolled_back")),
        "seconds": result.get("seconds", 0.0),
        "url": result.get("url"),
        "logs": result.get("logs", ""),
        "changes": [c.get("field") for c in action.get("changes") or () if isinstance(c, dict)],
        "source": deployment.get("kind"),
        "revision": payload.get("revision"),
    }


def public_events(kind: str, fields: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The public events (kind, data) an event of the server's own log stands for."""
    if kind in ("agent.online", "agent.offline", "reconcile.failed", "deployment.blocked"):
        return [(kind, dict(fields))]
    if kind == "reconcile.invalid":
        return [
            (
                "reconcile.failed",
                {**fields, "error": f"repository invalid: {fields.get('errors')} errors"},
            )
        ]
    if kind == "command.created" and fields.get("kind") == "install":
        return [("deployment.created", dict(fields))]
    if kind == "command.result":
        return deployment_events(fields)
    return []


# ------------------------------------------------------------------------- formats

_EMOJI = {"failed": "🔴", "blocked": "🟠", "offline": "🟠", "rolled_back": "🟠"}


def summary(kind: str, data: Mapping[str, Any]) -> str:
    """One line a human reads in a chat: what happened to what, and why."""
    what = data.get("deployment") or data.get("agent") or ""
    line = f"{kind}: {what}" if what else kind
    if data.get("agent") and data.get("deployment"):
        line += f" on {data['agent']}"
    why = data.get("reason") or data.get("error")
    if why:
        line += f": {why}"
    if data.get("hint"):
        line += f" (hint: {data['hint']})"
    return line


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn treats these three as control characters (its documented escape)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_body(fmt: str, kind: str, data: Mapping[str, Any], event_id: str, now: float) -> str:
    """The body sent for one event in a target's format (fixed once, sent on every try)."""
    if fmt == "slack":
        emoji = _EMOJI.get(kind.split(".", 1)[1], "🟢")
        text = f"{emoji} {_slack_escape(summary(kind, data))}"
        lines = data.get("last_lines") or []
        if lines:
            text += "\n```" + _slack_escape("\n".join(lines))[-2500:] + "```"
        return json.dumps({"text": text})
    if fmt == "discord":
        colour = 0xD0342C if kind.endswith(("failed", "offline", "blocked")) else 0x2EA043
        description = summary(kind, data).replace("`", "'")
        lines = data.get("last_lines") or []
        if lines:
            description += "\n```\n" + "\n".join(lines).replace("`", "'")[-3000:] + "\n```"
        embed = {
            "title": kind,
            "description": description[:4096],
            "color": colour,
            "timestamp": _iso(now),
            "footer": {"text": event_id},
        }
        # allowed_mentions: text from a repository never pings @everyone.
        return json.dumps({"embeds": [embed], "allowed_mentions": {"parse": []}})
    return json.dumps({"id": event_id, "type": kind, "time": _iso(now), "data": dict(data)})


# -------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Target:
    """One ``notify:`` subscription with its secret read (``notify:<index>``)."""

    name: str
    config: NotifyTarget
    secret: bytes | None

    @classmethod
    def from_config(
        cls, targets: Sequence[NotifyTarget], env: Mapping[str, str] | None = None
    ) -> list[Target]:
        """Raises InvalidSpec when a named secret is unset (the server must not start
        sending unsigned bodies a receiver would refuse, or worse, accept)."""
        out = []
        for i, target in enumerate(targets):
            secret: bytes | None = None
            if target.secret_env:
                value = secret_from_env(target.secret_env, env)
                if value is None:
                    raise InvalidSpec(
                        f"notify[{i}].secret_env: {target.secret_env} (or "
                        f"{target.secret_env}_FILE) is not set in the server's environment"
                    )
                secret = value.encode()
            out.append(cls(f"notify:{i}", target, secret))
        return out


class Router:
    """The store's outbox router for the ``notify:`` targets."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)

    def wants(self, kind: str) -> bool:
        return bool(self.targets) and kind in _SOURCES

    def route(
        self, kind: str, fields: dict[str, Any], event_id: str, now: float
    ) -> list[tuple[str, str, str]]:
        rows = []
        for public, data in public_events(kind, fields):
            for target in self.targets:
                if matches(target.config.events, public):
                    body = render_body(target.config.format, public, data, event_id, now)
                    rows.append((target.name, public, body))
        return rows


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Delivery:
    """How to send one outbox row: the URL, the headers and the bytes."""

    url: str
    headers: dict[str, str]
    body: bytes


def retry_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 1, 2, 4 ... 300, +-10%."""
    base = float(min(RETRY_MAX, RETRY_BASE * 2 ** max(0, attempts - 1)))
    return base * float((rng or random).uniform(0.9, 1.1))


@dataclass
class _Lane:
    name: str
    prepare: Callable[[OutboxRow], Delivery]
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Sender:
    """Delivers the outbox: one thread (a lane) per target.

    ``prepare`` turns a row into a request (the webhook targets here; the forge's lane
    comes from :mod:`reconciler.server.forges`).  ``tick``, when given, runs on its own
    thread every ``tick_every`` seconds (agents gone offline are announced from there).
    """

    def __init__(
        self,
        store: Store,
        *,
        timeout: float = TIMEOUT,
        retry_base: float = RETRY_BASE,
        max_attempts: int = MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.retry_base = retry_base
        self.max_attempts = max_attempts
        self.clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._stop = threading.Event()
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "compose-reconciler"},
        )
        self._ticks: list[tuple[float, Callable[[], None]]] = []
        self._threads: list[threading.Thread] = []
        #: Whether this process delivers (several replicas: the leader only, so no row
        #: goes out twice at once; a new leader carries on from the rows left).
        self.active: Callable[[], bool] = lambda: True
        self.on_wake: Callable[[], None] = lambda: None

    def add_webhooks(self, targets: Sequence[Target]) -> None:
        for target in targets:
            self.add_lane(target.name, _webhook_request(target))

    def add_lane(self, name: str, prepare: Callable[[OutboxRow], Delivery]) -> None:
        self._lanes[name] = _Lane(name, prepare)

    def every(self, seconds: float, tick: Callable[[], None]) -> None:
        self._ticks.append((seconds, tick))

    def wake(self) -> None:
        """Thread-safe, returns at once: new rows may be due."""
        self.wake_lanes()
        self.on_wake()

    def wake_lanes(self) -> None:
        """This process's lanes only (``wake`` also runs ``on_wake``: several replicas
        tell the leader, whose sender delivers, that a row is waiting)."""
        for lane in self._lanes.values():
            lane.wake.set()

    def start(self) -> None:
        for lane in self._lanes.values():
            lane.thread = threading.Thread(
                target=self._run_lane, args=(lane,), name=f"outbox-{lane.name}", daemon=True
            )
            lane.thread.start()
            self._threads.append(lane.thread)
        for seconds, tick in self._ticks:
            thread = threading.Thread(
                target=self._run_tick, args=(seconds, tick), name="outbox-tick", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake_lanes()
        for thread in self._threads:
            thread.join(timeout)
        self._http.close()

    def _run_tick(self, seconds: float, tick: Callable[[], None]) -> None:
        while not self._stop.wait(seconds):
            try:
                tick()
            except Exception:  # the thread must outlive one bad pass
                log.exception("outbox tick failed")

    def _run_lane(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            lane.wake.clear()
            if not self.active():
                lane.wake.wait(1.0)
                continue
            try:
                self.deliver_due(lane.name)
                next_at = self.store.next_outbox_at(lane.name)
            except Exception:
                log.exception("outbox lane %s failed", lane.name)
                next_at = self.clock() + self.retry_base
            wait = 60.0 if next_at is None else max(0.0, next_at - self.clock())
            lane.wake.wait(min(wait, 60.0))

    def deliver_due(self, lane_name: str) -> int:
        """One pass over the rows due on this lane; returns how many were delivered."""
        lane = self._lanes[lane_name]
        delivered = 0
        for row in self.store.due_outbox(lane.name, now=self.clock()):
            if self._stop.is_set():
                break
            delivered += self._attempt(lane, row)
        return delivered

    def _attempt(self, lane: _Lane, row: OutboxRow) -> int:
        try:
            request = lane.prepare(row)
            response = self._http.post(request.url, content=request.body, headers=request.headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            return self._failed(lane, row, f"{type(exc).__name__}: {exc}", retry=True)
        except Exception as exc:  # a row that cannot be sent at all (bad URL, ...)
            return self._failed(lane, row, f"{type(exc).__name__}: {exc}", retry=False)
        if response.is_success:
            self.store.outbox_delivered(row.id, now=self.clock())
            return 1
        retry = response.status_code >= 500 or response.status_code in RETRIED_STATUS
        return self._failed(lane, row, f"HTTP {response.status_code}", retry=retry)

    def _failed(self, lane: _Lane, row: OutboxRow, error: str, *, retry: bool) -> int:
        attempts = row.attempts + 1
        now = self.clock()
        retry_at = None
        if retry and attempts < self.max_attempts:
            retry_at = now + retry_delay(attempts) * (self.retry_base / RETRY_BASE)
        self.store.outbox_failed(row.id, error, now=now, retry_at=retry_at)
        log.warning(
            "event %s (%s) to %s: %s; %s",
            row.kind,
            row.delivery_id,
            lane.name,
            error,
            "given up" if retry_at is None else f"retry in {retry_at - now:.1f} s",
        )
        return 0


def _webhook_request(target: Target) -> Callable[[OutboxRow], Delivery]:
    def prepare(row: OutboxRow) -> Delivery:
        body = row.body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Reconcile-Event": row.kind,
            "X-Reconcile-Event-Id": row.event_id,
            "X-Reconcile-Delivery": row.delivery_id,
        }
        if target.secret is not None:
            headers["X-Reconcile-Signature"] = sign(target.secret, body)
        return Delivery(target.config.url, headers, body)

    return prepare


def close_quietly(sender: Sender | None) -> None:
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.stop()
