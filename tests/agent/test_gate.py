"""The settle gate's verdict (agent/gate.py) over synthetic sample series: pure, no Docker.

The Docker tests (test_gate_docker.py) run the same gate against real containers; these
pin each rule, including the ones a real daemon makes hard to hit on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent.gate import (
    NO_CONTAINER_GRACE,
    Outcome,
    Sample,
    SettledBy,
    SettleGate,
    decide,
    ready_now,
)
from reconciler.model.state import ContainerState

STEP = 0.25
WINDOW = 2.0


def series(*states: Sequence[ContainerState], wall0: float | None = None) -> list[Sample]:
    """One sample every 250 ms; ``wall0`` gives them epoch times too."""
    return [
        Sample(i * STEP, tuple(s), None if wall0 is None else wall0 + i * STEP)
        for i, s in enumerate(states)
    ]


def app(**kw: object) -> ContainerState:
    return ContainerState(service="app", name="c1", **kw)  # type: ignore[arg-type]


def test_no_healthcheck_settles_only_after_the_window() -> None:
    samples = series(*[[app()]] * 9)  # 0 .. 2.0 s
    assert decide(["app"], [], samples[:8], WINDOW).outcome is Outcome.WAITING
    d = decide(["app"], [], samples, WINDOW)
    assert d.outcome is Outcome.SETTLED
    assert d.at == WINDOW and d.settled_by == {"app": SettledBy.WINDOW}
    assert not d.early


def test_the_window_counts_from_the_containers_own_start() -> None:
    """A container started 1.5 s before the first sample needs 0.5 s more, not 2 s."""
    samples = series(*[[app(started_at=998.5)]] * 9, wall0=1000.0)
    d = decide(["app"], [], samples, WINDOW)
    assert d.outcome is Outcome.SETTLED and d.at == 0.5


def test_a_container_up_compose_left_alone_is_settled_at_once() -> None:
    d = decide(["app"], [], series([app(started_at=0.0)], wall0=3600.0), WINDOW)
    assert d.outcome is Outcome.SETTLED and d.at == 0.0


def test_a_crash_at_1_5_s_is_a_failure_within_the_default_window() -> None:
    """Restart policy: Docker restarts it, the count rises; restart "no": it exits."""
    running = [[app(started_at=100.0)]] * 6  # 0 .. 1.25 s
    restarted = [app(status="restarting", restarts=1, started_at=101.5)]
    d = decide(["app"], [], series(*running, restarted, wall0=100.0), WINDOW)
    assert d.outcome is Outcome.FAILED and "crash-looping (1 restarts)" in d.reason
    # caught after a restart even when the sample shows it running again
    again = [app(restarts=1, started_at=101.6)]
    d = decide(["app"], [], series(*running, again, wall0=100.0), WINDOW)
    assert d.outcome is Outcome.FAILED
    exited = [app(status="exited", exit_code=1, started_at=100.0)]
    d = decide(["app"], [], series(*running, exited, wall0=100.0), WINDOW)
    assert d.outcome is Outcome.FAILED and d.reason == "service app exited (code 1)"


def test_healthy_settles_at_once_without_the_window() -> None:
    samples = series([app(health="starting")], [app(health="starting")], [app(health="healthy")])
    d = decide(["app"], [], samples, 60.0)
    assert d.outcome is Outcome.SETTLED and d.at == 2 * STEP
    assert d.settled_by == {"app": SettledBy.HEALTHY} and d.early


def test_healthy_but_restarted_since_the_gate_began_is_a_crash_loop() -> None:
    samples = series([app(health="starting")], [app(health="healthy", restarts=1)])
    d = decide(["app"], [], samples, 60.0)
    assert d.outcome is Outcome.FAILED and "crash-looping" in d.reason


def test_restarts_before_the_gate_are_the_baseline() -> None:
    """A container that restarted long ago (an untouched service) is not a new crash."""
    d = decide(["app"], [], series([app(restarts=4, health="healthy")]), WINDOW)
    assert d.outcome is Outcome.SETTLED


def test_unhealthy_is_a_failure() -> None:
    d = decide(["app"], [], series([app(health="starting")], [app(health="unhealthy")]), 60.0)
    assert d.outcome is Outcome.FAILED and d.reason == "service app is unhealthy"


def test_one_shot_exit_zero_is_settled_and_nonzero_fails() -> None:
    db = ContainerState(service="db", name="d", health="healthy")

    def seed(code: int) -> ContainerState:
        return ContainerState(service="seed", name="s", status="exited", exit_code=code)

    ok = decide(["db", "seed"], ["seed"], series([db, seed(0)]), WINDOW)
    assert ok.outcome is Outcome.SETTLED
    assert ok.settled_by == {"db": SettledBy.HEALTHY, "seed": SettledBy.ONE_SHOT}
    bad = decide(["db", "seed"], ["seed"], series([db, seed(3)]), WINDOW)
    assert bad.outcome is Outcome.FAILED and bad.reason == "service seed exited (code 3)"


def test_mixed_services_wait_for_the_one_without_a_healthcheck() -> None:
    web = ContainerState(service="web", name="w", health="healthy")
    worker = ContainerState(service="worker", name="k")
    samples = series(*[[web, worker]] * 9)
    assert decide(["web", "worker"], [], samples[:8], WINDOW).outcome is Outcome.WAITING
    d = decide(["web", "worker"], [], samples, WINDOW)
    assert d.outcome is Outcome.SETTLED and not d.early
    assert d.settled_by == {"web": SettledBy.HEALTHY, "worker": SettledBy.WINDOW}


def test_every_replica_must_settle() -> None:
    a = ContainerState(service="app", name="a", health="healthy")
    b = ContainerState(service="app", name="b", health="starting")
    assert decide(["app"], [], series([a, b]), WINDOW).outcome is Outcome.WAITING
    crashed = ContainerState(service="app", name="b", status="restarting", restarts=1)
    assert decide(["app"], [], series([a, b], [a, crashed]), WINDOW).outcome is Outcome.FAILED


def test_a_missing_container_waits_then_fails() -> None:
    gate = SettleGate(["app"], [], WINDOW)
    assert gate.observe(Sample(NO_CONTAINER_GRACE, ())).outcome is Outcome.WAITING
    d = gate.observe(Sample(NO_CONTAINER_GRACE + STEP, ()))
    assert d.outcome is Outcome.FAILED and d.reason == "service app: no container"


@pytest.mark.parametrize("status", ["created", "paused", "removing"])
def test_not_running_waits(status: str) -> None:
    d = decide(["app"], [], series([app(status=status)]), 0.0)
    assert d.outcome is Outcome.WAITING and d.reason == f"app: {status}"


def test_ready_now_ignores_the_window() -> None:
    assert ready_now(["app"], [], [app()])
    assert not ready_now(["app"], [], [app(health="starting")])
    assert not ready_now(["app"], [], [app(status="exited", exit_code=0)])
    assert not ready_now(["app"], [], [])


class _Listed:
    def __init__(self, started: str) -> None:
        self.attrs = {
            "Name": "/c1",
            "State": {"Status": "running", "StartedAt": started},
            "Config": {"Labels": {"com.docker.compose.service": "app"}},
            "RestartCount": 0,
        }


class _Client:
    def __init__(self, *started: str) -> None:
        self.containers = self
        self._listed = [_Listed(s) for s in started]

    def list(self, **_kw: object) -> list[_Listed]:
        return self._listed


def test_the_watch_reads_docker_start_times_to_the_second() -> None:
    """Docker's nanosecond RFC 3339 stamp becomes epoch seconds; the zero time of a
    container that never started, and garbage, become None (aged by the samples)."""
    from agent.watch import DockerWatch

    states = DockerWatch(
        _Client("2026-12-04T17:40:01.123456789Z", "0001-01-01T00:00:00Z", "soon")
    ).containers("dpl_0000000000000001")
    assert [s.started_at for s in states] == [1796406001.123456, None, None]


def test_waiting_only_for_windows_says_how_long_is_left() -> None:
    """The caller may sleep until the first window ends: nothing settles sooner."""
    gate = SettleGate(["a", "b"], [], window=2.0)
    both = (
        ContainerState(service="a", name="a1", started_at=100.0),
        ContainerState(service="b", name="b1", started_at=100.5),
    )
    decision = gate.observe(Sample(0.0, both, wall=100.5))
    assert decision.outcome is Outcome.WAITING
    assert decision.window_left == pytest.approx(1.5)


def test_waiting_for_a_health_check_too_gives_no_window_hint() -> None:
    gate = SettleGate(["a", "b"], [], window=2.0)
    containers = (
        ContainerState(service="a", name="a1", started_at=100.0),
        ContainerState(service="b", name="b1", health="starting"),
    )
    decision = gate.observe(Sample(0.0, containers, wall=100.5))
    assert decision.outcome is Outcome.WAITING and decision.window_left is None
