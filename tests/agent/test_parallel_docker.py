"""``reconcile apply --parallel`` on the real Docker Engine, Compose v2 and Caddy: 20
busybox httpd apps, one of them crash-looping.  Only that one fails and is taken down;
the 19 others answer through the proxy on 127.0.0.1.

Shared daemon: the namespace is unique, the proxy is a container of its own
(``RECONCILE_PROXY_CONTAINER``) on a free port and a network of its own (another
engineer's set-up replacing ``impreza-proxy`` made the proxy here "outdated" mid-run);
the apps join only that network (20 compose networks more would eat the daemon's address
pools), and everything made here is removed afterwards.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import free_port

pytestmark = pytest.mark.docker

RECONCILE = str(pathlib.Path(os.sys.executable).with_name("reconcile"))  # type: ignore[attr-defined]
APPS = 20
CRASHING = "app13"

COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    restart: unless-stopped
    command: COMMAND
    networks: [NETWORK]
networks:
  NETWORK: {external: true}
"""
SERVE = "[httpd, -f, -p, '80', -h, /www]"
CRASH = "[sh, -c, 'sleep 0.3; exit 3']"
DEPLOYMENT = (
    "name: NAME\ncompose: ./compose.yaml\n"
    "routes:\n  - upstream: '{deployment_id}-app:80'\n    match_var: domain\n"
)


def write_repo(
    root: pathlib.Path, namespace: str, port: int, apps: int = APPS, crashing: str = CRASHING
) -> None:
    (root / "deployments").mkdir(parents=True)
    (root / "reconcile.yaml").write_text(
        f"namespace: {namespace}\nproxy: {{tls: off, http_port: {port}, network: {namespace}}}\n"
    )
    for i in range(apps):
        name = f"app{i:02d}"
        app = root / "deployments" / name
        (app / "www").mkdir(parents=True)
        (app / "www" / "index.html").write_text(f"hello from {name}\n")
        (app / "deployment.yaml").write_text(DEPLOYMENT.replace("NAME", name))
        command = CRASH if name == crashing else SERVE
        compose = COMPOSE.replace("COMMAND", command).replace("NETWORK", namespace)
        if name != crashing:
            compose = compose.replace(
                "    networks:", "    volumes: ['./www:/www:ro']\n    networks:"
            )
        (app / "compose.yaml").write_text(compose)


class Host:
    def __init__(self, base: pathlib.Path, apps: int = APPS, crashing: str = CRASHING) -> None:
        self.docker = docker_client()
        self.namespace = unique_namespace("par")
        self.proxy = f"reconciler-proxy-{self.namespace}"
        self.port = free_port()
        self.repo = base / "repo"
        self.state = base / "state"
        write_repo(self.repo, self.namespace, self.port, apps, crashing)

    def config_loads(self) -> int:
        """``POST /load`` requests the real proxy received, from Caddy's admin log."""
        logs = self.docker.containers.get(self.proxy).logs().decode(errors="replace")
        return sum(
            '"uri":"/load"' in line and '"method":"POST"' in line for line in logs.splitlines()
        )

    def apply(self, *extra: str) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run(
            [RECONCILE, "apply", str(self.repo), "--yes", "-f", "json", *extra],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "RECONCILE_STATE_DIR": str(self.state),
                "RECONCILE_PROXY_CONTAINER": self.proxy,
                "NO_COLOR": "1",
            },
            timeout=900,
            check=False,
        )
        assert proc.stdout.startswith("{"), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def get(self, domain: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}/", headers={"Host": domain}, timeout=5)

    def containers(self, name: str) -> list[Any]:
        dpl = deployment_id(self.namespace, name)
        return self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.deployment={dpl}"}
        )

    def cleanup(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True)
        for c in self.docker.containers.list(all=True, filters={"name": f"^/{self.proxy}$"}):
            c.remove(force=True)
        for n in self.docker.networks.list(names=[self.namespace]):
            n.remove()


@pytest.fixture
def host(tmp_path: pathlib.Path) -> Iterator[Host]:
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def small_host(tmp_path: pathlib.Path) -> Iterator[Host]:
    h = Host(tmp_path, apps=6, crashing="")
    try:
        yield h
    finally:
        h.cleanup()


def test_a_batch_of_installs_is_one_config_load_on_the_real_proxy(small_host: Host) -> None:
    """Six installs in one apply (the default pool holds them all): Caddy's admin API
    receives one ``POST /load`` for the batch, and all six answer; the no-op apply after
    it loads nothing (the repair finds the config in sync)."""
    code, out = small_host.apply()
    assert code == 0, [r["message"] for r in out["results"] if not r["ok"]]
    assert [r["action"] for r in out["results"]] == ["install"] * 6
    assert small_host.config_loads() == 1
    for r in out["results"]:
        assert small_host.get(urlsplit(r["url"]).hostname).status_code == 200
    code, out = small_host.apply()
    assert code == 0 and out["results"] == []
    assert small_host.config_loads() == 1


def test_twenty_parallel_installs_one_crash_loop(host: Host) -> None:
    code, out = host.apply("--parallel", "8")
    assert code == 1  # one deployment failed
    results = {r["deployment"]: r for r in out["results"]}
    assert len(results) == APPS
    assert all(r["action"] == "install" for r in results.values())
    failed = sorted(name for name, r in results.items() if not r["ok"])
    assert failed == [CRASHING], {n: results[n]["message"] for n in failed}
    bad = results[CRASHING]
    assert bad["rolled_back"], bad
    assert "crash-looping" in bad["message"] or "exited" in bad["message"], bad
    assert host.containers(CRASHING) == []  # taken down: no restart loop left behind
    record = json.loads((host.state / "apps" / bad["id"] / "state.json").read_text())
    assert record["status"] == "failed"
    bad_domain = urlsplit(bad["url"]).hostname
    assert host.get(bad_domain).status_code == 404  # its route withdrawn
    for name, r in results.items():
        if name == CRASHING:
            continue
        response = host.get(urlsplit(r["url"]).hostname)
        assert response.status_code == 200, (name, response.status_code)
        assert response.text == f"hello from {name}\n"
