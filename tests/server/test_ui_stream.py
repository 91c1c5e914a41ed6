"""The dashboard's live feed, ``GET /ui/stream``, on a real ``reconcile serve`` process
(uvicorn on a 127.0.0.1 socket): an update when the state changes, none when the client
is already current, a bound on open streams, and the end of every stream when the
server stops.  The feed's timing rules (heartbeat, lifetime) are unit-tested on a fake
clock at the end."""

from __future__ import annotations

import asyncio
import pathlib
import signal
from collections.abc import Iterator

import httpx
import pytest
from conftest import Remote
from serve_helpers import ADMIN_HEADERS, Serve

from reconciler.server.ui import routes
from tests.e2e.cluster import wait_for


@pytest.fixture
def serve(remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
    remote.commit({"reconcile.yaml": "namespace: ui-stream\n"})
    s = Serve(remote.url, tmp_path / "data")
    yield s
    s.stop()


def events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) per SSE message; comments come as ("comment", text)."""
    name, data = "message", ""
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif line == "" and data:
            yield name, data
            name, data = "message", ""


def test_a_stream_says_when_the_state_changes_and_only_then(serve: Serve) -> None:
    with httpx.stream("GET", serve.url + "/ui/stream", headers=ADMIN_HEADERS, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        feed = events(r.iter_lines())
        assert next(feed) == ("comment", "connected")
        kind, first = next(feed)  # a client that knows nothing is told the current version
        assert kind == "update" and len(first) == 16
    with httpx.stream(
        "GET", serve.url + f"/ui/stream?since={first}", headers=ADMIN_HEADERS, timeout=30
    ) as r:
        feed = events(r.iter_lines())
        assert next(feed) == ("comment", "connected")
        # a change: a new event in the log (the audit record of a new agent token)
        made = httpx.post(serve.url + "/v1/agent-tokens", headers=ADMIN_HEADERS, timeout=10)
        assert made.status_code == 201
        kind, second = next(m for m in feed if m[0] != "comment")
        assert kind == "update" and second != first
        page = httpx.get(serve.url + "/ui/live", headers=ADMIN_HEADERS, timeout=10).text
        assert ">agent.token<" in page


def test_a_stream_needs_a_token(serve: Serve) -> None:
    r = httpx.get(serve.url + "/ui/stream", timeout=10)
    assert r.status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(serve.url + "/ui/stream", headers=wrong, timeout=10).status_code == 401


def test_open_streams_are_bounded_and_a_closed_one_frees_its_place(serve: Serve) -> None:
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        opened = []
        try:
            for _ in range(routes.MAX_STREAMS):
                stream = client.stream("GET", serve.url + "/ui/stream", headers=ADMIN_HEADERS)
                response = stream.__enter__()
                assert response.status_code == 200
                opened.append(stream)
            over = client.get(serve.url + "/ui/stream", headers=ADMIN_HEADERS)
            assert over.status_code == 503 and over.headers["retry-after"] == "10"
            opened.pop().__exit__(None, None, None)

            def one_more() -> bool:
                with client.stream("GET", serve.url + "/ui/stream", headers=ADMIN_HEADERS) as r:
                    return r.status_code == 200

            wait_for(one_more, 30, "a place freed by the closed stream", step=0.2)
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)


def test_streams_end_when_the_server_stops(serve: Serve) -> None:
    with httpx.stream("GET", serve.url + "/ui/stream", headers=ADMIN_HEADERS, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        serve.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in lines:  # the stream ends (cut by the server), never hangs
                pass
    # a graceful stop (uvicorn re-raises the signal once it has finished)
    assert serve.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Finished server process" in serve.log.read_text()


def test_the_feed_beats_and_ends_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit: with nothing changing, one update (the client knew nothing), then a
    heartbeat comment at least every HEARTBEAT_SECONDS, and the end after STREAM_SECONDS."""
    monkeypatch.setattr(routes, "POLL_SECONDS", 0)
    ticks = iter(range(0, 10_000, 5))  # five seconds pass between two looks at the clock

    async def version() -> str:
        return "v1"

    async def collect() -> list[str]:
        return [m async for m in routes._feed("", version, clock=lambda: next(ticks))]

    out = asyncio.run(collect())
    assert out[0].startswith("retry: ")
    assert out[1] == "event: update\ndata: v1\n\n"
    beats = out[2:]
    assert beats and all(m == ": keep-alive\n\n" for m in beats)
    assert len(beats) <= routes.STREAM_SECONDS / routes.HEARTBEAT_SECONDS


def test_stream_slots_are_bounded() -> None:
    slots = routes._StreamSlots(1)
    assert slots.take() and not slots.take()
    slots.give_back()
    assert slots.take()
