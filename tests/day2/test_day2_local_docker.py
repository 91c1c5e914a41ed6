"""Day-2 commands on the real local host (Docker Engine, Compose v2, Caddy): logs,
restart, history, rollback and its hold, credentials, backup, and the uninstall hook.

One module-scoped host, scenarios in order (each leaves the host as the next expects).
Everything goes through the ``reconcile`` CLI as a user runs it; traffic goes only to
127.0.0.1 (the proxy's published port).
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port
from tests.day2.app import write_repo

pytestmark = pytest.mark.docker

RECONCILE = [str(pathlib.Path(os.sys.executable).with_name("reconcile"))]  # type: ignore[attr-defined]


class Host:
    def __init__(self, base: pathlib.Path) -> None:
        self.namespace = f"d2-{secrets.token_hex(3)}"
        self.repo = base / "repo"
        self.state = base / "state"
        self.port = free_port()
        self.docker = docker_client()
        self.id = deployment_id(self.namespace, "notes")
        self.domain = f"notes-{self.namespace}.localhost"
        self.proxy = f"reconciler-proxy-{self.namespace}"  # ours alone: others run theirs

    def write(self, version: str) -> None:
        write_repo(self.repo, namespace=self.namespace, port=self.port, version=version)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*RECONCILE, *args],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "RECONCILE_STATE_DIR": str(self.state),
                "RECONCILE_PROXY_CONTAINER": self.proxy,
                "NO_COLOR": "1",
                "COLUMNS": "200",
            },
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"reconcile {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def apply(self, *extra: str) -> dict[str, Any]:
        result = self.json("apply", str(self.repo), "--yes", "-f", "json", "--settle", "1", *extra)
        assert all(r["ok"] for r in result["results"]), result["results"]
        return result

    def plan(self) -> dict[str, Any]:
        return self.json("plan", str(self.repo), "--against", "local", "-f", "json")

    def page(self) -> str:
        r = httpx.get(f"http://127.0.0.1:{self.port}/", headers={"Host": self.domain}, timeout=5)
        return r.text if r.status_code == 200 else f"HTTP {r.status_code}"

    def container(self) -> Any:
        found = self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.deployment={self.id}"}
        )
        assert len(found) == 1, found
        return found[0]

    def teardown(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True, v=True)
        for c in self.docker.containers.list(all=True, filters={"name": f"^{self.proxy}$"}):
            c.remove(force=True)
        for net in self.docker.networks.list(names=[f"{self.id}_default"]):
            net.remove()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("day2"))
    try:
        yield h
    finally:
        h.teardown()


def test_two_updates_make_a_history_with_releases(host: Host) -> None:
    host.write("v1")
    host.apply()
    assert host.page().strip() == "page v1"
    host.write("v2")
    result = host.apply()
    assert [r["action"] for r in result["results"]] == ["update"]
    assert host.page().strip() == "page v2"

    entries = host.json("history", "notes", "-f", "json")["entries"]
    assert [e["status"] for e in entries] == ["running", "running"]
    newest, oldest = entries
    assert newest["spec_hash"] != oldest["spec_hash"]
    assert newest["release"] and oldest["release"] and newest["release"] != oldest["release"]
    text = host.run("history", "notes").stdout
    assert newest["spec_hash"][:12] in text and oldest["release"] in text


def test_logs_show_the_apps_output_and_refuse_bad_options(host: Host) -> None:
    out = host.run("logs", "notes", "--tail", "20").stdout
    assert "day2 app starting v2" in out
    only_app = host.run("logs", "notes", "--service", "app", "--since", "10m").stdout
    assert "day2 app starting v2" in only_app
    bad = host.run("logs", "notes", "--service", "db", check=False)
    assert bad.returncode == 1
    assert "has no service 'db' (services: app)" in bad.stderr
    bad = host.run("logs", "notes", "--since", "ten minutes", check=False)
    assert bad.returncode == 1 and "--since 'ten minutes'" in bad.stderr
    unknown = host.run("logs", "nope", check=False)
    assert unknown.returncode == 1 and "no deployment 'nope' on this host" in unknown.stderr


def test_restart_keeps_the_container_and_starts_it_again(host: Host) -> None:
    before = host.container()
    started = before.attrs["State"]["StartedAt"]
    host.run("restart", "notes")
    after = host.container()
    assert after.id == before.id  # compose restart: the same container, not a new one
    assert after.attrs["State"]["StartedAt"] != started
    assert after.status == "running"
    logs = host.run("logs", "notes", "--tail", "50").stdout
    assert logs.count("day2 app starting v2") == 2  # the same container's log, twice


def test_rollback_serves_the_previous_release_and_holds_it(host: Host) -> None:
    host.run("rollback", "notes")
    assert host.page().strip() == "page v1"
    plan = host.plan()
    [action] = plan["actions"]
    assert action["action"] == "held"
    assert "rolled back by hand" in action["reason"]
    assert plan["summary"]["held"] == 1
    text = host.run("plan", str(host.repo), "--against", "local").stdout
    assert "held" in text and "No changes" in text
    shown = host.json("show", "notes", "-f", "json")
    assert shown["status"] == "held"
    assert shown["held"]["release_spec_hash"] != shown["held"]["spec_hash"]
    # A held deployment is left alone by apply: it keeps serving the rolled-back release.
    result = host.apply()
    assert result["results"] == []
    assert host.page().strip() == "page v1"
    statuses = [e["status"] for e in host.json("history", "notes", "-f", "json")["entries"]]
    assert statuses[0] == "held"


def test_a_change_of_its_file_releases_the_hold(host: Host) -> None:
    host.write("v3")
    [action] = host.plan()["actions"]
    assert action["action"] == "update"
    host.apply()
    assert host.page().strip() == "page v3"
    assert host.json("show", "notes", "-f", "json")["held"] is None


def test_rollback_to_a_named_release_then_lifting_the_hold(host: Host) -> None:
    entries = host.json("history", "notes", "-f", "json")["entries"]
    v1 = entries[-1]["release"]
    host.run("rollback", "notes", "--to", v1)
    assert host.page().strip() == "page v1"
    bad = host.run("rollback", "notes", "--to", "19990101", check=False)
    assert bad.returncode == 1 and "has no release '19990101'" in bad.stderr
    host.run("rollback", "notes", "--release")
    [action] = host.plan()["actions"]
    assert action["action"] == "update"  # git decides again
    host.apply()
    assert host.page().strip() == "page v3"
    again = host.run("rollback", "notes", "--release", check=False)
    assert again.returncode == 1 and "notes is not held" in again.stderr


def test_credentials_reveal_the_generated_secret_and_are_audited(host: Host) -> None:
    values = host.json("credentials", "notes", "-f", "json")
    assert list(values) == ["ADMIN_TOKEN"]
    assert len(values["ADMIN_TOKEN"]) == 24
    env = host.container().attrs["Config"]["Env"]
    assert f"ADMIN_TOKEN={values['ADMIN_TOKEN']}" in env
    audit = [json.loads(x) for x in (host.state / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["event"] == "credentials.revealed"
    assert audit[-1]["deployment"] == "notes" and audit[-1]["keys"] == ["ADMIN_TOKEN"]
    # the value itself is never in the audit trail
    assert values["ADMIN_TOKEN"] not in (host.state / "audit.jsonl").read_text()


def test_backup_runs_the_hook_and_keeps_its_output(host: Host) -> None:
    proc = host.run("backup", "notes")
    assert "backup-of-v3" in proc.stdout
    [kept] = (host.state / "apps" / host.id / "backups").iterdir()
    assert kept.read_text().splitlines() == ["backup-of-v3", "index.html"]
    assert kept.stat().st_mode & 0o077 == 0


def test_uninstall_runs_the_uninstall_hook_before_down(host: Host) -> None:
    marker = host.state / "apps" / host.id / "data" / "uninstall-ran"
    assert not marker.exists()
    (host.repo / "deployments" / "notes" / "deployment.yaml").unlink()
    (host.repo / "deployments" / "notes" / "manifest.yaml").unlink()
    result = host.apply("--allow-mass-prune")
    assert [(r["action"], r["ok"]) for r in result["results"]] == [("uninstall", True)]
    # The hook ran in the app's container while it still served: it read the page.
    assert marker.read_text().splitlines() == ["goodbye", "page v3"]
    assert (
        host.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.deployment={host.id}"}
        )
        == []
    )
