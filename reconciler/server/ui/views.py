"""What the dashboard shows, computed from the status API's own views (the same dicts
``GET /v1/deployments`` and ``GET /v1/agents`` serve), so the page and the API never
disagree.  Pure functions: no store, no clock of their own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "AgentRow",
    "DeploymentRow",
    "EventLine",
    "PlanLine",
    "Tone",
    "age",
    "agent_rows",
    "clock",
    "deployment_rows",
    "event_lines",
    "fingerprint",
    "plan_lines",
    "split_hint",
]

#: How a status reads at a glance; the page spells the status out too (never colour alone).
Tone = Literal["good", "bad", "busy", "idle"]

# The agent appends "(hint: …)" to a failed step's message (agent.executor).
_HINT_OPEN = " (hint: "
SHORT_HASH = 12  # characters of a spec hash or commit shown; the full value is in a title
_IN_FLIGHT = {"install": "installing", "update": "updating", "uninstall": "uninstalling"}
_IN_FLIGHT_DEFAULT = "applying"
EVENTS_SHOWN = 50


@dataclass(frozen=True)
class AgentRow:
    id: str
    hostname: str
    online: bool
    reason: str | None
    last_seen: str | None
    capacity: list[tuple[str, str]]
    deployments: int
    version: str


@dataclass(frozen=True)
class DeploymentRow:
    name: str
    id: str
    agent: str
    status: str
    tone: Tone
    health: str
    urls: list[str]
    spec_hash: str | None
    actual_spec_hash: str | None
    commit: str | None
    error: str | None
    hint: str | None
    plan: str | None


@dataclass(frozen=True)
class PlanLine:
    action: str
    deployment: str
    agent: str
    reason: str


@dataclass(frozen=True)
class EventLine:
    id: int
    time: str
    kind: str
    summary: str
    tone: Tone = "idle"
    fields: list[tuple[str, str]] = field(default_factory=list)


def split_hint(message: str) -> tuple[str, str | None]:
    """``"pull: … (hint: the image is not available …)"`` -> message and hint apart.

    The agent writes the hint on the message's first line (``agent.failures``), possibly
    followed by a note (``; previous release restored``) and the output's last lines;
    the hint itself may hold parentheses (``(`docker image ls`)``).
    """
    first, sep, rest = message.partition("\n")
    start = first.find(_HINT_OPEN)
    close = first.rfind(")")
    if start < 0 or close < start:
        return message, None
    hint = first[start + len(_HINT_OPEN) : close]
    return first[:start] + first[close + 1 :] + sep + rest, hint


def _status(view: Mapping[str, Any]) -> tuple[str, Tone, str | None, str | None]:
    """Status, tone, and the last error with its hint when the last command failed."""
    last = view.get("last_command") or {}
    result = last.get("result") or {}
    error = hint = None
    if last.get("state") == "failed" or result.get("ok") is False:
        error, hint = split_hint(str(result.get("message") or "failed (no message)"))
    if last.get("state") == "pending":
        return _IN_FLIGHT.get(str(last.get("kind")), _IN_FLIGHT_DEFAULT), "busy", error, hint
    if view.get("plan_action") == "blocked":
        return "blocked", "bad", view.get("plan_reason"), None
    status = str(view.get("status") or "unknown")
    if error is not None and not view.get("in_sync"):
        return "failed", "bad", error, hint
    if status == "running":
        return "running", "good", error, hint
    if status == "failed":
        return "failed", "bad", error, hint
    return status, "idle", error, hint


def _health(containers: Sequence[Mapping[str, Any]]) -> str:
    if not containers:
        return "no containers"
    down = [c for c in containers if c.get("status") != "running" and not c.get("one_shot")]
    if down:
        return ", ".join(f"{c.get('service')} {c.get('status')}" for c in down)
    health = [str(c.get("health") or "none") for c in containers]
    for word in ("unhealthy", "starting"):
        if word in health:
            return f"{health.count(word)} of {len(health)} {word}"
    checked = sum(1 for h in health if h == "healthy")
    if checked:
        return f"healthy ({checked} of {len(health)} checked)"
    running = sum(1 for c in containers if c.get("status") == "running")
    done = len(containers) - running  # one-shot services that finished
    return f"{running} running, no healthcheck" + (f", {done} done" if done else "")


def deployment_rows(views: Sequence[Mapping[str, Any]]) -> list[DeploymentRow]:
    rows = []
    for v in views:
        status, tone, error, hint = _status(v)
        last = v.get("last_command") or {}
        rows.append(
            DeploymentRow(
                name=str(v["name"]),
                id=str(v["id"]),
                agent=str(v["agent"]),
                status=status,
                tone=tone,
                health=_health(v.get("containers") or []),
                urls=[str(u) for u in v.get("urls") or []],
                spec_hash=v.get("desired_spec_hash"),
                actual_spec_hash=v.get("actual_spec_hash"),
                commit=last.get("revision"),
                error=error,
                hint=hint,
                plan=" ".join(str(p) for p in (v.get("plan_action"), v.get("plan_reason")) if p)
                or None,
            )
        )
    return rows


def _capacity(view: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Whatever the agent reported about its size, by name; memory in GiB for people."""
    out = []
    for key, value in (view.get("capacity") or {}).items():
        if value is None:
            continue
        if key == "memory_mb" and isinstance(value, int | float):
            out.append(("memory", f"{value / 1024:.1f} GiB"))
        else:
            out.append((str(key).replace("_", " "), str(value)))
    return out


