"""Prometheus metrics of one server, in its own registry (two apps in one test process
never collide, and ``/metrics`` shows only this server's series)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds",
            "Time one reconcile took: fetch, load, render, plan, commands.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.reconcile_runs = Counter(
            "reconcile_runs_total",
            "Reconciles run, by what triggered them.",
            ["trigger"],
            registry=self.registry,
        )
        self.actions = Counter(
            "reconcile_actions_total",
            "Plan actions by kind and outcome (issued, blocked, ok, failed, expired, superseded).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "webhook_deliveries_total",
            "Webhook deliveries by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.webhook_events_suppressed = Counter(
            "webhook_events_suppressed_total",
            "Refused deliveries past their source address's event budget: counted, not logged.",
            ["provider"],
            registry=self.registry,
        )
        self.agents_online = Gauge(
            "agents_online", "Agents whose last report is recent.", registry=self.registry
        )

    def observe_webhook(self, provider: str, result: str) -> None:
        self.webhooks.labels(provider=provider, result=result).inc()

    def observe_suppressed(self, provider: str) -> None:
        self.webhook_events_suppressed.labels(provider=provider).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
