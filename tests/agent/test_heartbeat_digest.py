"""Issue 17: the agent sends its state only when the server does not hold its digest."""

from __future__ import annotations

import pathlib
import threading

from reconciler.model.agentapi import state_digest
from reconciler.model.state import AgentState, DeployedApp
from tests.agent.agent_fakes import AGENT_ID, FakeControlPlane
from tests.agent.test_daemon import Harness


def _states() -> list[AgentState]:
    return [AgentState(agent=AGENT_ID)]


def _app(spec: str) -> AgentState:
    app = DeployedApp(id="dpl_0000000000000001", name="a", namespace="n", spec_hash=spec)
    return AgentState(agent=AGENT_ID, deployments={app.id: app})


def test_an_unchanged_state_travels_as_its_digest_only(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(acks_digest=True)
    h = Harness(tmp_path, server)
    states = _states()
    agent = h.agent(observe=lambda: states[-1])
    for _ in range(3):
        assert agent.send_report()
    digest = state_digest(states[-1])
    assert [r.get("state") is not None for r in server.reports] == [True, False, False]
    assert {r["state_digest"] for r in server.reports} == {digest}
    # The state changed: it travels once, then its digest again.
    states.append(_app("s1"))
    assert agent.send_report() and agent.send_report()
    assert [r.get("state") is not None for r in server.reports[3:]] == [True, False]
    assert server.reports[3]["state_digest"] == state_digest(states[-1])


def test_a_server_holding_another_digest_gets_the_state_at_once(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(acks_digest=True)
    h = Harness(tmp_path, server)
    agent = h.agent(observe=lambda: AgentState(agent=AGENT_ID))
    assert agent.send_report()
    server.held_digest = "restored-from-a-backup"
    assert agent.send_report()
    # One heartbeat, two posts: the digest, refused; then the state, in the same call.
    assert [r.get("state") is not None for r in server.reports] == [True, False, True]
    assert server.held_digest == state_digest(AgentState(agent=AGENT_ID))


def test_a_server_from_before_always_gets_the_state(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane()  # answers no digest
    h = Harness(tmp_path, server)
    agent = h.agent(observe=lambda: AgentState(agent=AGENT_ID))
    for _ in range(3):
        assert agent.send_report()
    assert all(r.get("state") is not None for r in server.reports)


def test_reports_are_sent_one_at_a_time(tmp_path: pathlib.Path) -> None:
    """The server's exactly-once rule needs it: a report is observed only after the
    previous one was answered (Store.create_commands)."""
    server = FakeControlPlane(acks_digest=True)
    h = Harness(tmp_path, server)
    inside = threading.Semaphore(1)
    overlaps: list[int] = []

    def observe() -> AgentState:
        if not inside.acquire(blocking=False):
            overlaps.append(1)
        return AgentState(agent=AGENT_ID)

    original = server.handle

    def handle(request):  # type: ignore[no-untyped-def]
        answer = original(request)
        if request.url.path == "/v1/agent/report":
            inside.release()
        return answer

    server.handle = handle  # type: ignore[method-assign]
    agent = h.agent(observe=observe)
    threads = [threading.Thread(target=agent.send_report) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == [] and len(server.reports) == 8
