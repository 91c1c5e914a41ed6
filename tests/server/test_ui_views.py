"""Unit tests of the dashboard's pure parts: what a deployment's status and health read
as, the hint split from a failed step's message, ages, the change fingerprint, and the
in-memory sessions (expiry and the bound), on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.server.ui import auth, views


def view(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "web",
        "id": "dpl_0123456789abcdef",
        "agent": "agt_0123456789abcdef",
        "status": "not installed",
        "in_sync": False,
        "containers": [],
        "plan_action": "install",
        "plan_reason": "new deployment",
        "last_command": None,
        "urls": [],
        "desired_spec_hash": "a" * 64,
        "actual_spec_hash": None,
    }
    base.update(over)
    return base


def cmd(state: str, kind: str = "install", **result: Any) -> dict[str, Any]:
    return {"state": state, "kind": kind, "result": result or None, "revision": "c" * 40}


@pytest.mark.parametrize(
    ("over", "status", "tone"),
    [
        ({}, "not installed", "idle"),
        ({"last_command": cmd("pending")}, "installing", "busy"),
        ({"last_command": cmd("pending", "update")}, "updating", "busy"),
        ({"last_command": cmd("pending", "repair")}, "applying", "busy"),
        ({"plan_action": "blocked", "plan_reason": "agent offline"}, "blocked", "bad"),
        ({"status": "running", "in_sync": True}, "running", "good"),
        ({"last_command": cmd("failed", ok=False, message="up: boom")}, "failed", "bad"),
        # an update failed and was rolled back: the old release runs, the error still shows
        (
            {
                "status": "running",
                "in_sync": False,
                "last_command": cmd("failed", "update", ok=False, message="up: boom"),
            },
            "failed",
            "bad",
        ),
    ],
)
def test_status_and_tone(over: dict[str, Any], status: str, tone: str) -> None:
    (row,) = views.deployment_rows([view(**over)])
    assert (row.status, row.tone) == (status, tone)


def test_a_failed_steps_hint_is_split_from_its_message() -> None:
    message = "pull: no such host (hint: the image is not available locally)"
    (row,) = views.deployment_rows([view(last_command=cmd("failed", ok=False, message=message))])
    assert row.error == "pull: no such host"
    assert row.hint == "the image is not available locally"
    assert row.commit == "c" * 40
    assert views.split_hint("no hint here (really)") == ("no hint here (really)", None)


def test_the_classified_failure_text_splits_into_message_and_hint() -> None:
    """What the agent sends (agent.failures): the hint holds parentheses, a note follows
    it, and the output's last lines come after the first line."""
    from agent.failures import classify

    failure = classify("up", "Error response: pull access denied for nosuch/app", None)
    assert failure.hint is not None and "(" in failure.hint
    error, hint = views.split_hint(failure.text("; stack stopped, data kept"))
    assert hint == failure.hint
    assert error.splitlines()[0] == f"{failure.headline()}; stack stopped, data kept"


def test_a_blocked_action_shows_its_reason_as_the_error() -> None:
    (row,) = views.deployment_rows([view(plan_action="blocked", plan_reason="needs 4096 MB")])
    assert row.error == "needs 4096 MB" and row.hint is None


@pytest.mark.parametrize(
    ("containers", "health"),
    [
        ([], "no containers"),
        (
            [{"service": "app", "status": "running", "health": "healthy"}],
            "healthy (1 of 1 checked)",
        ),
        ([{"service": "app", "status": "exited", "health": "none"}], "app exited"),
        (
            [
                {"service": "app", "status": "running", "health": "unhealthy"},
                {"service": "db", "status": "running", "health": "healthy"},
            ],
            "1 of 2 unhealthy",
        ),
        ([{"service": "app", "status": "running", "health": "none"}], "1 running, no healthcheck"),
        # a one-shot service that has exited is not "down"
        (
            [
                {"service": "init", "status": "exited", "one_shot": True},
                {"service": "app", "status": "running", "health": "none"},
            ],
            "1 running, no healthcheck, 1 done",
        ),
    ],
)
def test_health_reads_as_people_ask(containers: list[dict[str, Any]], health: str) -> None:
    (row,) = views.deployment_rows([view(containers=containers)])
    assert row.health == health


def test_capacity_renders_what_the_agent_reported() -> None:
    base = {"id": "agt_1", "online": True}
    (a,) = views.agent_rows([{**base, "capacity": {"memory_mb": 2048, "cpus": 4}}])
    assert a.capacity == [("memory", "2.0 GiB"), ("cpus", "4")]
    (b,) = views.agent_rows([{**base, "capacity": {"memory_mb": None}}])
    assert b.capacity == []


def test_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert views.age("2026-01-01T11:59:50Z", now) == "10 s ago"
    assert views.age("2026-01-01T11:00:00Z", now) == "60 min ago"
    assert views.age("2025-12-25T12:00:00Z", now) == "7 days ago"
    assert views.age(None, now) == "never"
    assert views.age("not a time", now) == "not a time"


def test_the_fingerprint_ignores_heartbeats_only() -> None:
    agents = [{"id": "agt_1", "online": True, "last_seen": "t1"}]
    first = views.fingerprint([view()], agents, "p1", 7)
    assert views.fingerprint([view()], [{**agents[0], "last_seen": "t2"}], "p1", 7) == first
    assert views.fingerprint([view()], [{**agents[0], "online": False}], "p1", 7) != first
    assert views.fingerprint([view(status="running")], agents, "p1", 7) != first
    assert views.fingerprint([view()], agents, "p2", 7) != first
    assert views.fingerprint([view()], agents, "p1", 8) != first


def test_events_are_newest_first_and_failures_stand_out() -> None:
    lines = views.event_lines(
        [
            (1, "t1", "reconcile.started", {"reason": "startup"}),
            (2, "t2", "command.result", {"deployment": "dpl_x", "ok": False}),
        ]
    )
    assert [e.id for e in lines] == [2, 1]
    assert lines[0].tone == "bad" and lines[1].tone == "idle"
    assert lines[0].summary == "deployment=dpl_x ok=False"
    (failed,) = views.event_lines(
        [(3, "t3", "reconcile.invalid", {"problems": ["a", "b", "c"], "reason": "push", "x": 1})]
    )
    assert failed.summary == "reason=push problems=a; b (+1 more) x=1"
    assert failed.tone == "bad"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_expires() -> None:
    clock = FakeClock()
    sessions = auth.Sessions(ttl=60, clock=clock)
    sid, made = sessions.create("read")
    assert sessions.get(sid) == made and made.role == "read"
    clock.now += 59
    assert sessions.get(sid) is not None
    clock.now += 1
    assert sessions.get(sid) is None and len(sessions) == 0
    assert sessions.get(None) is None and sessions.get("") is None


def test_sessions_are_bounded_oldest_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_SESSIONS", 3)
    sessions = auth.Sessions()
    ids = [sessions.create("admin")[0] for _ in range(4)]
    assert len(sessions) == 3
    assert sessions.get(ids[0]) is None
    assert all(sessions.get(i) is not None for i in ids[1:])
    sessions.drop(ids[1])
    assert sessions.get(ids[1]) is None


def test_same_token_needs_both_and_equal() -> None:
    assert auth.same_token("a", "a")
    assert not auth.same_token("a", "b")
    assert not auth.same_token("", "")
    assert not auth.same_token(None, "a")
