"""`reconcile apply` on the real Docker Engine, Compose v2 and Caddy (issue 5 scenarios).

One module-scoped host: a copy of examples/ with the proxy on a free port, a temporary
state dir.  The scenarios run in order and each leaves the host as the next expects;
traffic goes only to 127.0.0.1 (the proxy's published port).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.docker

RECONCILE = [str(pathlib.Path(os.sys.executable).with_name("reconcile"))]  # type: ignore[attr-defined]


def _docker_client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        if os.environ.get("RECONCILE_SKIP_DOCKER") == "1":
            pytest.skip("RECONCILE_SKIP_DOCKER=1")
        pytest.fail(f"Docker Engine is not reachable ({exc}); run `bash scripts/setup.sh --docker`")
    return client


class Host:
    def __init__(self, repo: pathlib.Path, state: pathlib.Path, port: int) -> None:
        self.repo = repo
        self.state = state
        self.port = port
        self.docker = _docker_client()

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*RECONCILE, *args],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "RECONCILE_STATE_DIR": str(self.state),
                "NO_COLOR": "1",
                "COLUMNS": "200",
                **(env or {}),
            },
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"reconcile {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def apply(self, *extra: str, check: bool = True) -> dict[str, Any]:
        proc = self.run("apply", str(self.repo), "--yes", "-f", "json", *extra, check=check)
        return (
            json.loads(proc.stdout)
            if proc.stdout.strip().startswith("{")
            else {"returncode": proc.returncode, "stderr": proc.stderr}
        )

    def get(self, domain: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}/", headers={"Host": domain}, timeout=5)

    def containers(self, dpl_id: str) -> dict[str, str]:
        return {
            c.name: c.id
            for c in self.docker.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={dpl_id}"}
            )
        }

    def teardown(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": "io.reconciler.namespace=examples"}
        ):
            c.remove(force=True)
        for c in self.docker.containers.list(
            all=True, filters={"label": "io.reconciler.role=proxy"}
        ):
            c.remove(force=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    base = tmp_path_factory.mktemp("apply")
    repo = base / "repo"
    shutil.copytree(
        REPO_ROOT / "examples", repo, ignore=shutil.ignore_patterns("invalid", "upstream")
    )
    port = free_port()
    cfg = (repo / "reconcile.yaml").read_text().replace("http_port: 8080", f"http_port: {port}")
    (repo / "reconcile.yaml").write_text(cfg)
    h = Host(repo, base / "state", port)
    h.teardown()
    try:
        yield h
    finally:
        h.teardown()


def plan_of(host: Host) -> dict[str, Any]:
    proc = host.run("plan", str(host.repo), "--against", "local", "-f", "json")
    return json.loads(proc.stdout)


def urls(result: dict[str, Any]) -> dict[str, str]:
    return {a["deployment"]: a["url"] for a in result["plan"]["actions"] if a.get("url")}


def domain_of(url: str) -> str:
    return url.split("://", 1)[1].split(":")[0]


def test_apply_examples_serves_every_app_through_the_proxy(host: Host) -> None:
    result = host.apply()
    assert all(r["ok"] for r in result["results"]), result["results"]
    assert {r["action"] for r in result["results"]} == {"install"}
    for name, url in urls(result).items():
        response = host.get(domain_of(url))
        assert response.status_code == 200, (name, response.status_code, response.text[:200])
    assert host.get("unknown.localhost").status_code == 404


def test_second_apply_is_all_noop_and_runs_no_compose(host: Host, tmp_path: pathlib.Path) -> None:
    plan = plan_of(host)
    assert {a["action"] for a in plan["actions"]} == {"noop"}, plan["actions"]
    # A `docker` shim first on PATH logs every CLI call: a no-op must spawn no compose.
    real = shutil.which("docker")
    assert real is not None
    log = tmp_path / "docker-calls.log"
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    path = f"{shim.parent}:{os.environ.get('PATH', '')}"
    proc = host.run("apply", str(host.repo), "--yes", "-f", "json", env={"PATH": path})
    assert json.loads(proc.stdout)["results"] == []
    calls = log.read_text().splitlines() if log.exists() else []
    assert [c for c in calls if c.startswith("compose")] == []


def test_one_var_change_updates_only_that_deployment(host: Host) -> None:
    plan = plan_of(host)
    ids = {a["deployment"]: a["id"] for a in plan["actions"]}
    before = {name: host.containers(i) for name, i in ids.items()}
    hello = host.repo / "deployments" / "hello.yaml"
    hello.write_text(hello.read_text().replace("greeting: Welcome", "greeting: Bonjour"))
    plan = plan_of(host)
    changed = {a["deployment"]: a for a in plan["actions"] if a["action"] != "noop"}
    assert list(changed) == ["hello"]
    assert changed["hello"]["changes"][0]["field"] == "env"
    assert "GREETING" in changed["hello"]["changes"][0]["keys"]
    result = host.apply()
    assert [(r["deployment"], r["action"], r["ok"]) for r in result["results"]] == [
        ("hello", "update", True)
    ]
    assert "Bonjour" in host.get("hello.localhost").text
    for name, i in ids.items():
        if name != "hello":
            assert host.containers(i) == before[name], name


def test_removed_deployment_is_uninstalled_and_its_data_kept(host: Host) -> None:
    plan = plan_of(host)
    api = next(a for a in plan["actions"] if a["deployment"] == "api")
    data = host.state / "apps" / api["id"] / "data"
    (data / "marker").write_text("keep me")
    (host.repo / "deployments" / "api.yaml").rename(host.repo / "api.yaml.removed")
    result = host.apply()
    assert [(r["deployment"], r["action"], r["ok"]) for r in result["results"]] == [
        ("api", "uninstall", True)
    ]
    assert host.containers(api["id"]) == {}
    assert (data / "marker").read_text() == "keep me"
    assert host.get(domain_of(api["url"])).status_code == 404


def test_purge_removes_the_data(host: Host) -> None:
    # put it back, then remove it again with --purge
    (host.repo / "api.yaml.removed").rename(host.repo / "deployments" / "api.yaml")
    host.apply()
    api = next(a for a in plan_of(host)["actions"] if a["deployment"] == "api")
    (host.repo / "deployments" / "api.yaml").unlink()
    result = host.apply("--purge")
    assert [(r["deployment"], r["action"]) for r in result["results"]] == [("api", "uninstall")]
    assert not (host.state / "apps" / api["id"]).exists()


def test_removed_container_is_repaired_by_next_apply(host: Host) -> None:
    blog = next(a for a in plan_of(host)["actions"] if a["deployment"] == "blog")
    (name,) = host.containers(blog["id"])
    host.docker.containers.get(name).remove(force=True)
    plan = plan_of(host)
    repair = [a for a in plan["actions"] if a["action"] == "repair"]
    assert [a["deployment"] for a in repair] == ["blog"]
    assert "missing" in repair[0]["reason"]
    host.apply()
    assert host.get(domain_of(blog["url"])).status_code == 200


def test_invalid_repository_changes_nothing(host: Host) -> None:
    before = {c.id: c.status for c in host.docker.containers.list(all=True)}
    bad = host.repo / "deployments" / "broken.yaml"
    bad.write_text("name: broken\nimage: busybox:1.36\nprivileged: [\n")
    try:
        proc = host.run("apply", str(host.repo), "--yes", check=False)
        assert proc.returncode == 1
        assert "yaml-syntax" in proc.stderr
        assert "the host was not touched" in proc.stderr
        after = {c.id: c.status for c in host.docker.containers.list(all=True)}
        assert after == before
    finally:
        bad.unlink()


def test_removed_proxy_is_recreated_with_all_routes(host: Host) -> None:
    for c in host.docker.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
        c.remove(force=True)
    result = host.apply()
    assert result["results"] == []
    for url in urls(result).values():
        assert host.get(domain_of(url)).status_code == 200


def test_crash_looping_update_rolls_back_and_keeps_serving(host: Host) -> None:
    status = host.repo / "deployments" / "status.yaml"
    original = status.read_text()
    plan = plan_of(host)
    entry = next(a for a in plan["actions"] if a["deployment"] == "status")
    body_before = host.get(domain_of(entry["url"])).text
    # a command that exits at once: restart: unless-stopped makes it crash-loop
    broken = re.sub(r"command: \[.*\]", 'command: ["sh", "-c", "exit 3"]', original)
    assert broken != original, "the status example changed shape; update this test"
    status.write_text(broken)
    try:
        result = host.apply(check=False)
        (r,) = result["results"]
        assert r["deployment"] == "status" and r["action"] == "update"
        assert not r["ok"] and r["rolled_back"], r
        assert "previous release restored" in r["message"]
        response = host.get(domain_of(entry["url"]))
        assert response.status_code == 200
        assert response.text == body_before
    finally:
        status.write_text(original)


def test_watch_repairs_a_removed_container_within_seconds(host: Host) -> None:
    hello = next(a for a in plan_of(host)["actions"] if a["deployment"] == "hello")
    proc = subprocess.Popen(
        [*RECONCILE, "apply", str(host.repo), "--watch", "--yes", "--interval", "600"],
        env={**os.environ, "RECONCILE_STATE_DIR": str(host.state), "NO_COLOR": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(4)  # first pass: everything noop
        (name,) = list(host.containers(hello["id"]))
        host.docker.containers.get(name).remove(force=True)
        removed = time.monotonic()
        deadline = removed + 15
        while time.monotonic() < deadline:
            try:
                if host.get("hello.localhost").status_code == 200 and host.containers(hello["id"]):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        elapsed = time.monotonic() - removed
        assert host.get("hello.localhost").status_code == 200
        assert elapsed < 5, f"repaired after {elapsed:.1f} s"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
