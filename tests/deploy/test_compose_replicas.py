"""``deploy/compose.replicas.yaml`` (PostgreSQL + two ``reconcile serve`` replicas behind
Caddy), checked by the real tools without bringing it up: ``docker compose config`` resolves
it, and Caddy itself (the caddy:2 image, no network) adapts and validates its Caddyfile.
tests/deploy/test_compose_replicas_docker.py brings it up for real (on the local
reconciler-postgres:17)."""

from __future__ import annotations

import json
import pathlib
import secrets
import subprocess
from typing import Any

import pytest

from tests.agent.docker_helpers import docker_client

pytestmark = pytest.mark.docker

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.replicas.yaml"
SECRETS = ("admin_token", "webhook_secret", "postgres_password", "database_url")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    for name in SECRETS:
        (tmp_path / name).write_text("x\n")
    return {
        "RECONCILE_SECRETS_DIR": str(tmp_path),
        "RECONCILE_DOMAIN": "cp.localhost",
        "RECONCILE_SOURCE": "https://git.example.com/ops.git",
        "HOME": str(tmp_path),
    }


@pytest.fixture
def config(env: dict[str, str]) -> dict[str, Any]:
    done = compose_config(env)
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_two_replicas_share_the_database_and_keep_their_own_data(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "server-a", "server-b", "caddy"}
    volumes = set()
    for name in ("server-a", "server-b"):
        server = services[name]
        assert server["environment"]["RECONCILE_DATABASE_FILE"] == "/run/secrets/database_url"
        assert {s["source"] for s in server["secrets"]} >= {"database_url", "admin_token"}
        assert "--source=https://git.example.com/ops.git" in server["command"]
        assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(server["healthcheck"]["test"])
        [volume] = server["volumes"]
        volumes.add(volume["source"])
        assert not server.get("ports")
    assert volumes == {"data-a", "data-b"}
    assert not services["postgres"].get("ports")  # the database is published nowhere
    pg_env = services["postgres"]["environment"]
    assert pg_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in pg_env


def test_a_missing_source_is_refused_by_name(env: dict[str, str]) -> None:
    del env["RECONCILE_SOURCE"]
    done = compose_config(env)
    assert done.returncode != 0
    assert "set RECONCILE_SOURCE" in done.stderr


def test_caddy_accepts_the_caddyfile_and_balances_over_both_replicas(
    config: dict[str, Any],
) -> None:
    docker_client()  # fails (never skips) without the Docker Engine and its images
    caddyfile = config["configs"]["caddyfile"]["content"].replace("$$", "$")
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "--name",
            f"test-replicas-caddy-{secrets.token_hex(4)}",
            "-e",
            "RECONCILE_DOMAIN=cp.localhost",
            "caddy:2",
            "caddy",
            "adapt",
            "--config",
            "/dev/stdin",
            "--adapter",
            "caddyfile",
            "--validate",
        ],
        input=caddyfile,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    adapted = json.loads(done.stdout)
    [route] = adapted["apps"]["http"]["servers"]["srv0"]["routes"]
    assert route["match"] == [{"host": ["cp.localhost"]}]
    [proxy] = route["handle"][0]["routes"][0]["handle"]
    assert [u["dial"] for u in proxy["upstreams"]] == ["server-a:8800", "server-b:8800"]
    assert proxy["health_checks"]["active"]["uri"] == "/readyz"
