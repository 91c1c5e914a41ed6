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
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port
from tests.deploy.kit import IMAGE, ROOT, SERVER_UID, VERSION, git, published, run, wait_for

pytestmark = pytest.mark.docker

COMPOSE_FILE = ROOT / "deploy" / "compose.replicas.yaml"
POSTGRES_IMAGE = "reconciler-postgres:17"
DOMAIN = "localhost"  # Caddy's internal CA certifies it; no ACME, no DNS
UP_TIMEOUT = 150  # seconds for `up --wait`: database init, then both replicas healthy
PLAN_TIMEOUT = 60.0
TAKEOVER_TIMEOUT = 60.0


@dataclass
class Replicas:
    """One Compose project of the kit, and how to reach it: only through Caddy on 127.0.0.1."""

    base: pathlib.Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.project = f"crrep-{self.suffix}"
        self.namespace = f"crrep-{self.suffix}"
        self.origin = self.base / "origin.git"
        self.work = self.base / "work"
        self.secrets = self.base / "secrets"
        self.ca = self.base / "caddy-root.crt"
        self.admin_token = secrets.token_hex(16)
        self.webhook_secret = secrets.token_hex(16)
        self.pg_password = secrets.token_hex(16)
        self.url = f"https://127.0.0.1:{self.https_port}"

    @property
    def compose_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "POSTGRES_"))}
        env.update(
            RECONCILE_DOMAIN=DOMAIN,
            RECONCILE_SOURCE=self.origin.as_uri(),
            RECONCILE_BRANCH="main",
            RECONCILE_VERSION=VERSION,
            RECONCILE_SECRETS_DIR=str(self.secrets),
            POSTGRES_IMAGE=POSTGRES_IMAGE,
            RECONCILE_HTTPS_BIND=f"127.0.0.1:{self.https_port}",
            RECONCILE_HTTP_BIND=f"127.0.0.1:{self.http_port}",
        )
        return env

    def compose(self, *args: str, timeout: float = 300) -> str:
        files = ["-f", str(COMPOSE_FILE), "-f", str(self.base / "test.yaml")]
        return run(
            "docker", "compose", "-p", self.project, *files, *args,
            env=self.compose_env, timeout=timeout,
        )  # fmt: skip

    def compose_bytes(self, *args: str, stdin: bytes | None = None) -> bytes:
        """``docker compose`` whose output is binary (a dump), not text."""
        files = ["-f", str(COMPOSE_FILE), "-f", str(self.base / "test.yaml")]
        done = subprocess.run(
            ["docker", "compose", "-p", self.project, *files, *args],
            env=self.compose_env, input=stdin, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return done.stdout

    def write_secrets(self) -> None:
        """As the file's header says: the server's three owned by its uid, the database's
        password by root (its entrypoint reads it as root), all 0400."""
        self.secrets.mkdir()
        url = f"postgresql://reconcile:{self.pg_password}@postgres:5432/reconcile\n"
        for name, value, uid in (
            ("admin_token", self.admin_token + "\n", SERVER_UID),
            ("webhook_secret", self.webhook_secret + "\n", SERVER_UID),
            ("database_url", url, SERVER_UID),
            ("postgres_password", self.pg_password, 0),
        ):
            path = self.secrets / name
            path.write_text(value)
            os.chown(path, uid, 0)
            path.chmod(0o400)

    def commit_and_push(self, files: dict[str, str]) -> str:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chown(path.parent, SERVER_UID, SERVER_UID)
            path.write_text(text)
            os.chown(path, SERVER_UID, SERVER_UID)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "change")
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def http(self) -> httpx.Client:
        """A client for Caddy on 127.0.0.1 that says ``localhost`` in the Host header and the
        TLS SNI, and checks the certificate against Caddy's own root."""
        return httpx.Client(
            base_url=self.url,
            headers={"Host": DOMAIN},
            verify=ssl.create_default_context(cafile=self.ca),
            timeout=15,
        )

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            return self.compose("logs", "--no-color", "--tail", "40", timeout=60)
        return "(no logs)"

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=120)


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request with SNI ``localhost`` (the URL's host is the address, 127.0.0.1)."""
    return http.request(method, path, extensions={"sni_hostname": DOMAIN}, **kwargs)


def push_hook(
    kit: Replicas, http: httpx.Client, sha: str, delivery: str
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(
        {"ref": "refs/heads/main", "before": "0" * 40, "after": sha, "deleted": False}
    ).encode()
    signature = hmac.new(kit.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
    r = call(
        http,
        "POST",
        "/hooks/github",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
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
    client = docker_client()
    for image in (IMAGE, POSTGRES_IMAGE, "caddy:2"):
        try:
            client.images.get(image)
        except Exception:
            pytest.fail(f"image {image} is missing: run `bash scripts/setup.sh --docker`")
    base = pathlib.Path(tempfile.mkdtemp(prefix="crrep-", dir="/tmp"))
    base.chmod(0o755)
    k = Replicas(base)
    try:
        yield k
    finally:
        with contextlib.suppress(Exception):
            k.down()
        client.close()
        shutil.rmtree(base, ignore_errors=True)


def test_two_replicas_on_postgres_behind_caddy_plan_pushes_and_survive_the_leader_killed(
    kit: Replicas,
) -> None:
    started = time.monotonic()
    # The desired-state repository: a bare one both replicas read (mounted), owned by their uid.
    for d in (kit.origin, kit.work):
        d.mkdir()
        os.chown(d, SERVER_UID, SERVER_UID)
    git(kit.origin, "init", "-q", "--bare", "-b", "main")
    git(kit.work, "init", "-q", "-b", "main")
    git(kit.work, "remote", "add", "origin", str(kit.origin))
    kit.commit_and_push(
        {"reconcile.yaml": f"namespace: {kit.namespace}\n", "deployments/.keep": ""}
    )
    kit.write_secrets()
    # only what a test needs on top of the production file: the repository, mounted
    mount = f"      - {kit.origin}:{kit.origin}:ro\n"
    (kit.base / "test.yaml").write_text(
        f"services:\n  server-a:\n    volumes:\n{mount}  server-b:\n    volumes:\n{mount}"
    )

    try:
        kit.compose(
            "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 60
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{kit.logs()}") from None
    up_seconds = time.monotonic() - started
    ports = published(kit.compose("ps", "--format", "json"))
    assert ports and all(p["URL"] == "127.0.0.1" for p in ports), ports
    assert {p["TargetPort"] for p in ports} == {80, 443}  # Caddy only: no replica, no database

    root = "/data/caddy/pki/authorities/local/root.crt"
    kit.ca.write_text(
        wait_for(lambda: kit.compose("exec", "-T", "caddy", "cat", root), 60, "Caddy's root CA")
    )
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

        try:
            wait_for(both_ready, 60, "both replicas ready through Caddy, one leading")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{kit.logs()}") from None
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
        try:
            plan = wait_for(lambda: planned(http, admin, sha1), PLAN_TIMEOUT, f"a plan at {sha1}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{kit.logs()}") from None
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

        try:
            wait_for(survivor_leads, TAKEOVER_TIMEOUT, "the surviving replica to lead")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{kit.logs()}") from None
        takeover = time.monotonic() - killed_at

        api = "name: api\nagent: host1\nimage: busybox:1.36\ntarget_port: 8080\n"
        sha2 = kit.commit_and_push({"deployments/api.yaml": api})
        heartbeat()
        status, answer = push_hook(kit, http, sha2, str(uuid.uuid4()))
        assert (status, answer["result"]) == (202, "accepted"), answer
        try:
            plan = wait_for(lambda: planned(http, admin, sha2), PLAN_TIMEOUT, f"a plan at {sha2}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{kit.logs()}") from None
        actions = {a["deployment"]: a["action"] for a in plan["actions"]}
        assert actions.get("api") == "install", plan
        assert "web" in actions, plan  # still desired (in flight, or planned again)

    kit.down()
    left = run(
        "docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={kit.project}"
    ) + run(
        "docker",
        "volume",
        "ls",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={kit.project}",
    )
    left += run(
        "docker",
        "network",
        "ls",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={kit.project}",
    )
    assert not left.strip(), f"left behind by `down -v`: {left}"
    print(
        f"\nreplicas kit: up --wait {up_seconds:.1f} s, takeover after the kill {takeover:.1f} s,"
        f" whole test {time.monotonic() - started:.1f} s"
    )
