"""A var read from the applying host's environment (``{from_env: VAR}``) is not in the
spec hash (the repository cannot know it), yet rotating it must redeploy: the record
keeps a salted digest of the value deployed, the observer compares, the plan repairs.

Real `reconcile apply` processes, the real engine and proxy; traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agent.docker_helpers import docker_client, wait_until
from tests.conftest import free_port

pytestmark = pytest.mark.docker


class Repo:
    def __init__(self, base: pathlib.Path) -> None:
        self.namespace = f"fe-{secrets.token_hex(3)}"
        self.port = free_port()
        self.root = base / "repo"
        self.state = base / "state"
        self.domain = f"hello-{self.namespace}.localhost"
        (self.root / "deployments").mkdir(parents=True)
        (self.root / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\nproxy: {{http_port: {self.port}, tls: off}}\n"
        )
        (self.root / "deployments" / "hello.yaml").write_text(
            f"name: hello\napp: hello\ndomain: {self.domain}\n"
            "vars:\n  greeting: {from_env: FE_GREETING}\n"
        )

    def apply(self, greeting: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", "apply", str(self.root), "--yes", "-f", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, "RECONCILE_STATE_DIR": str(self.state), "FE_GREETING": greeting},
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(json.loads(proc.stdout))

    def serves(self, text: str) -> bool:
        r = httpx.get(f"http://127.0.0.1:{self.port}/", headers={"Host": self.domain}, timeout=5)
        return r.status_code == 200 and text in r.text


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> Iterator[Repo]:
    client = docker_client()
    r = Repo(tmp_path)
    try:
        yield r
    finally:
        for c in client.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={r.namespace}"}
        ):
            c.remove(force=True, v=True)
        for c in client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
            c.remove(force=True)
        client.close()


def test_rotating_a_from_env_value_repairs_the_deployment(repo: Repo) -> None:
    first = repo.apply("first-greeting")
    assert [r["action"] for r in first["results"]] == ["install"]
    wait_until(lambda: repo.serves("first-greeting"), 30, "the first greeting")
    state = (repo.state / "apps" / first["results"][0]["id"] / "state.json").read_text()
    assert "first-greeting" not in state  # only a salted digest is kept

    same = repo.apply("first-greeting")
    assert same["results"] == [] and same["plan"]["summary"]["noop"] == 1

    rotated = repo.apply("second-greeting")
    (result,) = rotated["results"]
    assert result["action"] == "repair" and result["ok"], result
    (action,) = rotated["plan"]["actions"]
    assert "var GREETING" in action["reason"] and "second-greeting" not in json.dumps(rotated)
    wait_until(lambda: repo.serves("second-greeting"), 30, "the rotated greeting")
