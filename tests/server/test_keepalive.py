"""Issue 17: the server keeps an idle connection longer than an agent's heartbeat interval,
and the agent keeps it for less than that, against a real ``reconcile serve`` process.

Before, uvicorn closed an idle connection after 5 s and the head deadline (10 s, counted
from the previous response) closed it with a 408: at ``--heartbeat 5`` 1% of the
heartbeats went out on a connection the server was closing.
"""

from __future__ import annotations

import pathlib
import socket
import time
from collections.abc import Iterator

import pytest

from agent.client import KEEPALIVE_EXPIRY, AgentClient, Credentials
from reconciler.model.agentapi import AgentReport
from reconciler.model.state import AgentState
from reconciler.server.config import ServerConfig
from tests.server.conftest import Remote
from tests.server.serve_helpers import Serve

#: Longer than uvicorn's old keep-alive (5 s) and than the head deadline set below (2 s).
PAUSE = 6.0


@pytest.fixture
def serve(remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
    s = Serve(remote.url, tmp_path / "data", {"head_timeout": 2})
    yield s
    s.kill()


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data  # closed by the server
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_one_connection_carries_requests_across_a_pause_longer_than_5_s(serve: Serve) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=30)
    try:
        assert _get(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(PAUSE)  # an agent between two heartbeats
        assert _get(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()


def test_the_agent_reuses_its_connection_between_heartbeats(serve: Serve) -> None:
    headers = serve.register_agent()
    creds = Credentials(
        server=serve.url, agent_id=headers["X-Agent-Id"], secret=headers["X-Agent-Secret"]
    )
    client = AgentClient(serve.url, creds)
    try:
        report = AgentReport(state=AgentState(agent=creds.agent_id))
        client.report(report)
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        [first] = pool.connections
        time.sleep(PAUSE)
        client.report(report)
        assert pool.connections == [first]
    finally:
        client.close()


def test_the_keep_alive_outlives_three_heartbeats_and_the_agents_pool() -> None:
    assert ServerConfig(source="x").keep_alive_seconds == 75
    assert ServerConfig(source="x", heartbeat=40).keep_alive_seconds == 120
    assert ServerConfig(source="x", keep_alive=7).keep_alive_seconds == 7
    assert ServerConfig(source="x", heartbeat=1).keep_alive_seconds > KEEPALIVE_EXPIRY