def agent_rows(views: Sequence[Mapping[str, Any]]) -> list[AgentRow]:
    return [
        AgentRow(
            id=str(v["id"]),
            hostname=str(v.get("hostname") or ""),
            online=bool(v.get("online")),
            reason=v.get("reason"),
            last_seen=v.get("last_seen"),
            capacity=_capacity(v),
            deployments=int(v.get("deployments") or 0),
            version=str(v.get("version") or ""),
        )
        for v in views
    ]


def plan_lines(plan: Mapping[str, Any] | None) -> list[PlanLine]:
    if not plan:
        return []
    return [
        PlanLine(
            action=str(a.get("action") or "?"),
            deployment=str(a.get("deployment") or a.get("id") or "?"),
            agent=str(a.get("agent") or ""),
            reason=str(a.get("reason") or ""),
        )
        for a in plan.get("actions") or []
    ]


_BAD_EVENTS = ("failed", "invalid", "offline", "expired")
# the fields people look for first; the rest follow by name
_EVENT_KEYS = ("deployment", "agent", "kind", "ok", "error", "message", "revision", "reason")
SUMMARY_CHARS = 300


def _field(value: Any) -> str:
    if isinstance(value, list):
        shown = "; ".join(str(v) for v in value[:2])
        return shown + (f" (+{len(value) - 2} more)" if len(value) > 2 else "")
    return str(value)


def event_lines(
    events: Sequence[tuple[int, str | None, str, Mapping[str, Any]]],
) -> list[EventLine]:
    """Newest first; a one-line summary from the fields people look for first."""
    out = []
    for eid, when, kind, fields in reversed(events[-EVENTS_SHOWN:]):
        tone: Tone = "bad" if any(w in kind for w in _BAD_EVENTS) else "idle"
        if kind == "command.result" and fields.get("ok") is False:
            tone = "bad"
        first = [k for k in _EVENT_KEYS if k in fields]
        parts = [
            f"{k}={_field(fields[k])}"
            for k in [*first, *sorted(set(fields) - set(first))]
            if fields[k] not in (None, "", [], {})
        ]
        out.append(
            EventLine(
                id=eid,
                time=when or "",
                kind=kind,
                summary=" ".join(parts)[:SUMMARY_CHARS],
                tone=tone,
            )
        )
    return out


def age(iso: str | None, now: datetime) -> str:
    """``"12 s ago"``: how long since an ISO time, for people scanning a table."""
    if not iso:
        return "never"
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def clock(iso: str | None) -> str:
    """``"2026-12-04 17:45:51"`` from an ISO time (seconds are enough to read a log by)."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]


def fingerprint(
    deployments: Sequence[Mapping[str, Any]],
    agents: Sequence[Mapping[str, Any]],
    planned: str | None,
    last_event: int,
) -> str:
    """Changes when anything the page shows changes, except heartbeat times (they tick
    every few seconds and would redraw the page for nothing)."""
    quiet = [{k: v for k, v in a.items() if k != "last_seen"} for a in agents]
    body = json.dumps([deployments, quiet, planned, last_event], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]
