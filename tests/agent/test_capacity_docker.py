"""Network capacity on a real daemon: a second dockerd whose ``default-address-pools``
hold exactly two networks (tests/agent/second_dockerd.py).  The agent's observer reads
the figure from the daemon, ``reconcile apply`` installs two deployments and blocks the
third in the plan, with the hint, instead of failing it at ``up``; and the error a third
``docker compose up`` really gets is classified as an exhausted pool.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agent.capacity import Pool, pools_from_info
from agent.failures import FailureKind, classify
from agent.observe import observe_local
from tests.agent.second_dockerd import SecondDaemon, second_dockerd
from tests.conftest import free_port

pytestmark = pytest.mark.docker

RECONCILE = str(pathlib.Path(os.sys.executable).with_name("reconcile"))  # type: ignore[attr-defined]
POOL = "10.213.0.0/24:25"  # two /25s
COMPOSE = """\
services:
  app:
    image: busybox:1.36
    init: true
    restart: unless-stopped
    command: ["sleep", "3600"]
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[SecondDaemon]:
    with second_dockerd([POOL], images=("busybox:1.36", "caddy:2")) as d:
        # The proxy network exists already, outside the pool: the two subnets are the apps'.
        d.docker("network", "create", "--subnet", "10.214.0.0/24", "impreza-proxy")
        yield d


def _repo(base: pathlib.Path, names: list[str]) -> pathlib.Path:
    repo = base / "repo"
    (repo / "deployments").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text(
        f"namespace: cap-{secrets.token_hex(3)}\n"
        f"proxy: {{tls: off, http_port: {free_port()}, https_port: {free_port()}}}\n"
    )
    for name in names:
        (repo / "deployments" / name).mkdir()
        (repo / "deployments" / name / "compose.yaml").write_text(COMPOSE)
        (repo / "deployments" / name / "deployment.yaml").write_text(
            f"name: {name}\nagent: local\ncompose: ./compose.yaml\n"
        )
    return repo


def _reconcile(
    daemon: SecondDaemon, state: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> Any:
    proc = subprocess.run(
        [RECONCILE, *args],
        env={**daemon.env(), "RECONCILE_STATE_DIR": str(state), "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc


def test_the_observer_reads_the_pools_from_the_daemon(
    daemon: SecondDaemon, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = json.loads(daemon.docker("info", "--format", "{{json .}}").stdout)
    assert pools_from_info(info) == (Pool(pools_from_info(info)[0].base, 25),)
    assert str(pools_from_info(info)[0].base) == "10.213.0.0/24"
    monkeypatch.setenv("DOCKER_HOST", daemon.host)
    state = observe_local(state_dir=tmp_path, agent="local")
    assert state.online
    assert state.free_networks == 2


def test_a_failed_up_is_one_line_in_the_summary_and_full_in_json_and_status(
    daemon: SecondDaemon, tmp_path: pathlib.Path
) -> None:
    repo = _repo(tmp_path, ["cap-gone"])
    compose = repo / "deployments" / "cap-gone" / "compose.yaml"
    compose.write_text(COMPOSE.replace("busybox:1.36", "capx-no-such-image:1.0"))
    state = tmp_path / "state"
    text = _reconcile(daemon, state, "apply", str(repo), "--yes", env={"COLUMNS": "250"})
    assert text.returncode == 1
    rows = [line for line in text.stdout.splitlines() if "cap-gone" in line and "install" in line]
    assert rows, text.stdout
    row = rows[-1]  # the result table comes after the plan
    assert "failed up: image not found: the image is not available locally" in row
    assert "hint" not in row and "registry-1.docker.io" not in row  # one line, the reason

    status = json.loads(_reconcile(daemon, state, "status", "-f", "json").stdout)
    (app,) = status["agents"]["local"]["deployments"].values()
    assert app["status"] == "failed"
    first, *tail = app["last_error"].splitlines()
    assert first.startswith("up: image not found") and "(hint: check the image name" in first
    assert tail and tail[-1].startswith("Error response from daemon")  # the raw output kept
    shown = _reconcile(daemon, state, "status", env={"COLUMNS": "250"}).stdout
    assert "cap-gone failed: up: image not found" in shown
    assert tail[-1] in shown  # the full text, its last line included

    json_run = _reconcile(daemon, state, "apply", str(repo), "--yes", "-f", "json")
    (result,) = json.loads(json_run.stdout)["results"]
    assert result["failure"]["kind"] == "image-not-found"
    assert result["failure"]["last_lines"] and result["failure"]["hint"]
    assert result["message"].splitlines()[0].startswith("up: image not found")
    # leave the daemon's two subnets to the next test (this is the private daemon)
    daemon.docker("network", "prune", "-f")


def test_the_third_deployment_is_blocked_in_the_plan_not_failed_at_up(
    daemon: SecondDaemon, tmp_path: pathlib.Path
) -> None:
    repo = _repo(tmp_path, ["cap-a", "cap-b", "cap-c"])
    state = tmp_path / "state"
    proc = _reconcile(daemon, state, "apply", str(repo), "--yes", "-f", "json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)  # something was blocked
    assert proc.stdout.startswith("{"), proc.stderr
    result = json.loads(proc.stdout)
    actions = {a["deployment"]: a for a in result["plan"]["actions"]}
    assert actions["cap-c"]["action"] == "blocked"
    assert "default-address-pools" in actions["cap-c"]["reason"]
    assert "can create 2 more network(s)" in actions["cap-c"]["reason"]
    # the two that fit were installed; nothing failed at `up`
    outcome = {r["deployment"]: r for r in result["results"]}
    assert set(outcome) == {"cap-a", "cap-b"}
    assert all(r["ok"] and r["failure"] is None for r in outcome.values()), json.dumps(
        result["results"]
    )
    networks = daemon.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert len([n for n in networks if n.endswith("_default")]) == 2

    status = _reconcile(daemon, state, "status", "-f", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["agents"]["local"]["free_networks"] == 0
    text = _reconcile(daemon, state, "status")
    assert "can create 0 more (default-address-pools)" in " ".join(text.stdout.split())

    # The plan again: still blocked, with the hint, and the two installed are noops.
    again = _reconcile(daemon, state, "plan", str(repo), "--against", "local", "-f", "json")
    planned = {a["deployment"]: a["action"] for a in json.loads(again.stdout)["actions"]}
    assert planned == {"cap-a": "noop", "cap-b": "noop", "cap-c": "blocked"}

    # What the third `up` would have met, for real, is classified as an exhausted pool.
    compose = tmp_path / "third.yaml"
    compose.write_text(COMPOSE)
    project = f"capx-{secrets.token_hex(4)}"
    up = subprocess.run(
        ["docker", "compose", "-p", project, "-f", str(compose), "up", "-d", "--pull", "missing"],
        env=daemon.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode != 0
    failure = classify("up", up.stderr + up.stdout)
    assert failure.kind is FailureKind.POOL_EXHAUSTED, up.stderr
    assert "default-address-pools" in (failure.hint or "")
    assert any("non-overlapping IPv4 address pool" in line for line in failure.last_lines)
