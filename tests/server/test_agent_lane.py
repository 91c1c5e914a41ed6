"""The agents' heartbeat and long poll, answered in front of FastAPI
(reconciler.server.agentlane): the same contract as every other endpoint, without the
framework's stack on the path that carries nearly all of a fleet's traffic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Remote, make_config
from fastapi.testclient import TestClient

from reconciler.model.agentapi import CommandBatch, ReportAck
from reconciler.server.agentlane import COMMANDS, REPORT, AgentLane
from reconciler.server.app import ControlPlane, build_control_plane
from reconciler.server.config import ServerSecrets


def _agent(client: TestClient, plane: ControlPlane) -> dict[str, str]:
    token = plane.store.create_bootstrap_token()
    boot = client.post("/v1/agent/bootstrap", json={"token": token, "hostname": "h"}).json()
    return {"X-Agent-Id": boot["agent_id"], "X-Agent-Secret": boot["secret"]}


class _Call:
    """One raw ASGI request to the lane: what it sent back, message by message."""

    def __init__(self, lane: AgentLane) -> None:
        self.lane = lane

    def __call__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        chunks: list[bytes] | None = None,
        *,
        disconnect: bool = False,
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks or []) - 1}
            for i, c in enumerate(chunks or [b""])
        ]
        if disconnect:
            messages = messages[:1]
            messages[0]["more_body"] = True
            messages.append({"type": "http.disconnect"})
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        asyncio.run(self.lane(scope, receive, send))
        return sent


def _status(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], Any]:
    head = dict(sent[0]["headers"])
    return sent[0]["status"], head, json.loads(sent[1]["body"])


class TestContract:
    def test_a_heartbeat_is_acknowledged_with_the_digest_held(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        headers = _agent(client, plane)
        full = client.post(REPORT, json={"state": {"agent": "x"}}, headers=headers)
        assert full.status_code == 200 and full.headers["content-type"] == "application/json"
        ack = ReportAck.model_validate(full.json())
        assert ack.heartbeat_seconds == 10.0 and ack.state_digest
        again = client.post(REPORT, json={"state_digest": ack.state_digest}, headers=headers)
        assert ReportAck.model_validate(again.json()).state_digest == ack.state_digest
        row = plane.store.agent(headers["X-Agent-Id"])
        assert row is not None and row.reports == 2

    @pytest.mark.parametrize(
        ("method", "path", "allow"), [("GET", REPORT, "POST"), ("POST", COMMANDS, "GET")]
    )
    def test_the_wrong_method_is_405_naming_the_right_one(
        self, client: TestClient, plane: ControlPlane, method: str, path: str, allow: str
    ) -> None:
        r = client.request(method, path, headers=_agent(client, plane))
        assert r.status_code == 405 and r.headers["allow"] == allow
        assert r.json() == {"error": "Method Not Allowed"}

    @pytest.mark.parametrize(
        ("body", "says"),
        [
            (b"{not json", "invalid request: Invalid JSON"),
            (b"[]", "invalid request: Input should be an object"),
            (b'{"running": "x"}', "invalid request: running: Input should be a valid"),
        ],
    )
    def test_a_malformed_report_is_400_and_records_nothing(
        self, client: TestClient, plane: ControlPlane, body: bytes, says: str
    ) -> None:
        headers = _agent(client, plane)
        r = client.post(
            REPORT, content=body, headers=headers | {"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"].startswith(says), r.text
        row = plane.store.agent(headers["X-Agent-Id"])
        assert row is not None and row.last_seen is None

    def test_a_report_without_state_or_digest_is_422(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        r = client.post(REPORT, json={"running": []}, headers=_agent(client, plane))
        assert r.status_code == 422 and "neither a state nor a state_digest" in r.json()["error"]

    @pytest.mark.parametrize("wait", ["soon", "inf", "nan"])
    def test_a_wait_that_is_no_finite_number_is_400(
        self, client: TestClient, plane: ControlPlane, wait: str
    ) -> None:
        r = client.get(COMMANDS, params={"wait": wait}, headers=_agent(client, plane))
        assert r.status_code == 400 and r.json()["error"].startswith("invalid request: query.wait")

    def test_a_refused_poll_leaves_no_waiter_behind(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        stranger = {"X-Agent-Id": "agt_0000000000000000", "X-Agent-Secret": "nope"}
        r = client.get(COMMANDS, params={"wait": 30}, headers=stranger)
        assert r.status_code == 401 and r.json() == {"error": "unknown agent or wrong secret"}
        assert plane.notifier.waiting_agents() == set()

    def test_an_empty_poll_answers_the_batch_shape(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        r = client.get(COMMANDS, params={"wait": "0"}, headers=_agent(client, plane))
        assert r.status_code == 200
        assert CommandBatch.model_validate(r.json()) == CommandBatch(heartbeat_seconds=10.0)


class TestLimits:
    @pytest.fixture
    def lane(self, remote: Remote, tmp_path: Any) -> Iterator[tuple[AgentLane, ControlPlane]]:
        plane = build_control_plane(make_config(remote, tmp_path / "data"), ServerSecrets())
        assert plane.app.lane is not None
        small = AgentLane(plane.app.lane.endpoints, max_headers=20, max_body=1000)
        yield small, plane
        plane.store.close()

    def test_too_many_headers_are_431_and_close(self, lane: tuple[AgentLane, ControlPlane]) -> None:
        headers = {f"x-h{i}": "v" for i in range(21)}
        status, head, body = _status(_Call(lane[0])("POST", REPORT, headers, [b"{}"]))
        assert status == 431 and head[b"connection"] == b"close"
        assert body == {"error": "more than 20 request headers"}

    def test_a_declared_body_over_the_cap_is_413_before_reading(
        self, lane: tuple[AgentLane, ControlPlane]
    ) -> None:
        status, head, body = _status(
            _Call(lane[0])("POST", REPORT, {"content-length": "1001"}, [b"x" * 1001])
        )
        assert status == 413 and head[b"connection"] == b"close"
        assert body == {"error": "request body over 1000 bytes"}

    def test_a_chunked_body_is_cut_off_at_the_cap(
        self, lane: tuple[AgentLane, ControlPlane]
    ) -> None:
        status, _, body = _status(_Call(lane[0])("POST", REPORT, {}, [b"x" * 600, b"x" * 600]))
        assert status == 413 and body == {"error": "request body over 1000 bytes"}

    def test_a_client_gone_mid_body_gets_no_answer_and_changes_nothing(
        self, lane: tuple[AgentLane, ControlPlane]
    ) -> None:
        small, plane = lane
        token = plane.store.create_bootstrap_token()
        created = plane.store.bootstrap_agent(token, "h")
        assert created is not None
        agent, secret = created
        headers = {"x-agent-id": agent, "x-agent-secret": secret}
        sent = _Call(small)("POST", REPORT, headers, [b'{"state_digest": '], disconnect=True)
        assert sent == []
        row = plane.store.agent(agent)
        assert row is not None and row.last_seen is None


def test_the_framework_never_sees_the_hot_paths(client: TestClient, plane: ControlPlane) -> None:
    """The point of the lane: FastAPI's middleware stack is not on the heartbeat's path,
    and is on every other one (the agents' rarer calls included)."""
    seen: list[str] = []

    async def spy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await inner(scope, receive, send)

    plane.app.build_middleware_stack()
    inner = plane.app.middleware_stack
    assert inner is not None
    plane.app.middleware_stack = spy  # type: ignore[assignment]
    headers = _agent(client, plane)
    assert seen == ["/v1/agent/bootstrap"]
    assert client.post(REPORT, json={"state": {"agent": "x"}}, headers=headers).status_code == 200
    assert client.get(COMMANDS, headers=headers).status_code == 200
    assert client.post("/v1/agent/commands/cmd_1/result", json={"ok": True}, headers=headers)
    assert seen == ["/v1/agent/bootstrap", "/v1/agent/commands/cmd_1/result"]
