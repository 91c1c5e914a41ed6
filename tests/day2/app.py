"""A one-app desired-state repository for the day-2 tests: busybox httpd serving a page
whose text is the app's "version", with a generated secret and lifecycle hooks that
leave traces in the app's bind-mounted ``data/`` (so a test sees that they ran, and
where)."""

from __future__ import annotations

import pathlib
from typing import Any

from tests.e2e.cluster import Cluster

MANIFEST = """\
runtime:
  type: docker-compose
  compose_yaml: |-
    services:
      app:
        image: busybox:1.36
        container_name: ${{DEPLOYMENT_ID}}-app
        init: true
        restart: unless-stopped
        environment:
          ADMIN_TOKEN: ${{ADMIN_TOKEN}}
        command:
          - sh
          - -c
          - |
            mkdir -p /www
            echo 'page {version}' > /www/index.html
            echo 'day2 app starting {version}'
            exec busybox httpd -f -p 80 -h /www
        volumes:
          - ./data:/data
        networks: [default, impreza-proxy]
    networks:
      impreza-proxy:
        external: true
vars:
  - name: admin_token
    env: ADMIN_TOKEN
    secret: true
    generate: hex:24
network:
  reverse_proxy:
    enabled: true
    routes:
      - upstream: "{{deployment_id}}-app:80"
        match_var: domain
lifecycle:
  backup: "echo backup-of-{version}; ls /www"
  uninstall: "echo goodbye > /data/uninstall-ran; cat /www/index.html >> /data/uninstall-ran"
"""


def write_repo(
    repo: pathlib.Path, *, namespace: str, port: int, version: str, agent: str = "local"
) -> None:
    """(Re)write the repository with the app at ``version``."""
    (repo / "deployments" / "notes").mkdir(parents=True, exist_ok=True)
    agents = "" if agent == "local" else f"agents:\n  host1: {agent}\n"
    (repo / "reconcile.yaml").write_text(
        f"namespace: {namespace}\nbase_domain: localhost\n{agents}"
        f"proxy:\n  http_port: {port}\n  tls: off\n"
    )
    (repo / "deployments" / "notes" / "deployment.yaml").write_text(
        f"name: notes\nagent: {'local' if agent == 'local' else 'host1'}\n"
        f"domain: notes-{namespace}.localhost\nmanifest: ./manifest.yaml\n"
    )
    (repo / "deployments" / "notes" / "manifest.yaml").write_text(MANIFEST.format(version=version))


# The steps the agent-backed day-2 tests share (tests/day2, tests/mcp).


def deploy(cluster: Cluster, version: str) -> None:
    write_repo(
        cluster.work,
        namespace=cluster.namespace,
        port=cluster.proxy_port,
        version=version,
        agent=cluster.agent_id,
    )
    sha = cluster.commit_and_push(version)
    assert cluster.github_push(sha).status_code == 202
    cluster.settled("notes")


def page(cluster: Cluster, text: str) -> bool:
    return cluster.serves(text, f"notes-{cluster.namespace}.localhost")


def view(cluster: Cluster) -> dict[str, Any]:
    rows = cluster.admin("/v1/deployments")["deployments"]
    return next(d for d in rows if d["name"] == "notes")
