"""A push that attacks the loader fails its own reconcile; ``reconcile serve`` goes on.

A real ``reconcile serve`` process (uvicorn on a free 127.0.0.1 port, a local bare git
repository as its source, signed GitHub webhooks), run under a 2 GiB address-space limit:
the repository pushed expands to over 3 GiB (aliases over an 800 KB scalar, the report's
MemoryError case), beside an ``include:`` fan-out of 4^8 paths.  The reconcile must end in
a ``reconcile.invalid`` event that names the file and the limit, the server must keep
answering, and the next good push must be planned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN, REPO_ROOT, Remote

from tests.conftest import free_port
from tests.loading import attacks

SECRET = "budget-test-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
AGENT = "agt_00000000000000b1"  # never registered: its actions are planned, then blocked
ADDRESS_SPACE = 2 * 1024**3


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.fixture
def server(remote: Remote, tmp_path: pathlib.Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "RECONCILE_ADMIN_TOKEN": ADMIN,
        "RECONCILE_WEBHOOK_SECRET": SECRET,
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "reconciler", "serve", "--source", remote.url),
                *("--port", str(port), "--data-dir", str(tmp_path / "data")),
                *("--poll-interval", "0"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_limited,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def push_hook(url: str, delivery: str, after: str) -> httpx.Response:
    body = json.dumps({"ref": "refs/heads/main", "after": after}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        url + "/hooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        },
        timeout=10,
    )


def wait_event(url: str, kind: str, revision: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = httpx.get(
            url + "/v1/events", params={"limit": 1000}, headers=ADMIN_HEADERS, timeout=10
        ).json()["events"]
        for event in events:
            if event["kind"] == kind and event["fields"].get("revision") == revision:
                fields: dict[str, Any] = event["fields"]
                return fields
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event for {revision}: {events}")


def test_a_push_over_budget_fails_its_reconcile_and_the_server_goes_on(
    server: tuple[str, subprocess.Popen[bytes]], remote: Remote
) -> None:
    url, proc = server
    remote.write({"reconcile.yaml": f"namespace: srv\nagents:\n  host1: {AGENT}\n"})
    # sorted first, so the worker walks its 4^8 include paths before the budget runs out
    attacks.fan_out(remote.work, 4, 8, name="a-fanout", agent="host1")
    expanded = attacks.big_aliases(remote.work, 800, 16, 3, name="aliases", agent="host1")
    assert expanded > 3 * 1024**3 > ADDRESS_SPACE
    bad = remote.commit(message="over budget")
    assert push_hook(url, "budget-1", bad).status_code == 202

    invalid = wait_event(url, "reconcile.invalid", bad)
    (problem,) = invalid["problems"]
    assert problem.startswith("deployments/aliases/compose.yaml:3:")
    assert "more than 64 MiB (limit expanded_bytes" in problem
    assert proc.poll() is None
    assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok"}

    good = remote.commit(
        {
            "deployments/aliases/compose.yaml": None,
            "deployments/aliases/deployment.yaml": None,
        },
        "drop the alias bomb",
    )
    assert push_hook(url, "budget-2", good).status_code == 202
    finished = wait_event(url, "reconcile.finished", good)
    assert sum(finished["summary"].values()) == 1  # the fan-out deployment, planned
    plan = httpx.get(url + "/v1/plan", headers=ADMIN_HEADERS, timeout=10).json()
    assert [a["deployment"] for a in plan["actions"]] == ["a-fanout"]
    assert proc.poll() is None
