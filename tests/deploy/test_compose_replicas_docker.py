"""The replicas kit, for real: ``deploy/compose.replicas.yaml`` (PostgreSQL, two ``reconcile
serve`` replicas, Caddy in front) comes up on the real Docker host under a unique project
name, published on 127.0.0.1 only, with the database from ``reconciler-postgres:17`` (the
local image scripts/setup.sh builds from Debian's postgresql, as no registry answers here)
and the secrets as files in a temporary dir, owned the way the file's header says.

Everything below goes through Caddy's TLS on 127.0.0.1 (SNI and Host ``localhost``, Caddy's
own CA trusted): both replicas answer ``/readyz`` and exactly one leads; the admin token is
checked; an agent bootstraps over the HTTP API and its heartbeat is accepted (this test
plays the agent: the agent's own process is tested in tests/deploy/test_compose_image_docker.py);
a signed push webhook gets planned for that agent and a replay of its delivery id is a
duplicate on whichever replica it reaches; then the leading replica is killed (``docker
kill``), the survivor keeps answering through Caddy, takes the lead and plans a second push.

Fails, never skips, without Docker or the images. Everything it makes belongs to one
Compose project named after a random suffix, and ``docker compose down -v`` removes it.
"""

from __future__ import annotations

import contextlib
import secrets
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.deploy.kit import DOMAIN, IMAGE, ROOT, SERVER_UID, ComposeKit, kit_dir, run

pytestmark = pytest.mark.docker

POSTGRES_IMAGE = "reconciler-postgres:17"
UP_TIMEOUT = 150  # seconds for `up --wait`: database init, then both replicas healthy
PLAN_TIMEOUT = 60.0
TAKEOVER_TIMEOUT = 60.0


