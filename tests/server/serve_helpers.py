"""A real ``reconcile serve`` process for the attack tests: free 127.0.0.1 port, its own
data dir, optional ``server.yaml`` settings; plus what the attacks measure on it (RSS,
open file handles) and the requests a real agent and a real webhook send."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import yaml

from reconciler.server.store import Store
from tests.conftest import REPO_ROOT, free_port
from tests.server.conftest import ADMIN

WEBHOOK_SECRET = "attack-test-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def serve_env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        PYTHONPATH=str(REPO_ROOT),
        RECONCILE_ADMIN_TOKEN=ADMIN,
        RECONCILE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    return out


class Serve:
    """``python -m reconciler serve`` until :meth:`stop`; ready once ``/readyz`` is 200
    (or, with ``ready=False``, once ``/healthz`` answers)."""

    def __init__(
        self,
        source: str,
        data_dir: pathlib.Path,
        settings: dict[str, object] | None = None,
        *,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = data_dir.parent / f"serve-{self.port}.log"
        args = [sys.executable, "-m", "reconciler", "serve", "--source", source]
        args += ["--port", str(self.port), "--data-dir", str(data_dir), "--poll-interval", "0"]
        if settings:
            config = data_dir.parent / f"server-{self.port}.yaml"
            config.write_text(yaml.safe_dump(settings))
            args += ["--config", str(config)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                args, env={**serve_env(), **(env or {})}, stdout=log, stderr=log
            )
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError("server not up: " + self.log.read_text())

    def rss_kib(self) -> int:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def register_agent(self) -> dict[str, str]:
        """A bootstrapped, online agent's headers (its token written into the store, WAL)."""
        store = Store.in_dir(self.data_dir)
        try:
            token = store.create_bootstrap_token()
        finally:
            store.close()
        boot = httpx.post(
            self.url + "/v1/agent/bootstrap", json={"token": token, "hostname": "h1"}, timeout=10
        )
        assert boot.status_code == 201, boot.text
        agent = boot.json()["agent_id"]
        headers = {"X-Agent-Id": agent, "X-Agent-Secret": boot.json()["secret"]}
        # Online from its first report on: commands are issued only to online agents.
        report = httpx.post(
            self.url + "/v1/agent/report", json={"state": {"agent": agent}}, headers=headers
        )
        assert report.status_code == 200, report.text
        return headers


def signed_push(url: str, delivery: str, body: bytes | None = None) -> httpx.Response:
    body = body or json.dumps({"ref": "refs/heads/main", "after": "b" * 40}).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        url + "/hooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        },
        timeout=30,
    )


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
