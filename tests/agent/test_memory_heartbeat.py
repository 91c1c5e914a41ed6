"""The host's total memory: read from the real Docker Engine (``docker info``), sent in
the heartbeat beside the state (where a server from before ignores it), and never
fatal to observing the host when the daemon does not give it."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from agent.client import AgentClient, Credentials
from agent.daemon import Agent
from agent.journal import Journal
from agent.observe import observe_local, total_memory_mb
from agent.runner import CommandRunner
from reconciler.model.state import AgentState
from tests.agent.agent_fakes import AGENT_ID, SERVER, FakeControlPlane
from tests.agent.docker_helpers import docker_client


def test_heartbeat_sends_the_total_beside_the_state(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane()
    server.register(AGENT_ID, "s3cret")
    client = AgentClient(
        SERVER,
        Credentials(server=SERVER, agent_id=AGENT_ID, secret="s3cret"),
        transport=server.transport(),
    )
    agent = Agent(
        client=client,
        journal=Journal(tmp_path),
        runner=CommandRunner(tmp_path, client.download_bundle),
        observe=lambda: AgentState(agent=AGENT_ID, total_memory_mb=2048, free_networks=7),
        agent_id=AGENT_ID,
    )
    assert agent.send_report()
    (sent,) = server.reports
    assert sent["total_memory_mb"] == 2048
    assert sent["free_networks"] == 7
    # the state is exactly what a server from before accepts (its AgentState forbids
    # unknown fields)
    assert isinstance(sent["state"], dict)
    assert "total_memory_mb" not in sent["state"]
    figures = {"total_memory_mb", "free_networks"}
    assert set(sent["state"]) == set(AgentState.model_fields) - figures


class _Api:
    def __init__(self, info: Any) -> None:
        self._info = info

    def info(self) -> Any:
        if isinstance(self._info, Exception):
            raise self._info
        return self._info


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"MemTotal": 2 * 1024**3 + 5}, 2048),
        ({"MemTotal": 0}, None),
        ({}, None),
        ({"MemTotal": "garbage"}, None),
        (OSError("daemon gone"), None),
    ],
)
def test_total_memory_is_none_when_unknown(info: Any, expected: int | None) -> None:
    assert total_memory_mb(_Api(info)) == expected


@pytest.mark.docker
def test_observe_local_reports_the_docker_hosts_total(tmp_path: pathlib.Path) -> None:
    client = docker_client()
    expected = int(client.info()["MemTotal"]) // (1024 * 1024)
    state = observe_local(state_dir=tmp_path, agent="local")
    assert state.online
    assert state.total_memory_mb == expected > 0
