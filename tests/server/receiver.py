"""A real HTTP receiver on 127.0.0.1 for outbound webhooks and commit statuses.

It records every request (method, path, headers, raw body) and answers from a script:
a status code per request in turn (then 200), or ``"hold"`` (keep the request open
until :meth:`release`, a receiver that is slow or hung).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, script: list[int | str] | None = None, port: int | None = None) -> None:
        self.script = list(script or [])
        self.seen: list[Seen] = []
        self.answered: list[int | str] = []
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner._lock:
                    owner.seen.append(
                        Seen(
                            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    answer = owner.script.pop(0) if owner.script else 200
                    owner.answered.append(answer)
                if answer == "hold":
                    owner._released.wait(60)
                    answer = 200
                self.send_response(int(answer))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, check: Any, timeout: float = 30.0) -> list[Seen]:
        """The requests so far, once ``check(requests)`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen = list(self.seen)
            if check(seen):
                return seen
            time.sleep(0.02)
        raise AssertionError(f"receiver: condition not met; saw {[s.path for s in self.seen]}")

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.json() for s in self.seen]
