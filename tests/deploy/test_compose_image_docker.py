"""The production kit, for real: ``deploy/compose.yaml`` (the control plane from the image
``compose-reconciler:<version>`` behind Caddy's TLS) comes up on the real Docker host,
published on 127.0.0.1 only under a unique project name and ports; an agent running in the
same image (host network, the Docker socket and its state dir mounted at the same path)
joins it over HTTPS; a push to the local bare repository the server reads (mounted into
its container) and a signed webhook make the agent deploy the catalog ``hello`` app, which
then answers through the agent's proxy on 127.0.0.1.

Needs the image (``bash scripts/setup.sh --docker`` builds it); fails, never skips,
without Docker.  Everything it makes is named after one random suffix and removed.
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
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port
from tests.deploy.kit import IMAGE, ROOT, SERVER_UID, VERSION, git, published, run, wait_for

pytestmark = pytest.mark.docker

DEPLOY_TIMEOUT = 180.0


@dataclass
class Kit:
    base: pathlib.Path
    suffix: str
    https_port: int
    proxy_port: int

    def __post_init__(self) -> None:
        self.project = f"crpkg-{self.suffix}"
        self.agent_name = f"crpkg-agent-{self.suffix}"
        self.namespace = f"crpkg-{self.suffix}"
        self.origin = self.base / "origin.git"
        self.work = self.base / "work"
        self.state = self.base / "state"
        self.secrets = self.base / "secrets"
        self.ca = self.base / "caddy-root.crt"
        self.admin_token = secrets.token_hex(16)
        self.webhook_secret = secrets.token_hex(16)
        self.url = f"https://localhost:{self.https_port}"
        self.domain = f"hello-{self.namespace}.localhost"

    @property
    def compose_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        env.update(
            RECONCILE_DOMAIN="localhost",
            RECONCILE_SOURCE=self.origin.as_uri(),
            RECONCILE_BRANCH="main",
            RECONCILE_VERSION=VERSION,
            RECONCILE_SECRETS_DIR=str(self.secrets),
            RECONCILE_HTTPS_BIND=f"127.0.0.1:{self.https_port}",
            RECONCILE_HTTP_BIND=f"127.0.0.1:{free_port()}",
        )
        return env

    def compose(self, *args: str) -> str:
        files = ["-f", str(ROOT / "deploy" / "compose.yaml"), "-f", str(self.base / "test.yaml")]
        return run("docker", "compose", "-p", self.project, *files, *args, env=self.compose_env)

    def http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=10)

    def commit_and_push(self, files: dict[str, str]) -> str:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.chown(path, SERVER_UID, SERVER_UID)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "change")
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def logs(self) -> str:
        out = []
        with contextlib.suppress(Exception):
            out.append(self.compose("logs", "--no-color", "--tail", "60"))
        with contextlib.suppress(Exception):
            out.append(run("docker", "logs", "--tail", "60", self.agent_name))
        return "\n".join(out)


@pytest.fixture
def kit() -> Iterator[Kit]:
    client = docker_client()
    try:
        client.images.get(IMAGE)
        client.images.get("caddy:2")
    except Exception:
        pytest.fail(f"image {IMAGE} or caddy:2 is missing: run `bash scripts/setup.sh --docker`")
    # short: the agent's proxy admin socket lives under the state dir (sun_path is 108 bytes)
    base = pathlib.Path(tempfile.mkdtemp(prefix="crpkg-", dir="/tmp"))
    base.chmod(0o755)
    k = Kit(base, secrets.token_hex(4), free_port(), free_port())
    agent_volumes: list[str] = []
    try:
        yield k
    finally:
        with contextlib.suppress(Exception):
            agent = client.containers.get(k.agent_name)
            agent_volumes = [m["Name"] for m in agent.attrs["Mounts"] if m["Type"] == "volume"]
            # v: the image's VOLUME /data is an anonymous volume that outlives a plain remove
            agent.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            k.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")
        for c in client.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={k.namespace}"}
        ):
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
        # the agent's proxy, only if it is the one serving this test's state dir
        for c in client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
            mounts = [m.get("Source", "") for m in c.attrs.get("Mounts", [])]
            if any(m.startswith(str(k.state)) for m in mounts):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
        for net in client.networks.list(filters={"label": "com.docker.compose.network"}):
            if net.name.startswith("dpl_") and not net.containers:
                with contextlib.suppress(Exception):
                    net.remove()
        left = [v.name for v in client.volumes.list() if v.name in agent_volumes]
        client.close()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the agent's anonymous volumes outlived it: {left}"


def test_compose_server_behind_caddy_and_an_agent_in_the_image_serve_a_pushed_app(
    kit: Kit,
) -> None:
    # The desired-state repository: a bare one the server reads, owned by its uid.
    for d in (kit.origin, kit.work):
        d.mkdir()
        os.chown(d, SERVER_UID, SERVER_UID)
    git(kit.origin, "init", "-q", "--bare", "-b", "main")
    git(kit.work, "init", "-q", "-b", "main")
    git(kit.work, "remote", "add", "origin", str(kit.origin))
    kit.commit_and_push({"reconcile.yaml": f"namespace: {kit.namespace}\n"})

    kit.secrets.mkdir()
    for name, value in (("admin_token", kit.admin_token), ("webhook_secret", kit.webhook_secret)):
        path = kit.secrets / name
        path.write_text(value + "\n")
        os.chown(path, SERVER_UID, SERVER_UID)
        path.chmod(0o400)
    # only what a test needs on top of the production file: the repository, mounted
    (kit.base / "test.yaml").write_text(
        "services:\n  server:\n    volumes:\n"
        f"      - {kit.origin}:{kit.origin}:ro\n"
        "    command: [reconcile, serve, --host=0.0.0.0, --port=8800,"
        f" --source={kit.origin.as_uri()}, --branch=main, --heartbeat=2]\n"
    )

    kit.compose("up", "-d", "--wait", "--wait-timeout", "120")
    ports = published(kit.compose("ps", "--format", "json"))
    assert ports and all(p["URL"] == "127.0.0.1" for p in ports), ports

    # Caddy's own CA signs `localhost`; the agent and this test trust it, nothing else.
    root = "/data/caddy/pki/authorities/local/root.crt"
    cert = wait_for(
        lambda: kit.compose("exec", "-T", "caddy", "cat", root), 60, "Caddy's local root CA"
    )
    kit.ca.write_text(cert)
    with kit.http() as http:
        wait_for(lambda: http.get(kit.url + "/healthz").status_code == 200, 60, "TLS /healthz")
        # the same port without TLS is Caddy refusing plain HTTP, never the server
        plain = httpx.get(f"http://127.0.0.1:{kit.https_port}/healthz", timeout=5)
        assert plain.status_code == 400
        admin = {"Authorization": f"Bearer {kit.admin_token}"}
        assert http.get(kit.url + "/v1/agents", headers=admin).status_code == 200

        # A one-time token, from the CLI in the server's container; then the agent, in the image.
        out = kit.compose("exec", "-T", "server", "reconcile", "agent", "token", "--data-dir=/data")
        token = out.strip().splitlines()[-1].strip()
        kit.state.mkdir(mode=0o700)
        run(
            "docker", "run", "-d", "--name", kit.agent_name,
            "--label", f"io.reconciler.test={kit.project}",
            "--network", "host", "--user", "0",
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-v", f"{kit.state}:{kit.state}",
            "-v", f"{kit.ca}:/etc/compose-reconciler/ca.crt:ro",
            "-e", "SSL_CERT_FILE=/etc/compose-reconciler/ca.crt",
            "-e", f"RECONCILE_STATE_DIR={kit.state}",
            "-e", f"RECONCILE_AGENT_TOKEN={token}",
            IMAGE,
            "reconcile-agent", "--server", kit.url,
            "--poll-wait", "10", "--settle", "1", "--repair-interval", "2",
        )  # fmt: skip
        creds = kit.state / "agent" / "credentials.json"
        try:
            wait_for(creds.exists, 60, "the agent's credentials in its state dir")
        except AssertionError:
            raise AssertionError(kit.logs()) from None
        agent_id = json.loads(creds.read_text())["agent_id"]

        def online() -> bool:
            rows = http.get(kit.url + "/v1/agents", headers=admin).json()["agents"]
            return any(a["id"] == agent_id and a.get("online") for a in rows)

        wait_for(online, 60, "the agent online")

        # Push the app, announce it with a signed webhook through Caddy.
        sha = kit.commit_and_push(
            {
                "reconcile.yaml": (
                    f"namespace: {kit.namespace}\nagents:\n  host1: {agent_id}\n"
                    f"base_domain: localhost\nproxy:\n  http_port: {kit.proxy_port}\n"
                    "  tls: off\n"
                ),
                "deployments/hello.yaml": (
                    f"name: hello\nagent: host1\napp: hello\ndomain: {kit.domain}\n"
                    "vars:\n  greeting: shipped-in-a-container\n"
                ),
            }
        )
        body = json.dumps(
            {"ref": "refs/heads/main", "before": "0" * 40, "after": sha, "deleted": False}
        ).encode()
        signature = hmac.new(kit.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        hook = http.post(
            kit.url + "/hooks/github",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": f"sha256={signature}",
            },
        )
        assert hook.status_code == 202, hook.text

        def serves() -> bool:
            r = httpx.get(
                f"http://127.0.0.1:{kit.proxy_port}/", headers={"Host": kit.domain}, timeout=3
            )
            return r.status_code == 200 and "shipped-in-a-container" in r.text

        try:
            wait_for(serves, DEPLOY_TIMEOUT, "the app through the agent's proxy on 127.0.0.1")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{kit.logs()}") from None

    # the agent wrote the app's files where the host's daemon found them (same path)
    apps = list((kit.state / "apps").glob("dpl_*/compose.yaml"))
    assert len(apps) == 1
