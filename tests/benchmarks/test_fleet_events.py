"""The benchmark's one pager over ``/v1/events`` (``Run.event_pages``) and its three readers,
against a scripted event log that pages the way the server does (``after``, at most
``limit`` rows, ``last``): pure logic of the simulator; ``test_fleet_smoke.py`` runs them
against a real server, where the log never outgrows one page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import httpx

from tests.benchmarks.fleet_module import load_fleet

fleet_bench = load_fleet()
SHA = "a" * 40


class EventLog:
    """``GET /v1/events`` over ``count`` events; the run of ``SHA`` finishes at ``finished``."""

    def __init__(self, count: int, finished: int | None = None) -> None:
        self.count = count
        self.finished = finished
        self.reads: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        after = int(request.url.params["after"])
        limit = int(request.url.params["limit"])
        assert limit <= 1000  # the server's cap
        self.reads.append(after)
        ids = range(after + 1, min(after + limit, self.count) + 1)
        events = [self.event(i) for i in ids]
        return httpx.Response(200, json={"events": events, "last": ids[-1] if ids else after})

    def event(self, i: int) -> dict[str, Any]:
        if i == self.finished:
            return {"id": i, "kind": "reconcile.finished", "fields": {"revision": SHA}}
        return {"id": i, "kind": "heartbeat", "fields": {}}


def _run(log: EventLog, coro: Any) -> Any:
    async def go() -> Any:
        run = fleet_bench.Run.__new__(fleet_bench.Run)
        run.admin = httpx.AsyncClient(
            base_url="http://fleet.test", transport=httpx.MockTransport(log)
        )
        run.event_cursor = 0
        run.notes = []
        run.fleet = SimpleNamespace(phase=SimpleNamespace(name="push"))
        try:
            return run, await coro(run)
        finally:
            await run.admin.aclose()

    return asyncio.run(go())


def _call(method: str, *args: Any) -> Any:
    def call(run: Any) -> Awaitable[Any]:
        result: Awaitable[Any] = getattr(run, method)(*args)
        return result

    return call


def test_events_reads_every_page_once_and_moves_its_cursor() -> None:
    log = EventLog(2500)

    async def twice(run: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await run.events(), await run.events()

    run, (first, second) = _run(log, twice)
    assert [e["id"] for e in first] == list(range(1, 2501))
    assert second == []  # nothing new since: the cursor moved to the end
    assert run.event_cursor == 2500
    assert log.reads == [0, 1000, 2000, 2500]
    assert run.notes == []


def test_events_out_of_budget_keeps_what_it_read_and_says_so() -> None:
    log = EventLog(2500)
    run, got = _run(log, _call("events", 0.0))
    assert got == [] and log.reads == [] and run.event_cursor == 0
    assert run.notes == ["push: event log read in part only"]


def test_newest_event_id_pages_to_the_end() -> None:
    for count, reads in ((2500, [0, 1000, 2000]), (2000, [0, 1000, 2000]), (0, [0])):
        log = EventLog(count)
        _, newest = _run(log, _call("newest_event_id"))
        assert newest == count
        assert log.reads == reads


def test_plan_stored_finds_the_run_past_the_first_page_from_its_cursor() -> None:
    log = EventLog(2500, finished=1700)
    run, when = _run(log, _call("plan_stored", SHA, 500, 30.0))
    assert when is not None and run.notes == []
    assert log.reads == [500, 1500]  # from the cursor given, stopped at the page holding it


def test_plan_stored_without_the_run_says_so() -> None:
    log = EventLog(10)  # no reconcile.finished for SHA
    run, when = _run(log, _call("plan_stored", SHA, 0, 0.2))
    assert when is None
    assert run.notes == [f"push: no plan for {SHA[:12]} in 0.2 s"]
    assert log.reads and set(log.reads) == {0, 10}  # read again from where it got to
