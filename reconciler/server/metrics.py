"""Prometheus metrics of one server, in its own registry (two apps in one test process
never collide, and ``/metrics`` shows only this server's series).

Every series of ours starts with ``reconcile_``; the process collector's ``process_*``
series keep their standard names, so the dashboards and alerts written for every other
exporter work unchanged.  The per-deployment series are read from the store at scrape
time (a collector, not gauges set by the worker): a deployment removed from git loses its
series at once instead of reporting its last value forever.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DeploymentSample", "Metrics", "RunResult"]

#: ``reconcile_runs_total{result}``: ok (planned and dispatched), invalid (the repository
#: did not validate: nothing planned), failed (the source could not be read), error (a bug
#: raised inside the run).
RunResult = str


@dataclass(frozen=True)
class DeploymentSample:
    """One deployment as ``/metrics`` shows it (see :meth:`Metrics.watch_deployments`)."""

    name: str
    namespace: str
    agent: str
    status: str  # running | failed | uninstalled | not installed
    health: str  # healthy | unhealthy | starting | unknown
    in_sync: bool


class _Deployments(Collector):
    def __init__(self, source: Callable[[], Sequence[DeploymentSample]]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "reconcile_deployment_info",
            "One series per desired deployment; always 1, the labels carry its state.",
            labels=["name", "namespace", "agent", "status", "health"],
        )
        sync = GaugeMetricFamily(
            "reconcile_deployment_in_sync",
            "1 when the agent runs the desired spec hash of the deployment, else 0.",
            labels=["name", "namespace", "agent"],
        )
        for d in self.source():
            info.add_metric([d.name, d.namespace, d.agent, d.status, d.health], 1)
            sync.add_metric([d.name, d.namespace, d.agent], 1 if d.in_sync else 0)
        yield info
        yield sync


class Metrics:
    def __init__(self, *, process: bool = True) -> None:
        from reconciler import __version__

        self.registry = CollectorRegistry()
        if process:  # /proc only: absent elsewhere, and then it yields nothing
            ProcessCollector(registry=self.registry)
        Info("reconcile_build", "The running server's version.", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds",
            "Time one reconcile took: fetch, load, render, plan, commands.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.reconcile_runs = Counter(
            "reconcile_runs_total",
            "Reconciles finished, by what triggered them and how they ended "
            "(ok, invalid, failed, error).",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "reconcile_last_success_timestamp_seconds",
            "Unix time of the end of the last reconcile that planned and dispatched "
            "(0: none yet). Alert on time() minus this.",
            registry=self.registry,
        )
        self.actions = Counter(
            "reconcile_actions_total",
            "Plan actions by kind and outcome (issued, blocked, ok, failed, expired, superseded).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "reconcile_webhook_deliveries_total",
            "Webhook deliveries by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.webhook_events_suppressed = Counter(
            "reconcile_webhook_events_suppressed_total",
            "Refused deliveries past their source address's event budget: counted, not logged.",
            ["provider"],
            registry=self.registry,
        )
        self.agents_online = Gauge(
            "reconcile_agents_online", "Agents whose last report is recent.", registry=self.registry
        )
        self.leader = Gauge(
            "reconcile_leader",
            "1 while this replica runs the reconciles (it holds the source's lease), else 0.",
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "reconcile_stream_clients",
            "Clients connected to GET /v1/events/stream.",
            registry=self.registry,
        )
        self.stream_dropped = Counter(
            "reconcile_stream_dropped_clients",
            "Stream clients disconnected because they read too slowly (their queue was full).",
            registry=self.registry,
        )

    def observe_webhook(self, provider: str, result: str) -> None:
        self.webhooks.labels(provider=provider, result=result).inc()

    def observe_suppressed(self, provider: str) -> None:
        self.webhook_events_suppressed.labels(provider=provider).inc()

    def observe_run(self, trigger: str, result: RunResult, *, finished: float) -> None:
        self.reconcile_runs.labels(trigger=trigger, result=result).inc()
        if result == "ok":
            self.last_success.set(finished)

    def watch_deployments(self, source: Callable[[], Sequence[DeploymentSample]]) -> None:
        """Read the per-deployment series from ``source`` at every scrape."""
        self.registry.register(_Deployments(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
