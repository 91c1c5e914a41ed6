"""``GET /v1/events/stream`` across replicas: what one publishes, every one streams.

End to end over real sockets, on both shared databases (SQLite in WAL mode, the test
PostgreSQL): two ``reconcile serve`` processes, an admin streaming from the follower, the
leader issuing the command, the agent posting steps to one replica and to the other and
its result to the first; then replays by ``after=`` and ``Last-Event-ID`` on either
replica and on a third started afterwards.  Below that, the hubs themselves on one real
shared store: publishers racing on two replicas, every subscriber sees every event once,
in id order.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from agent.client import AgentClient, Credentials
from reconciler.model.agentapi import CommandResult, ProgressStep
from reconciler.server.app import build_control_plane
from reconciler.server.config import ServerConfig
from reconciler.server.progress import Event, ProgressHub
from reconciler.server.store import PROGRESS_RETENTION
from tests.replicas.conftest import SharedDatabase, agent_on, start_replica
from tests.server.conftest import Remote
from tests.server.serve_helpers import ADMIN_HEADERS, Serve, signed_push

#: Generous: the promise is "within about a second"; a loaded test machine is slower.
ARRIVAL_TIMEOUT = 30.0


class Stream:
    """One SSE client in a thread: every event it reads, parsed, with when it came."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, **params: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._url, self._params = url + "/v1/events/stream", params
        self._headers = {**ADMIN_HEADERS, **(headers or {})}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.connected.wait(30), "the stream did not connect"

    def _read(self) -> None:
        with httpx.stream(
            "GET", self._url, params=self._params, headers=self._headers, timeout=60
        ) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith(": connected"):
                    self.connected.set()
                if line.startswith("data: "):
                    with self._cond:
                        self.events.append(json.loads(line.removeprefix("data: ")))
                        self.arrived.append(time.monotonic())
                        self._cond.notify_all()
                if self._stop.is_set():
                    return

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; got {self.events}"
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()  # the reader leaves at its next line (a keep-alive at the latest)


def of(events: list[dict[str, Any]], command: str) -> list[tuple[str, str]]:
    """``(type, step)`` of one command's events, in the order they came."""
    return [(e["type"], e.get("step", "")) for e in events if e.get("command") == command]


