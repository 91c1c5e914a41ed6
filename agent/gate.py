"""The settle gate's verdict from a series of container samples: pure, no clock, no Docker.

The gate decides whether a deployment that ``docker compose up`` just started is running
(settled), still coming up (waiting), or broken (failed: the update is rolled back).  It
used to wait until *every* service had looked ready for 3 s, counted from the gate's first
sample: the largest single part of a one-app change (4.2 s end to end in issue 15, against
harbormaster's 3.6 s).  ``benchmarks/apply.py`` times each step of a one-app change; on a
busy 2-core machine: process start to the first step 1.3 s, ``proxy.ensure`` 1.1 s,
``compose up`` 1.4 s, route push 7 ms, gate 2.1 s, probe 0.7 s, release + record + exit
1.1 s.  Two rules cut the gate without losing the crash-loop verdict:

* **A service with a healthcheck is settled once it is healthy** and its restart count has
  not risen since the gate began: the app itself says it is ready, and ``unhealthy`` or a
  restart is still a failure.  It does not wait out any window (gate 0.5 s with a 500 ms
  healthcheck interval, measured).
* **A service without one is settled once it has been running for the window**, counted
  from the container's own start (``State.StartedAt``), not from the gate's first sample,
  so a container that ``up`` left alone (nothing of it changed) is settled at once, and a
  new one needs the window of its own life (``up`` returns right after the start, so this
  saves little for a new container: measured, the gate still took 2.1 s of a 2 s window).
  The window (``--settle``, default 2 s, was 3 s) must be longer than the time a broken
  service takes to fail: a service that crashes 1.5 s after it starts fails, and that
  case is a test (``tests/agent/test_gate_docker.py``; with a 1 s window that test
  fails: the crash is missed).

A crash loop shows as a rising restart count (Docker restarts it: ``restart: always`` or
``unless-stopped``), as ``restarting``, or as an exited long-running service (``restart:
"no"``); a one-shot service (``restart: "no"``) exiting 0 is fine.  A service that never
gets a container within :data:`NO_CONTAINER_GRACE` fails.

:class:`SettleGate` folds samples one at a time (the executor's loop); :func:`decide` folds
a whole series (the tests).  Each :class:`Decision` says, per service, why it counts as
settled, so the caller can record the gate's reasoning rather than only its timing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.model.state import ContainerState

__all__ = [
    "NO_CONTAINER_GRACE",
    "Decision",
    "Outcome",
    "Sample",
    "SettleGate",
    "SettledBy",
    "decide",
    "ready_now",
]

NO_CONTAINER_GRACE = 10.0  # seconds a long-running service may have no container yet


class Outcome(StrEnum):
    WAITING = "waiting"
    SETTLED = "settled"
    FAILED = "failed"


class SettledBy(StrEnum):
    """Why one service counts as settled."""

    HEALTHY = "healthy"  # its healthcheck passed, no restart since the gate began
    WINDOW = "window"  # running, no healthcheck, up for the settle window
    ONE_SHOT = "one-shot"  # restart "no": exited 0, or created and not started


@dataclass(frozen=True)
class Sample:
    """The deployment's containers as seen at one moment.

    ``at`` is seconds since the gate began (a monotonic clock); ``wall`` is the same
    moment in epoch seconds, to age containers by their ``started_at`` (Docker's
    ``StartedAt``, on the daemon's clock, which on one host is ours).
    """

    at: float
    containers: tuple[ContainerState, ...]
    wall: float | None = None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str  # the failure, what is awaited, or how it settled
    at: float  # the sample it was decided on (seconds since the gate began)
    settled_by: dict[str, SettledBy] = field(default_factory=dict)  # service -> why
    # Waiting only for windows to pass: the seconds until the first of them could end.
    # Nothing the gate reads can settle sooner, and a crash meanwhile stays visible (the
    # restart count only rises, an exited container stays exited), so the caller may
    # sample again after this long instead of every interval.
    window_left: float | None = None

    @property
    def early(self) -> bool:
        """Settled without waiting out any service's window (every service healthy or done)."""
        return self.outcome is Outcome.SETTLED and SettledBy.WINDOW not in set(
            self.settled_by.values()
        )


class SettleGate:
    """The verdict over the samples seen so far; feed them in order with :meth:`observe`."""

    def __init__(self, services: Sequence[str], one_shot: Iterable[str], window: float) -> None:
        self.services = tuple(services)
        self.one_shot = frozenset(one_shot)
        self.window = window
        self._baseline: dict[str, int] = {}  # container -> restarts at its first sample
        self._running_since: dict[tuple[str, int], float] = {}  # (container, restarts) -> at
        self._left: list[float] = []  # this sample's window waits: seconds left of each

    def observe(self, sample: Sample) -> Decision:
        by_service: dict[str, list[ContainerState]] = {}
        for c in sample.containers:
            by_service.setdefault(c.service, []).append(c)
        waiting: list[str] = []
        settled: dict[str, SettledBy] = {}
        self._left = []  # window waits among ``waiting``
        for service in self.services:
            found = by_service.get(service, [])
            one_shot = service in self.one_shot
            if not found:
                if one_shot:
                    settled[service] = SettledBy.ONE_SHOT
                    continue
                if sample.at > NO_CONTAINER_GRACE:
                    return Decision(Outcome.FAILED, f"service {service}: no container", sample.at)
                waiting.append(f"{service}: starting")
                continue
            ways: set[SettledBy] = set()
            for c in found:
                verdict = self._container(service, c, sample, one_shot=one_shot)
                if isinstance(verdict, Decision):
                    return verdict
                if isinstance(verdict, SettledBy):
                    ways.add(verdict)
                else:
                    waiting.append(verdict)
            if ways and len(ways) == 1:
                settled[service] = ways.pop()
            elif ways:  # replicas settled in different ways: the slower one names it
                settled[service] = SettledBy.WINDOW
        if waiting:
            left = min(self._left) if len(self._left) == len(waiting) else None
            return Decision(Outcome.WAITING, ", ".join(waiting), sample.at, settled, left)
        how = ", ".join(f"{s}: {w.value}" for s, w in settled.items()) or "no services"
        return Decision(Outcome.SETTLED, how, sample.at, settled)

    def _container(
        self, service: str, c: ContainerState, sample: Sample, *, one_shot: bool
    ) -> Decision | SettledBy | str:
        """One container: a failure, the way it settled, or what it waits for."""
        key = c.name or service
        base = self._baseline.setdefault(key, c.restarts)
        if c.restarts > base or c.status == "restarting":
            return Decision(
                Outcome.FAILED,
                f"service {service} is crash-looping ({c.restarts} restarts)",
                sample.at,
            )
        if c.status in ("exited", "dead"):
            if one_shot and c.exit_code == 0:
                return SettledBy.ONE_SHOT
            return Decision(
                Outcome.FAILED, f"service {service} exited (code {c.exit_code})", sample.at
            )
        if c.health == "unhealthy":
            return Decision(Outcome.FAILED, f"service {service} is unhealthy", sample.at)
        if one_shot and c.status == "created":
            return SettledBy.ONE_SHOT
        if c.status != "running":
            return f"{service}: {c.status}"
        if c.health == "starting":
            return f"{service}: health starting"
        if c.health == "healthy":
            return SettledBy.HEALTHY
        up = self._up_for(key, c, sample)
        if up >= self.window:
            return SettledBy.WINDOW
        self._left.append(self.window - up)
        return f"{service}: up {up:.1f} of {self.window:g} s"

    def _up_for(self, key: str, c: ContainerState, sample: Sample) -> float:
        """How long this container has been running: from its own start when known, else
        from the first sample that saw it running with this restart count."""
        first = self._running_since.setdefault((key, c.restarts), sample.at)
        seen = sample.at - first
        if c.started_at is not None and sample.wall is not None:
            return max(seen, sample.wall - c.started_at)
        return seen


def decide(
    services: Sequence[str],
    one_shot: Iterable[str],
    samples: Iterable[Sample],
    window: float,
) -> Decision:
    """The gate's verdict after a series of samples: the first failure or settlement, else
    the last sample's waiting state."""
    gate = SettleGate(services, one_shot, window)
    last = Decision(Outcome.WAITING, "no sample yet", 0.0)
    for sample in samples:
        last = gate.observe(sample)
        if last.outcome is not Outcome.WAITING:
            return last
    return last


def ready_now(
    services: Sequence[str], one_shot: Iterable[str], containers: Sequence[ContainerState]
) -> bool:
    """Whether one sample shows the deployment running as it should (window ignored): the
    test of an update that only moves routes, whose containers have run all along."""
    sample = Sample(0.0, tuple(containers))
    return decide(services, one_shot, [sample], 0.0).outcome is Outcome.SETTLED
