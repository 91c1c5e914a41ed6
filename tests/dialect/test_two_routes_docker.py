"""A two-route manifest on the real Docker Engine, Compose and Caddy: the ``domain`` route
and a ``match_var: admin_domain`` route each answer through the proxy, on their own
upstream port, and ``reconcile plan`` lists both hostnames before anything is applied.

The deployment is an Impreza custom body in JSON (``mode: manifest``, no edits beyond
``agent_id: local``).  Proxy on a free port with ``tls: off``, a temporary state dir, a
unique namespace; traffic goes only to 127.0.0.1.  Everything this module starts is
removed at the end (the proxy container only if this module created it).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import free_port

pytestmark = pytest.mark.docker

RECONCILE = str(pathlib.Path(sys.executable).with_name("reconcile"))

COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    restart: unless-stopped
    command:
      - sh
      - -c
      - |
        mkdir -p /site /admin
        echo "site of $$DOMAIN" > /site/index.html
        echo admin > /admin/index.html
        busybox httpd -p 8080 -h /admin
        exec busybox httpd -f -p 80 -h /site
    environment:
      DOMAIN: ${DOMAIN}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      retries: 10
    networks: [default, impreza-proxy]
networks:
  impreza-proxy:
    external: true
"""


def body(domain: str, admin: str) -> dict[str, Any]:
    return {
        "name": "wiki",
        "agent_id": "local",
        "mode": "manifest",
        "domain": domain,
        "vars": {"admin_domain": admin},
        "manifest": {
            "vars": [{"name": "admin_domain", "description": "hostname of the admin UI"}],
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "network": {
                "reverse_proxy": {
                    "enabled": True,
                    "routes": [
                        {"upstream": "{deployment_id}-app:80", "match_var": "domain"},
                        {"upstream": "{deployment_id}-app:8080", "match_var": "admin_domain"},
                    ],
                }
            },
        },
    }


class Host:
    def __init__(self, base: pathlib.Path) -> None:
        self.docker = docker_client()
        self.namespace = unique_namespace("two")
        self.port = free_port()
        self.state = base / "state"
        self.repo = base / "repo"
        (self.repo / "deployments").mkdir(parents=True)
        (self.repo / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\nbase_domain: localhost\n"
            f"proxy: {{http_port: {self.port}, tls: off}}\n"
        )
        self.domain = f"{self.namespace}.localhost"
        self.admin = f"{self.namespace}-admin.localhost"
        (self.repo / "deployments" / "wiki.json").write_text(
            json.dumps(body(self.domain, self.admin), indent=2) + "\n"
        )
        self.proxy_before = self._proxy_id()

    def _proxy_id(self) -> str | None:
        found = self.docker.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"})
        return found[0].id if found else None

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RECONCILE, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "RECONCILE_STATE_DIR": str(self.state), "NO_COLOR": "1"},
            timeout=600,
            check=False,
        )

    def get(self, host: str) -> httpx.Response:
        """GET / through the proxy with ``Host: host``; retried while a route settles."""
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{self.port}/", headers={"Host": host}, timeout=5
                )
                if response.status_code != 502 or time.monotonic() > deadline:
                    return response
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.25)

    def teardown(self) -> None:
        # Uninstall through the tool (compose down: containers and the project's network),
        # then remove whatever a failed test may have left with this namespace's labels.
        (self.repo / "deployments" / "wiki.json").unlink()
        self.reconcile("apply", str(self.repo), "--yes", "--allow-mass-prune", "--purge")
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True, v=True)
        for net in self.docker.networks.list(
            filters={"label": f"com.docker.compose.project={deployment_id(self.namespace, 'wiki')}"}
        ):
            net.remove()
        proxy = self._proxy_id()
        if proxy is not None and self.proxy_before is None:
            self.docker.containers.get(proxy).remove(force=True)
        self.docker.close()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("two-routes"))
    try:
        yield h
    finally:
        h.teardown()


def test_plan_lists_both_hostnames(host: Host) -> None:
    proc = host.reconcile("plan", str(host.repo), "--against", "empty", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    (action,) = json.loads(proc.stdout)["actions"]
    assert action["action"] == "install"
    assert action["routes"] == [host.domain, host.admin]
    text = host.reconcile("plan", str(host.repo), "--against", "empty")
    assert f"routes: {host.domain}, {host.admin}" in text.stdout


def test_both_routes_answer_through_the_proxy(host: Host) -> None:
    proc = host.reconcile("apply", str(host.repo), "--yes", "-f", "json")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    site = host.get(host.domain)
    assert (site.status_code, site.text) == (200, f"site of {host.domain}\n")
    admin = host.get(host.admin)
    assert (admin.status_code, admin.text) == (200, "admin\n")
    assert host.get(f"{host.namespace}-other.localhost").status_code == 404
