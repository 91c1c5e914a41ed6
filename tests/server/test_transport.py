"""Issue 13, section 1: the attacks on the HTTP transport, run against a real
``reconcile serve`` process on a real socket.

Each attack must get a clear refusal, cost the server a bounded amount of memory and
file handles, and leave every other client (health checks, agents, signed webhooks)
served.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import resource
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import Remote
from tests.server.serve_helpers import ADMIN_HEADERS, Serve, read_until_closed, signed_push


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, "fd limit too low for the test"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


@pytest.fixture
def serve(remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
    s = Serve(remote.url, tmp_path / "data")
    yield s
    s.kill()


class TestHeadSize:
    def _huge_header(self, port: int, mib: int, answers: list[bytes]) -> None:
        sock = _connect(port)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1024 * 1024)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(mib):
                    sock.sendall(chunk)
            answers.append(read_until_closed(sock))
        finally:
            sock.close()

    def test_two_200_mib_headers_are_refused_and_cost_no_memory(self, serve: Serve) -> None:
        before = serve.rss_kib()
        answers: list[bytes] = []
        threads = [
            threading.Thread(target=self._huge_header, args=(serve.port, 200, answers))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        # Other clients are served meanwhile.
        assert httpx.get(serve.url + "/healthz", timeout=10).status_code == 200
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        after = serve.rss_kib()
        print(f"\nRSS before {before} KiB, after two 200 MiB headers {after} KiB")
        assert len(answers) == 2
        for answer in answers:
            # Refused as soon as the head passed 64 KiB; the rest was never read.
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert b"over 65536 bytes" in answer
        assert after - before < 16 * 1024, (before, after)
        assert httpx.get(serve.url + "/healthz", timeout=10).json() == {"status": "ok"}

    def test_too_many_headers_are_refused(self, serve: Serve) -> None:
        headers = {f"X-H{i}": "v" for i in range(150)}
        r = httpx.get(serve.url + "/healthz", headers=headers, timeout=10)
        assert r.status_code == 431
        assert r.json() == {"error": "more than 100 request headers"}
        assert httpx.get(serve.url + "/healthz", timeout=10).status_code == 200


class TestDeadlines:
    @pytest.fixture
    def serve(self, remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
        s = Serve(remote.url, tmp_path / "data", {"head_timeout": 1, "body_timeout": 1})
        yield s
        s.kill()

    def test_a_half_sent_head_is_answered_408_and_closed(self, serve: Serve) -> None:
        sock = _connect(serve.port)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answer = read_until_closed(sock)  # returns only because the server closes
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request head not received in 1 s" in answer

    def test_a_half_sent_body_is_answered_408_and_closed(self, serve: Serve) -> None:
        sock = _connect(serve.port)
        try:
            sock.sendall(
                b"POST /v1/agent/bootstrap HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"tok'
            )
            answer = read_until_closed(sock)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received in 1 s" in answer
        assert httpx.get(serve.url + "/healthz", timeout=10).status_code == 200

    def test_a_prompt_client_is_unaffected(self, serve: Serve) -> None:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            for _ in range(3):  # one kept-alive connection, three requests
                assert client.get("/healthz").status_code == 200


class TestSlowloris:
    CONNECTIONS = 3000

    @pytest.fixture
    def serve(self, remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
        # The deadline is long on purpose: it is the connection cap and its reserve that
        # must keep the server up while the slow connections are all still open.
        settings = {"head_timeout": 300, "max_connections": 1000, "connection_reserve": 100}
        s = Serve(remote.url, tmp_path / "data", settings)
        yield s
        s.kill()

    def test_thousands_of_slow_connections_leave_agents_and_webhooks_served(
        self, serve: Serve
    ) -> None:
        _raise_fd_limit(self.CONNECTIONS + 512)
        agent = serve.register_agent()
        fds_idle = serve.open_fds()
        # An agent's long poll in flight during the flood: never closed to make room.
        in_flight: list[httpx.Response] = []
        long_poll = threading.Thread(
            target=lambda: in_flight.append(
                httpx.get(
                    serve.url + "/v1/agent/commands",
                    params={"wait": 5},
                    headers=agent,
                    timeout=60,
                )
            )
        )
        long_poll.start()
        slow: list[socket.socket] = []
        try:
            for _ in range(self.CONNECTIONS):
                sock = socket.socket()
                sock.settimeout(30)
                sock.connect(("127.0.0.1", serve.port))
                # Sent or not (the server may already have closed it): it stays open here.
                with contextlib.suppress(OSError):
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
                slow.append(sock)

            health = httpx.get(serve.url + "/healthz", timeout=30)
            assert health.status_code == 200
            hook = signed_push(serve.url, "slowloris-delivery")
            assert hook.status_code == 202, hook.text
            assert hook.json()["result"] == "accepted"
            poll = httpx.get(
                serve.url + "/v1/agent/commands", params={"wait": 0}, headers=agent, timeout=30
            )
            assert poll.status_code == 200, poll.text
            assert json.loads(poll.text)["commands"] == []
            long_poll.join(60)
            assert [r.status_code for r in in_flight] == [200]

            # The server held at most its cap, whatever the client kept open.
            fds = serve.open_fds()
            print(f"\nserver fds: idle {fds_idle}, under {self.CONNECTIONS} slow ones {fds}")
            assert fds <= fds_idle + 1000 + 16, fds
            # The slow connections were the ones closed to make room.
            closed = 0
            deadline = time.monotonic() + 60  # the test's own bound, not a pass condition
            for sock in slow[:-1000]:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    closed += sock.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass
            assert closed >= self.CONNECTIONS - 1000 - 16
        finally:
            for sock in slow:
                sock.close()
        events = httpx.get(serve.url + "/v1/events", headers=ADMIN_HEADERS, timeout=10).json()
        assert any(e["fields"].get("delivery") == "slowloris-delivery" for e in events["events"])


def test_a_large_body_is_not_mistaken_for_a_large_head(serve: Serve) -> None:
    """The head limit counts the head only, though one read carries the body's start."""
    r = httpx.post(
        serve.url + "/v1/agent/bootstrap",
        json={"token": "t" * 1_000_000, "hostname": "h"},
        timeout=30,
    )
    assert r.status_code == 401, r.text
    assert r.json() == {"error": "bootstrap token unknown, already used or expired"}
