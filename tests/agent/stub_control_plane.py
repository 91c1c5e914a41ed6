"""The fake control plane (tests/agent/agent_fakes.py) behind a real HTTP server on
127.0.0.1, for tests that run ``python -m agent.daemon`` as a process.  Long polls are
held like the real server holds them (until a command is added or the wait ends)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
