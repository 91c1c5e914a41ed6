"""The body cap on a real socket: a uvicorn process serving only the webhook router.

ASGI-level tests prove the router stops pulling chunks; this proves the 413 reaches a
real client while it is still sending, and that the server does not swallow the rest.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.server.hooks_fakes import body_of, github_push, sign256

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOOKS_MAX_BODY": str(MAX_BODY)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.server.hooks_fakes:uvicorn_app",
            "--fd",
            str(listener.fileno()),
            "--log-level",
            "warning",
        ],
        pass_fds=[listener.fileno()],
        env=env,
        cwd=REPO_ROOT,
    )
    listener.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/count", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def counts(base: str) -> dict[str, int]:
    result: dict[str, int] = httpx.get(f"{base}/count", timeout=5).json()
    return result


def request_head(port: int, extra: str) -> bytes:
    body = b""  # the signature cannot match: the cap must bite before it is checked
    return (
        f"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
        f"X-GitHub-Delivery: sock-1\r\nX-Hub-Signature-256: {sign256(body)}\r\n{extra}\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_signed_push_is_accepted(server: str) -> None:
    before = counts(server)["triggers"]
    body = body_of(github_push())
    r = httpx.post(
        f"{server}/hooks/github",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": "uv-accepted",
            "x-hub-signature-256": sign256(body),
        },
        timeout=10,
    )
    assert r.status_code == 202
    assert counts(server)["triggers"] == before + 1


def test_a_chunked_stream_is_cut_off_at_the_cap(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    before = counts(server)["triggers"]
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    offered = 256 * 1024 * 1024
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request_head(port, "Transfer-Encoding: chunked\r\n"))
        try:
            while sent < offered:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(ConnectionResetError):
            response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b"connection: close" in response.lower()
    # The server answered once past the cap; we never had to push the whole stream.
    assert sent < 32 * MAX_BODY
    assert counts(server)["triggers"] == before


def test_content_length_over_the_cap_is_refused_before_any_body(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request_head(port, f"Content-Length: {MAX_BODY + 1}\r\n"))
        response = read_response(sock)  # no body sent: the answer must not wait for one
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