@dataclass
class Replicas(ComposeKit):
    """One Compose project of the kit, and how to reach it: only through Caddy on 127.0.0.1."""

    compose_file = ROOT / "deploy" / "compose.replicas.yaml"
    prefix = "crrep"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pg_password = secrets.token_hex(16)
        self.url = f"https://127.0.0.1:{self.https_port}"

    @property
    def compose_env(self) -> dict[str, str]:
        return {**super().compose_env, "POSTGRES_IMAGE": POSTGRES_IMAGE}

    def compose_bytes(self, *args: str, stdin: bytes | None = None) -> bytes:
        """``docker compose`` whose output is binary (a dump), not text."""
        done = subprocess.run(
            self.compose_args(*args),
            env=self.compose_env, input=stdin, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return done.stdout

    def write_database_secrets(self) -> None:
        """The server's secrets and the database's: its URL for the server, the password
        owned by root (the database's entrypoint reads it as root)."""
        url = f"postgresql://reconcile:{self.pg_password}@postgres:5432/reconcile\n"
        self.write_secrets(database_url=(url, SERVER_UID), postgres_password=(self.pg_password, 0))

    def http(self) -> httpx.Client:
        """A client for Caddy on 127.0.0.1 that says ``localhost`` in the Host header and the
        TLS SNI, and checks the certificate against Caddy's own root."""
        return httpx.Client(
            base_url=self.url,
            headers={"Host": DOMAIN},
            verify=ssl.create_default_context(cafile=self.ca),
            timeout=15,
        )


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request with SNI ``localhost`` (the URL's host is the address, 127.0.0.1)."""
    return http.request(method, path, extensions={"sni_hostname": DOMAIN}, **kwargs)


def push_hook(
    kit: Replicas, http: httpx.Client, sha: str, delivery: str
) -> tuple[int, dict[str, Any]]:
    body, headers = kit.signed_push(sha, delivery)
    r = call(http, "POST", "/hooks/github", content=body, headers=headers)
    return r.status_code, r.json()


def planned(http: httpx.Client, admin: dict[str, str], sha: str) -> dict[str, Any] | None:
    """The last plan when it was made at ``sha``, else None."""
    r = call(http, "GET", "/v1/plan", headers=admin)
    if r.status_code != 200 or r.headers.get("X-Reconcile-Revision") != sha:
        return None
    plan: dict[str, Any] = r.json()
    return plan


def readiness(http: httpx.Client) -> dict[str, Any]:
    r = call(http, "GET", "/readyz")
    assert r.status_code == 200, f"/readyz through Caddy: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def kit() -> Iterator[Replicas]:
    with kit_dir("crrep-", IMAGE, POSTGRES_IMAGE, "caddy:2") as (_, base):
        k = Replicas(base)
        try:
            yield k
        finally:
            with contextlib.suppress(Exception):
                k.down()


def test_two_replicas_on_postgres_behind_caddy_plan_pushes_and_survive_the_leader_killed(
    kit: Replicas,
) -> None:
    started = time.monotonic()
    # The desired-state repository: a bare one both replicas read (mounted), owned by their uid.
    kit.init_repo({"reconcile.yaml": f"namespace: {kit.namespace}\n", "deployments/.keep": ""})
    kit.write_database_secrets()
    # only what a test needs on top of the production file: the repository, mounted
    mount = f"      - {kit.origin}:{kit.origin}:ro\n"
    (kit.base / "test.yaml").write_text(
        f"services:\n  server-a:\n    volumes:\n{mount}  server-b:\n    volumes:\n{mount}"
    )

    ports = kit.up(UP_TIMEOUT)
    up_seconds = time.monotonic() - started
    assert {p["TargetPort"] for p in ports} == {80, 443}  # Caddy only: no replica, no database

    kit.fetch_ca()
    # the replicas' containers by hostname: /readyz names a replica "<hostname>:<pid>:…"
    containers = {}
    for service in ("server-a", "server-b"):
        cid = kit.compose("ps", "-q", service).strip()
        containers[run("docker", "inspect", "-f", "{{.Config.Hostname}}", cid).strip()] = cid

    admin = {"Authorization": f"Bearer {kit.admin_token}"}
    with kit.http() as http:
        # Both replicas ready through the proxy (round robin reaches each), one of them leads.
        seen: dict[str, bool] = {}

        def both_ready() -> bool:
            body = readiness(http)
            seen[body["replica"].split(":")[0]] = body["leader"]
            return len(seen) == 2 and sum(seen.values()) == 1

        kit.wait(both_ready, 60, "both replicas ready through Caddy, one leading")
        assert set(seen) == set(containers), (seen, containers)
        [leader_host] = [h for h, leads in seen.items() if leads]

        # The admin token is the one in the secrets file, and a wrong one is refused.
        assert call(http, "GET", "/v1/agents", headers=admin).status_code == 200
        wrong = {"Authorization": f"Bearer {secrets.token_hex(16)}"}
        assert call(http, "GET", "/v1/agents", headers=wrong).status_code == 401
        # plain HTTP is Caddy's redirect to HTTPS, never a replica
        plain = httpx.get(f"http://127.0.0.1:{kit.http_port}/readyz", headers={"Host": DOMAIN})
        assert plain.status_code == 308 and plain.headers["Location"].startswith("https://")

        # An agent bootstraps with a one-time token made over the admin API; the token is
        # spent in the shared database, so the other replica refuses it too.
        r = call(http, "POST", "/v1/agent-tokens", headers=admin)
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        boot = call(http, "POST", "/v1/agent/bootstrap", json={"token": token, "hostname": "h1"})
        assert boot.status_code == 201, boot.text
        agent_id, agent_secret = boot.json()["agent_id"], boot.json()["secret"]
        for _ in range(2):  # round robin: one of these reaches the other replica
            again = call(http, "POST", "/v1/agent/bootstrap", json={"token": token})
            assert again.status_code == 401, again.text
        agent = {"X-Agent-Id": agent_id, "X-Agent-Secret": agent_secret}

        def heartbeat() -> None:
            report = {"state": {"agent": agent_id, "deployments": {}}, "hostname": "h1"}
            r = call(http, "POST", "/v1/agent/report", json=report, headers=agent)
            assert r.status_code == 200, r.text
            assert r.json()["state_digest"]

        heartbeat()
        agents = call(http, "GET", "/v1/agents", headers=admin).json()["agents"]
        assert [a["online"] for a in agents if a["id"] == agent_id] == [True], agents
        bad = {**agent, "X-Agent-Secret": secrets.token_hex(16)}
        bad_report = {"state": {"agent": agent_id}}
        assert (
            call(http, "POST", "/v1/agent/report", json=bad_report, headers=bad).status_code == 401
        )

        # A push, announced by a signed webhook, is planned for the agent.
        config = f"namespace: {kit.namespace}\nagents:\n  host1: {agent_id}\n"
        web = "name: web\nagent: host1\nimage: busybox:1.36\ntarget_port: 80\n"
        sha1 = kit.commit_and_push({"reconcile.yaml": config, "deployments/web.yaml": web})
        heartbeat()  # online when the plan is made: an install, not blocked
        delivery = str(uuid.uuid4())
        status, answer = push_hook(kit, http, sha1, delivery)
        assert (status, answer["result"]) == (202, "accepted"), answer
        plan = kit.wait(lambda: planned(http, admin, sha1), PLAN_TIMEOUT, f"a plan at {sha1}")
        assert [(a["action"], a["deployment"], a["agent"]) for a in plan["actions"]] == [
            ("install", "web", agent_id)
        ], plan
        # ... and issued: the agent's command is waiting for it, on any replica
        batch = call(http, "GET", "/v1/agent/commands", headers=agent).json()
        assert [c["action"]["deployment"] for c in batch["commands"]] == ["web"], batch

        # The same delivery again, to both replicas: a duplicate each time, nothing enqueued.
        for _ in range(2):
            status, answer = push_hook(kit, http, sha1, delivery)
            assert (status, answer["result"]) == (200, "duplicate"), answer
        events = call(http, "GET", "/v1/events", params={"limit": 1000}, headers=admin).json()
        results = [
            e["fields"]["result"]
            for e in events["events"]
            if e["kind"] == "webhook" and e["fields"].get("delivery") == delivery
        ]
        assert results == ["accepted", "duplicate", "duplicate"], results

        # The header's online backup: a custom-format dump on stdout (binary: `exec -T`, no
        # TTY), which pg_restore reads back with the store's tables in it.
        dump = kit.compose_bytes(
            "exec", "-T", "postgres", "pg_dump", "-U", "reconcile", "-Fc", "reconcile"
        )
        assert dump.startswith(b"PGDMP"), dump[:100]
        toc = kit.compose_bytes("exec", "-T", "postgres", "pg_restore", "--list", stdin=dump)
        assert b" TABLE public agents " in toc, toc.decode(errors="replace")[-2000:]

        # Fail-over: kill the leader. Caddy retries on the survivor, which takes the lead.
        killed_at = time.monotonic()
        run("docker", "kill", containers[leader_host])
        [survivor_host] = [h for h in containers if h != leader_host]
        for _ in range(6):  # round robin would send half of these to the dead one
            assert call(http, "GET", "/healthz").status_code == 200

        def survivor_leads() -> bool:
            body = readiness(http)
            return body["replica"].startswith(survivor_host + ":") and body["leader"] is True

        kit.wait(survivor_leads, TAKEOVER_TIMEOUT, "the surviving replica to lead")
        takeover = time.monotonic() - killed_at

        api = "name: api\nagent: host1\nimage: busybox:1.36\ntarget_port: 8080\n"
        sha2 = kit.commit_and_push({"deployments/api.yaml": api})
        heartbeat()
        status, answer = push_hook(kit, http, sha2, str(uuid.uuid4()))
        assert (status, answer["result"]) == (202, "accepted"), answer
        plan = kit.wait(lambda: planned(http, admin, sha2), PLAN_TIMEOUT, f"a plan at {sha2}")
        actions = {a["deployment"]: a["action"] for a in plan["actions"]}
        assert actions.get("api") == "install", plan
        assert "web" in actions, plan  # still desired (in flight, or planned again)

    kit.down()
    left = kit.leftovers()
    assert not left.strip(), f"left behind by `down -v`: {left}"
    print(
        f"\nreplicas kit: up --wait {up_seconds:.1f} s, takeover after the kill {takeover:.1f} s,"
        f" whole test {time.monotonic() - started:.1f} s"
    )
