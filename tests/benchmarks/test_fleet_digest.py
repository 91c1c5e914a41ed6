"""The agent side of the heartbeat's digest protocol in ``benchmarks/fleet.py``, against
scripted servers (a scripted ``AgentWire``): pure logic of the simulator, whose real-server
run is ``test_fleet_smoke.py`` (today's server acknowledges no digest, so only these
cover the other answers the contract in ``reconciler.model.agentapi`` allows)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx

from reconciler.model.agentapi import BootstrapResponse, ReportAck
from reconciler.model.state import DeployedApp
from tests.benchmarks.fleet_module import load_fleet

fleet_bench = load_fleet()
Handler = Callable[[dict[str, Any]], httpx.Response]


def _agent(handler: Handler) -> tuple[Any, list[dict[str, Any]]]:
    """A simulated agent whose every report goes to ``handler``; the bodies it sent."""
    sent: list[dict[str, Any]] = []

    class ScriptedWire:
        """The agent's HTTP seam (``AgentWire``), answered by ``handler``."""

        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

        async def post(self, path: str, body: bytes) -> Any:
            assert path == "/v1/agent/report"
            assert self.headers["X-Agent-Id"] == "agt_0123456789abcdef"
            assert self.headers["Content-Type"] == "application/json"
            data = json.loads(body)
            sent.append(data)
            answer = handler(data)
            return fleet_bench.Answer(answer.status_code, answer.content)

    args = argparse.Namespace(heartbeat=10.0, poll_wait=30.0, ack_delay=0.0, py_spy=None)
    fleet = fleet_bench.Fleet(SimpleNamespace(url="http://fleet.test"), args)
    creds = BootstrapResponse(agent_id="agt_0123456789abcdef", secret="s" * 43)
    agent = fleet_bench.SimAgent(fleet, 0, creds)
    agent.http = ScriptedWire(dict(agent.http.headers))
    return agent, sent


def _ack(digest: str | None) -> httpx.Response:
    return httpx.Response(200, json=ReportAck(state_digest=digest).model_dump(mode="json"))


def _reports(agent: Any, n: int) -> list[bool]:
    async def run() -> list[bool]:
        return [await agent.report() for _ in range(n)]

    return asyncio.run(run())


def test_a_server_that_acknowledges_the_digest_gets_the_state_once() -> None:
    agent, sent = _agent(lambda body: _ack(body["state_digest"]))
    assert _reports(agent, 3) == [True, True, True]
    assert [b["state"] is None for b in sent] == [False, True, True]
    assert {b["state_digest"] for b in sent} == {agent.digest}
    assert sent[0]["state"]["agent"] == "agt_0123456789abcdef"
    assert agent.fleet.digests_acked == 3


def test_a_server_from_before_gets_the_full_state_every_time() -> None:
    agent, sent = _agent(lambda body: _ack(None))
    assert _reports(agent, 3) == [True, True, True]
    assert all(b["state"] is not None and b["state_digest"] == agent.digest for b in sent)
    assert agent.fleet.phase.errors == {}


def test_a_refused_report_without_state_is_sent_again_with_it() -> None:
    def handler(body: dict[str, Any]) -> httpx.Response:
        if body["state"] is None:
            return httpx.Response(422, json={"error": "the report carries no state"})
        return _ack(None)

    agent, sent = _agent(handler)
    agent.server_digest = agent.digest  # as if acknowledged before a server downgrade
    assert _reports(agent, 1) == [True]
    assert [b["state"] is None for b in sent] == [True, False]
    assert agent.fleet.phase.errors == {"report: 422 without state (resent in full)": 1}
    assert len(agent.fleet.phase.heartbeats) == 1


def test_a_server_holding_another_state_gets_ours_at_once() -> None:
    held = ["0" * 64]  # it acknowledged ours once, then lost it (restored from a backup)

    def handler(body: dict[str, Any]) -> httpx.Response:
        if body["state"] is not None:
            held[0] = body["state_digest"]
        return _ack(held[0])

    agent, sent = _agent(handler)
    agent.server_digest = agent.digest
    assert _reports(agent, 2) == [True, True]
    # the stateless report, its full resend in the same heartbeat, then the digest only
    assert [b["state"] is None for b in sent] == [True, False, True]


def test_a_changed_state_travels_in_full_at_once() -> None:
    agent, sent = _agent(lambda body: _ack(body["state_digest"]))
    _reports(agent, 2)
    agent.running.add("cmd_0001")  # what runs travels beside the state, never in it
    _reports(agent, 1)
    assert sent[-1]["state"] is None and sent[-1]["running"] == ["cmd_0001"]
    before = agent.digest
    app = DeployedApp(id="dpl_0123456789abcdef", name="a", namespace="n", spec_hash="h")
    agent.deployments[app.id] = app
    agent._rebuild()
    assert agent.digest != before
    _reports(agent, 2)
    assert [b["state"] is None for b in sent[-2:]] == [False, True]
    assert "dpl_0123456789abcdef" in sent[-2]["state"]["deployments"]
