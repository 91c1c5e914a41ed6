"""The fake control plane (tests/agent/agent_fakes.py) behind a real HTTP server on
127.0.0.1, for tests that run ``python -m agent.daemon`` as a process.  Long polls are
held like the real server holds them (until a command is added or the wait ends)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.agent.agent_fakes import FakeControlPlane
from tests.conftest import REPO_ROOT


class _Stub(ThreadingHTTPServer):
    daemon_threads = True
    plane: FakeControlPlane
    closing: threading.Event
    held: list[float]
    stall: set[str]  # command ids whose bundle download never answers


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = httpx.Request(
            self.command,
            f"http://stub{self.path}",
            headers=dict(self.headers.items()),
            content=body,
        )
        plane = self.server.plane
        parts = request.url.path.split("/")
        if parts[-1] == "bundle" and parts[-2] in self.server.stall:
            plane.requests.append(f"{request.method} {request.url.path}")
            self.server.closing.wait(120)  # until the test ends; the agent is killed meanwhile
            return
        if request.url.path == "/v1/agent/commands" and not (plane.commands or plane.raw):
            # Hold the long poll like the real server: until the wait ends.
            wait = float(request.url.params.get("wait", "0"))
            self.server.held.append(wait)
            end = time.monotonic() + min(wait, 30)
            while not (plane.commands or plane.raw) and time.monotonic() < end:
                if self.server.closing.wait(0.05):
                    break
        response = plane.handle(request)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the agent left
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers.get("content-type", "x/json"))
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

    do_GET = _serve
    do_POST = _serve


@contextlib.contextmanager
def stub_server(plane: FakeControlPlane) -> Iterator[_Stub]:
    server = _Stub(("127.0.0.1", 0), _Handler)
    server.plane = plane
    server.held = []
    server.stall = set()
    server.closing = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.daemon", *args]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def asgi_app(plane: FakeControlPlane) -> Callable[..., Awaitable[None]]:
    """The fake control plane as an ASGI app, for a real uvicorn (with TLS, say).  Long
    polls are answered at once: run the agent with ``--once``."""

    async def app(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        request = httpx.Request(
            scope["method"],
            f"https://stub{scope['path']}" + (f"?{query}" if query else ""),
            headers=[(k.decode(), v.decode()) for k, v in scope["headers"]],
            content=body,
        )
        response = plane.handle(request)
        content_type = response.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": response.content})

    return app


@contextlib.contextmanager
def tls_server(
    plane: FakeControlPlane, certfile: pathlib.Path, keyfile: pathlib.Path
) -> Iterator[int]:
    """A real uvicorn serving ``plane`` over HTTPS on 127.0.0.1; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        asgi_app(plane),
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