def result_of(command: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: ("command.result", "") in of(events, command)


def on(client: AgentClient, replica: Serve) -> AgentClient:
    """The same agent talking to another replica (the load balancer's choice)."""
    assert client.credentials is not None
    other = AgentClient(replica.url)
    other.credentials = Credentials(
        server=replica.url,
        agent_id=client.credentials.agent_id,
        secret=client.credentials.secret,
    )
    return other


def steps(*names: str) -> list[ProgressStep]:
    return [ProgressStep(deployment="api", step=n, time=datetime.now(UTC)) for n in names]


def test_steps_and_results_posted_to_one_replica_stream_from_the_other(
    pair: tuple[Serve, Serve],
    remote: Remote,
    shared_db: SharedDatabase,
    tmp_path: pathlib.Path,
) -> None:
    a, b = pair
    assert httpx.get(a.url + "/readyz", timeout=10).json()["leader"] is True
    client = agent_on(a, shared_db)
    agent = client.credentials.agent_id if client.credentials else ""
    remote.commit(
        {
            "reconcile.yaml": f"namespace: srv\nagents:\n  host1: {agent}\n",
            "deployments/api.yaml": "name: api\nagent: host1\nimage: busybox:1.36\n"
            "target_port: 80\n",
        },
        "api",
    )
    on_b = Stream(b.url)  # the follower: the leader (A) issues the command
    on_a = Stream(a.url)
    try:
        assert signed_push(a.url, "stream-1").status_code == 202
        polled = client.commands(wait=60)
        assert [c.action.deployment for c in polled.commands] == ["api"]
        command = polled.commands[0].id
        on_b.wait_for(lambda e: ("command.sent", "") in of(e, command), "command.sent on B")

        client.post_progress(command, steps("files", "up"))  # to A
        to_b = on(client, b)
        try:
            # to B at once: B has to show A's two steps first, whether it has read them yet
            # or not (its own event makes it read what committed before it)
            to_b.post_progress(command, steps("settle"))
        finally:
            to_b.close()
        posted = time.monotonic()
        client.post_result(command, CommandResult(ok=True, message="installed", seconds=1.5))
        on_b.wait_for(result_of(command), "the result on B")
        on_a.wait_for(result_of(command), "the result on A")
        arrived = on_b.arrived[-1]
    finally:
        on_b.close()
        on_a.close()
    print(f"result posted to A -> on B's stream: {arrived - posted:.3f} s")

    want = [
        ("command.sent", ""),
        ("step", "files"),
        ("step", "up"),
        ("step", "settle"),
        ("command.result", ""),
    ]
    assert of(on_b.events, command) == want  # in order, each once
    assert of(on_a.events, command) == want
    ids = [e["id"] for e in on_b.events]
    assert ids == sorted(set(ids)), "ids on B are not strictly increasing"
    # one id per event on every replica: a reconnect through the load balancer resumes
    assert [e["id"] for e in on_a.events if e.get("command") == command] == [
        e["id"] for e in on_b.events if e.get("command") == command
    ]
    result = on_b.events[-1]
    assert (result["ok"], result["message"], result["agent"]) == (True, "installed", agent)
    assert result["deployment"] == "api" and result["deployment_id"].startswith("dpl_")

    # Replays: after= on B, Last-Event-ID on A, and a replica started afterwards.
    mine = [e for e in on_b.events if e.get("command") == command]
    first = mine[1]["id"]  # the step "files"
    c = start_replica(remote, shared_db, tmp_path / "c")
    try:
        for replay, expected in (
            (Stream(b.url, after=str(first)), mine[2:]),
            (Stream(a.url, headers={"Last-Event-ID": str(first)}), mine[2:]),
            (Stream(c.url, after=str(first)), mine[2:]),
            (Stream(c.url, command=command), mine),  # a command filter: its events so far
        ):
            try:
                replay.wait_for(result_of(command), "the replay")
            finally:
                replay.close()
            assert [e for e in replay.events if e.get("command") == command] == expected
            assert all(e["id"] > first for e in replay.events) or expected == mine
    finally:
        c.stop()
    client.close()


def test_publishers_racing_on_two_replicas_reach_every_subscriber_once_in_order(
    shared_db: SharedDatabase,
) -> None:
    stores = [shared_db.open_store(), shared_db.open_store()]
    hubs = [ProgressHub(feed=s, poll=0.05) for s in stores]
    for hub in hubs:
        hub.start()
    per_thread = 40  # events of each of the three threads per replica

    async def watch() -> list[list[Event]]:
        subs = [hub.subscribe() for hub in hubs]

        def publish(hub: ProgressHub, name: str) -> None:
            command = f"cmd_{name}"
            mine = [{"type": "step", "command": command, "step": str(n)} for n in range(per_thread)]
            if name.endswith("2"):  # a reconcile's batch of command.sent: several at once
                for start in range(0, per_thread, 8):
                    hub.publish_many(mine[start : start + 8])
                return
            for fields in mine:
                hub.publish(fields)

        threads = [
            threading.Thread(target=publish, args=(hub, f"{i}{j}"))
            for i, hub in enumerate(hubs)
            for j in range(3)
        ]
        for thread in threads:
            thread.start()
        got: list[list[Event]] = [[], []]
        total = per_thread * len(threads)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while min(len(g) for g in got) < total and time.monotonic() < deadline:
            for sub, into in zip(subs, got, strict=True):
                item = await sub.next(0.05)
                if isinstance(item, Event):
                    into.append(item)
        for thread in threads:
            thread.join()
        return got

    try:
        got = asyncio.run(watch())
    finally:
        for hub in hubs:
            hub.close()
        for store in stores:
            store.close()
    for seen in got:
        ids = [e.id for e in seen]
        assert len(ids) == per_thread * 6 and ids == sorted(set(ids))
        for name in (f"{i}{j}" for i in range(2) for j in range(3)):  # each publisher in order
            mine = [int(e.fields["step"]) for e in seen if e.fields["command"] == f"cmd_{name}"]
            assert mine == list(range(per_thread))
    assert [e.id for e in got[0]] == [e.id for e in got[1]]
    assert [e.fields for e in got[0]] == [e.fields for e in got[1]]


def test_the_store_keeps_only_the_newest_progress_events(sqlite_db: SharedDatabase) -> None:
    store = sqlite_db.open_store()
    try:
        one_by_one = range(2 * PROGRESS_RETENTION)
        ids = [store.append_progress([("step", {"n": n})])[0] for n in one_by_one]
        batch = range(len(ids), len(ids) + 150)
        ids += store.append_progress([("step", {"n": n}) for n in batch])
        kept = store.progress_between(0, limit=10 * PROGRESS_RETENTION)
        assert ids == list(range(1, len(ids) + 1))  # in order, one batch of 150 included
        assert kept[-1] == (ids[-1], "step", {"n": len(ids) - 1})
        assert PROGRESS_RETENTION <= len(kept) < PROGRESS_RETENTION + 200
        assert [row[0] for row in store.progress_between(ids[-5], ids[-2])] == ids[-4:-2]
    finally:
        store.close()


def test_a_server_on_its_own_data_dir_keeps_the_stream_in_memory(tmp_path: pathlib.Path) -> None:
    """No shared database: nobody to share with, so nothing is written (as before)."""
    config = ServerConfig(source=str(tmp_path / "repo"), data_dir=tmp_path / "data")
    plane = build_control_plane(config)
    try:
        first = plane.progress.publish({"type": "step", "command": "cmd_a", "step": "up"})
        second = plane.progress.publish({"type": "step", "command": "cmd_a", "step": "record"})
        assert (first.id, second.id) == (1, 2)
        assert plane.store.last_progress_id() == 0
    finally:
        plane.progress.close()
        plane.store.close()
    shared = ServerConfig(
        source=str(tmp_path / "repo"),
        data_dir=tmp_path / "data2",
        database=str(tmp_path / "shared.db"),
    )
    plane = build_control_plane(shared)
    try:
        event = plane.progress.publish({"type": "step", "command": "cmd_a", "step": "up"})
        assert plane.store.progress_between(0) == [(event.id, "step", event.fields)]
    finally:
        plane.progress.close()
        plane.store.close()
