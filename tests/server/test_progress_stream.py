"""Live progress on the server: the in-memory hub (pure logic, a real asyncio loop) and the
agent's progress endpoint and the stream's auth (the real app through TestClient).

The stream over a real uvicorn socket, fed by a real agent, is tested end to end in
``tests/e2e/test_observability_docker.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ADMIN
from fastapi.testclient import TestClient

from reconciler.model.agentapi import BootstrapResponse
from reconciler.server.app import ControlPlane
from reconciler.server.progress import QUEUE_SIZE, Event, ProgressHub, sse


async def _drain(hub: ProgressHub, **filters: Any) -> list[Event | str]:
    """What a subscription made now holds (its replay), without waiting for more."""
    sub = hub.subscribe(**filters)
    await asyncio.sleep(0)  # let call_soon_threadsafe deliveries run
    out: list[Event | str] = []
    while (item := await sub.next(0.01)) is not None:
        out.append(item)
        if isinstance(item, str):
            break
    hub.unsubscribe(sub)
    return out


def _step(command: str, deployment: str, step: str) -> dict[str, Any]:
    return {"type": "step", "command": command, "deployment": deployment, "step": step}


class TestHub:
    def test_a_command_filter_replays_that_commands_steps_in_order(self) -> None:
        hub = ProgressHub()
        for step in ("files", "up", "record"):
            hub.publish(_step("cmd_a", "blog", step))
            hub.publish(_step("cmd_b", "shop", step))
        got = asyncio.run(_drain(hub, command="cmd_a"))
        assert [e.fields["step"] for e in got if isinstance(e, Event)] == ["files", "up", "record"]
        assert all(isinstance(e, Event) and e.fields["command"] == "cmd_a" for e in got)

    def test_no_filter_and_no_after_replays_nothing_but_after_replays_the_rest(self) -> None:
        hub = ProgressHub()
        first = hub.publish(_step("cmd_a", "blog", "files"))
        hub.publish(_step("cmd_a", "blog", "up"))
        assert asyncio.run(_drain(hub)) == []
        later = asyncio.run(_drain(hub, after=first.id))
        assert [e.fields["step"] for e in later if isinstance(e, Event)] == ["up"]

    def test_a_deployment_filter_matches_its_name_or_its_id(self) -> None:
        hub = ProgressHub()
        hub.publish({**_step("cmd_a", "blog", "up"), "deployment_id": "dpl_0123456789abcdef"})
        hub.publish(_step("cmd_b", "shop", "up"))

        async def live(deployment: str) -> list[str]:
            sub = hub.subscribe(deployment=deployment)
            hub.publish(
                {**_step("cmd_c", "blog", "record"), "deployment_id": "dpl_0123456789abcdef"}
            )
            hub.publish(_step("cmd_d", "shop", "record"))
            await asyncio.sleep(0)
            got = []
            while (item := await sub.next(0.01)) is not None:
                assert isinstance(item, Event)
                got.append(item.fields["command"])
            return got

        assert asyncio.run(live("blog")) == ["cmd_c"]
        assert asyncio.run(live("dpl_0123456789abcdef")) == ["cmd_c"]

    def test_a_slow_client_is_dropped_and_publish_never_blocks(self) -> None:
        hub = ProgressHub()
        dropped: list[int] = []
        hub.on_drop = lambda: dropped.append(1)

        async def scenario() -> tuple[list[Event | str], list[Event | str]]:
            slow = hub.subscribe()
            fast = hub.subscribe()
            for i in range(QUEUE_SIZE + 50):  # nobody reads slow; fast reads as it goes
                hub.publish(_step("cmd_a", "blog", f"s{i}"))
                await asyncio.sleep(0)
                while fast.queue.qsize():
                    fast.queue.get_nowait()
            return [await slow.next(0.01)], [await fast.next(0.01)]

        slow_got, fast_got = asyncio.run(scenario())
        assert slow_got == ["dropped: this client read too slowly"]  # the end, not a backlog
        assert fast_got == [None]  # still subscribed, nothing unread
        assert dropped == [1]

    def test_close_ends_every_stream_and_later_subscriptions_at_once(self) -> None:
        hub = ProgressHub(heartbeat=0.05)

        async def scenario() -> tuple[list[str], list[str]]:
            sub = hub.subscribe()
            chunks: list[str] = []

            async def read() -> None:
                async for chunk in hub.stream(sub):
                    chunks.append(chunk)

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.2)  # a few keep-alive comments
            hub.publish(_step("cmd_a", "blog", "up"))
            await asyncio.sleep(0.01)
            hub.close()
            await asyncio.wait_for(reader, 5)
            late: list[str] = [c async for c in hub.stream(hub.subscribe())]
            return chunks, late

        chunks, late = asyncio.run(scenario())
        assert chunks[0].startswith(": connected")
        assert ": keep-alive\n\n" in chunks
        data = [c for c in chunks if c.startswith("id: ")]
        assert len(data) == 1 and "event: step\n" in data[0] and '"step": "up"' in data[0]
        assert chunks[-1] == ": end: the server is stopping\n\n"
        assert late[-1] == ": end: the server is stopping\n\n"

    def test_the_sse_text_is_one_event_with_json_data_on_one_line(self) -> None:
        event = Event(id=7, type="step", fields={"detail": "a\nb", "step": "up"})
        text = sse(event)
        assert text.startswith("id: 7\nevent: step\ndata: {") and text.endswith("}\n\n")
        assert text.count("\n") == 4  # a newline in a value is escaped, never a new field


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    with TestClient(plane.app) as c:
        yield c


def _agent(client: TestClient, plane: ControlPlane) -> tuple[str, dict[str, str]]:
    answer = client.post(
        "/v1/agent/bootstrap", json={"token": plane.store.create_bootstrap_token()}
    )
    boot = BootstrapResponse.model_validate(answer.json())
    return boot.agent_id, {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}


def _progress(command_id: str) -> str:
    return f"/v1/agent/commands/{command_id}/progress"


def _command(plane: ControlPlane, agent: str, command_id: str) -> None:
    now = time.time()
    plane.store.create_command(
        command_id=command_id,
        agent=agent,
        deployment="dpl_0123456789abcdef",
        kind="install",
        spec_hash="0" * 64,
        payload={"action": {"deployment": "blog"}},
        created=now,
        deadline=now + 600,
    )


class TestEndpoints:
    def test_the_agents_steps_reach_the_hub_in_order(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        agent, headers = _agent(client, plane)
        _command(plane, agent, "cmd_00000000000000a1")
        body = {
            "steps": [
                {"deployment": "blog", "step": "files", "detail": "writing"},
                {"deployment": "blog", "step": "up", "time": "2026-12-04T17:00:00Z"},
            ],
            "from_a_newer_agent": True,  # unknown fields are ignored
        }
        r = client.post(
            "/v1/agent/commands/cmd_00000000000000a1/progress", json=body, headers=headers
        )
        assert r.status_code == 202 and r.json() == {"accepted": 2}
        got = asyncio.run(_drain(plane.progress, command="cmd_00000000000000a1"))
        steps = [e for e in got if isinstance(e, Event)]
        assert [e.fields["step"] for e in steps] == ["files", "up"]
        assert {e.fields["deployment"] for e in steps} == {"blog"}
        assert {e.fields["agent"] for e in steps} == {agent}
        assert steps[1].fields["time"] == 1796403600.0

    def test_another_agents_command_is_404_and_publishes_nothing(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        owner, owner_headers = _agent(client, plane)
        _, other = _agent(client, plane)
        _command(plane, owner, "cmd_00000000000000b2")
        step = {"steps": [{"step": "up"}]}
        r = client.post(
            "/v1/agent/commands/cmd_00000000000000b2/progress", json=step, headers=other
        )
        assert r.status_code == 404 and "error" in r.json()
        assert asyncio.run(_drain(plane.progress, command="cmd_00000000000000b2")) == []
        too_many = {"steps": [{"step": "up"}] * 201}
        r = client.post(
            "/v1/agent/commands/cmd_00000000000000b2/progress", json=too_many, headers=owner_headers
        )
        assert r.status_code == 400

    def test_the_stream_needs_the_admin_token(self, client: TestClient) -> None:
        assert client.get("/v1/events/stream").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/v1/events/stream", headers=wrong).status_code == 401
        bad = client.get("/v1/events/stream?after=-1", headers=ADMIN_HEADERS)
        assert bad.status_code == 400
