"""Domains on the real Docker Engine, Compose and Caddy: HTTPS from Caddy's local CA end
to end, a domain-only change that moves the route without restarting the app, and a
domain conflict that blocks the second deployment while the first keeps serving.

One module-scoped host (proxy on free HTTP and HTTPS ports, ``tls: internal``, a
temporary state dir); the scenarios run in order.  Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.docker

ROOT_CA = "/data/caddy/pki/authorities/local/root.crt"
BODY = "<h1>site from the domains test</h1>\n"

COMPOSE = """\
# Does not interpolate DOMAIN or DOMAIN_URL: a domain change must not restart it.
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    restart: unless-stopped
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    volumes:
      - ./public:/www:ro
    networks: [default, impreza-proxy]
networks:
  impreza-proxy:
    external: true
"""

SITE = """\
name: site
compose: ./compose.yaml
domain: {domain}
routes:
  - upstream: "{{deployment_id}}-app:80"
"""

# An image deployment gets DOMAIN and DOMAIN_URL in its environment.
ECHO = """\
name: echo
image: caddy:2
target_port: 80
domain: {domain}
"""


class DomainHost:
    def __init__(self, base: pathlib.Path) -> None:
        self.docker = docker_client()
        self.namespace = unique_namespace("dom")
        self.http_port, self.https_port = free_port(), free_port()
        self.state = base / "state"
        self.repo = self.make_repo(base / "repo", self.namespace)
        site = self.repo / "deployments" / "site"
        (site / "public").mkdir(parents=True)
        (site / "compose.yaml").write_text(COMPOSE)
        (site / "public" / "index.html").write_text(BODY)
        self.set_site_domain("site-a.localhost")
        self.site_id = deployment_id(self.namespace, "site")
        self.others: list[str] = []

    def make_repo(self, root: pathlib.Path, namespace: str) -> pathlib.Path:
        (root / "deployments").mkdir(parents=True)
        (root / "reconcile.yaml").write_text(
            f"namespace: {namespace}\nbase_domain: localhost\n"
            f"proxy: {{http_port: {self.http_port}, https_port: {self.https_port}, "
            "tls: internal}\n"
        )
        return root

    def set_site_domain(self, domain: str) -> None:
        path = self.repo / "deployments" / "site" / "deployment.yaml"
        path.write_text(SITE.format(domain=domain))

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO_ROOT),
                "RECONCILE_STATE_DIR": str(self.state),
                "NO_COLOR": "1",
                "COLUMNS": "200",
            },
            timeout=600,
            check=False,
        )

    def apply(self, repo: pathlib.Path | None = None, *, ok: bool = True) -> dict[str, Any]:
        proc = self.reconcile("apply", str(repo or self.repo), "--yes", "-f", "json")
        assert (proc.returncode == 0) is ok, f"{proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def plan(self, repo: pathlib.Path | None = None) -> dict[str, Any]:
        proc = self.reconcile("plan", str(repo or self.repo), "--against", "local", "-f", "json")
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def container_ids(self, dpl_id: str) -> dict[str, str]:
        return {
            c.name: c.id
            for c in self.docker.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={dpl_id}"}
            )
        }

    def root_ca(self) -> str:
        proxy = self.docker.containers.get("reconciler-proxy")
        code, out = proxy.exec_run(["cat", ROOT_CA])
        assert code == 0, out
        return str(out.decode())

    def https_get(self, domain: str, ca: str, timeout: float = 30) -> httpx.Response:
        """GET https://<domain>/ through 127.0.0.1:<https port>, SNI and Host = domain,
        verified against the proxy's root CA; retried while Caddy issues the cert."""
        context = ssl.create_default_context(cadata=ca)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with httpx.Client(verify=context, timeout=5) as client:
                    response = client.get(
                        f"https://127.0.0.1:{self.https_port}/",
                        headers={"Host": domain},
                        extensions={"sni_hostname": domain},
                    )
                    stream = response.extensions["network_stream"]
                    cert = stream.get_extra_info("ssl_object").getpeercert()
                    response.extensions["peer_cert"] = cert
                    return response
            except (httpx.ConnectError, httpx.ReadError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def http_get(self, domain: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http_port}/", headers={"Host": domain}, timeout=5)

    def teardown(self) -> None:
        for ns in (self.namespace, *self.others):
            for c in self.docker.containers.list(
                all=True, filters={"label": f"io.reconciler.namespace={ns}"}
            ):
                c.remove(force=True)
        for c in self.docker.containers.list(
            all=True, filters={"label": "io.reconciler.role=proxy"}
        ):
            c.remove(force=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DomainHost]:
    h = DomainHost(tmp_path_factory.mktemp("domains"))
    try:
        yield h
    finally:
        h.teardown()


def _action(result: dict[str, Any], name: str) -> dict[str, Any]:
    plan = result.get("plan", result)  # apply's JSON wraps the plan; plan's is the plan
    (found,) = [a for a in plan["actions"] if a["deployment"] == name]
    return found


def test_https_with_the_internal_ca_end_to_end(host: DomainHost) -> None:
    result = host.apply()
    assert _action(result, "site")["action"] == "install"
    assert _action(result, "site")["url"] == f"https://site-a.localhost:{host.https_port}"
    ca = host.root_ca()
    assert "BEGIN CERTIFICATE" in ca
    response = host.https_get("site-a.localhost", ca)
    assert response.status_code == 200
    assert response.text == BODY
    names = [v for k, v in response.extensions["peer_cert"]["subjectAltName"] if k == "DNS"]
    assert names == ["site-a.localhost"]
    # Plain HTTP redirects to HTTPS on the port the host publishes.
    redirect = host.http_get("site-a.localhost")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == f"https://site-a.localhost:{host.https_port}/"
    # An unknown host still gets the 404 on plain HTTP.
    assert host.http_get("nobody.localhost").status_code == 404


def test_domain_only_change_moves_the_route_without_a_restart(host: DomainHost) -> None:
    before = host.container_ids(host.site_id)
    assert len(before) == 1
    host.set_site_domain("site-b.localhost")
    planned = _action(host.plan(), "site")
    assert planned["action"] == "update"
    assert {c["field"] for c in planned["changes"]} == {"domain", "env", "routes"}
    result = host.apply()
    assert _action(result, "site")["action"] == "update"
    (outcome,) = [r for r in result["results"] if r["deployment"] == "site"]
    assert outcome["ok"], outcome
    # Same container: `up` was not run, since the app's compose does not use DOMAIN.
    assert host.container_ids(host.site_id) == before
    ca = host.root_ca()
    moved = host.https_get("site-b.localhost", ca)
    assert (moved.status_code, moved.text) == (200, BODY)
    assert host.http_get("site-a.localhost").status_code == 404
    # .env has the new DOMAIN for the next start; the record says the containers kept
    # their old labels, so the next plan is a noop, not an update forever.
    env = (host.state / "apps" / host.site_id / ".env").read_text()
    assert "DOMAIN='site-b.localhost'" in env
    record = json.loads((host.state / "apps" / host.site_id / "state.json").read_text())
    assert record["labels_spec_hash"] not in (None, record["spec_hash"])
    assert _action(host.plan(), "site")["action"] == "noop"


def test_domain_change_of_an_app_that_reads_domain_restarts_it(host: DomainHost) -> None:
    echo = host.repo / "deployments" / "echo.yaml"
    echo.write_text(ECHO.format(domain="echo-a.localhost"))
    host.apply()
    echo_id = deployment_id(host.namespace, "echo")
    before = host.container_ids(echo_id)
    echo.write_text(ECHO.format(domain="echo-b.localhost"))
    host.apply()
    after = host.container_ids(echo_id)
    assert after.keys() == before.keys() and after != before  # DOMAIN is in its env
    assert host.https_get("echo-b.localhost", host.root_ca()).status_code == 200
    echo.unlink()
    host.apply()


def test_conflicting_domain_blocks_the_second_and_the_first_keeps_serving(
    host: DomainHost,
) -> None:
    clash = host.repo / "deployments" / "clash.yaml"
    clash.write_text(ECHO.replace("name: echo", "name: clash").format(domain="site-b.localhost"))
    result = host.apply(ok=False)  # blocked: the apply says so with exit 1
    action = _action(result, "clash")
    assert action["action"] == "blocked"
    assert action["reason"] == (
        "domain site-b.localhost is already in use by site; waiting until it is free"
    )
    assert _action(result, "site")["action"] == "noop"
    assert host.container_ids(deployment_id(host.namespace, "clash")) == {}
    ca = host.root_ca()
    assert host.https_get("site-b.localhost", ca).text == BODY
    # Planning again: still blocked, nothing else to do (no retry storm, no churn).
    again = host.plan()
    assert _action(again, "clash")["action"] == "blocked"
    assert _action(again, "clash")["reason"] == action["reason"]
    assert again["summary"]["blocked"] == 1
    assert sum(again["summary"].values()) == again["summary"]["noop"] + 1
    clash.unlink()
    host.apply()


def test_another_namespace_on_the_same_host_is_blocked_too(host: DomainHost) -> None:
    other_ns = unique_namespace("dom2")
    host.others.append(other_ns)
    repo = host.make_repo(host.repo.parent / "repo2", other_ns)
    (repo / "deployments" / "shop.yaml").write_text(
        ECHO.replace("name: echo", "name: shop").format(domain="site-b.localhost")
    )
    result = host.apply(repo, ok=False)
    action = _action(result, "shop")
    assert action["action"] == "blocked"
    assert action["reason"] == "domain site-b.localhost is already in use; waiting until it is free"
    assert host.container_ids(deployment_id(other_ns, "shop")) == {}
    assert host.https_get("site-b.localhost", host.root_ca()).text == BODY
