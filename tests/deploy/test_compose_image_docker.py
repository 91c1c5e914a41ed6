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
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import free_port
from tests.deploy.kit import IMAGE, ROOT, ComposeKit, kit_dir, run

pytestmark = pytest.mark.docker

DEPLOY_TIMEOUT = 180.0


@dataclass
class Kit(ComposeKit):
    """``deploy/compose.yaml``'s project, and an agent container of the same image beside it."""

    compose_file = ROOT / "deploy" / "compose.yaml"
    prefix = "crpkg"

    proxy_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.agent_name = f"crpkg-agent-{self.suffix}"
        self.state = self.base / "state"
        self.url = f"https://localhost:{self.https_port}"
        self.domain = f"hello-{self.namespace}.localhost"

    def http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=10)

    def logs(self) -> str:
        out = [super().logs()]
        with contextlib.suppress(Exception):
            out.append(run("docker", "logs", "--tail", "60", self.agent_name))
        return "\n".join(out)


@pytest.fixture
def kit() -> Iterator[Kit]:
    with kit_dir("crpkg-", IMAGE, "caddy:2") as (client, base):
        k = Kit(base)
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
                k.down()
            for c in client.containers.list(
                all=True, filters={"label": f"io.reconciler.namespace={k.namespace}"}
            ):
                with contextlib.suppress(Exception):
                    c.remove(force=True, v=True)
            # the agent's proxy, only if it is the one serving this test's state dir
            proxy = {"label": "io.reconciler.role=proxy"}
            for c in client.containers.list(all=True, filters=proxy):
                mounts = [m.get("Source", "") for m in c.attrs.get("Mounts", [])]
                if any(m.startswith(str(k.state)) for m in mounts):
                    with contextlib.suppress(Exception):
                        c.remove(force=True)
            for net in client.networks.list(filters={"label": "com.docker.compose.network"}):
                if net.name.startswith("dpl_") and not net.containers:
                    with contextlib.suppress(Exception):
                        net.remove()
            left = [v.name for v in client.volumes.list() if v.name in agent_volumes]
            assert not left, f"the agent's anonymous volumes outlived it: {left}"


def test_compose_server_behind_caddy_and_an_agent_in_the_image_serve_a_pushed_app(
    kit: Kit,
) -> None:
    # The desired-state repository: a bare one the server reads, owned by its uid.
    kit.init_repo({"reconcile.yaml": f"namespace: {kit.namespace}\n"})
    kit.write_secrets()
    # only what a test needs on top of the production file: the repository, mounted
    (kit.base / "test.yaml").write_text(
        "services:\n  server:\n    volumes:\n"
        f"      - {kit.origin}:{kit.origin}:ro\n"
        "    command: [reconcile, serve, --host=0.0.0.0, --port=8800,"
        f" --source={kit.origin.as_uri()}, --branch=main, --heartbeat=2]\n"
    )

    kit.up(120)

    # Caddy's own CA signs `localhost`; the agent and this test trust it, nothing else.
    kit.fetch_ca()
    with kit.http() as http:
        kit.wait(lambda: http.get(kit.url + "/healthz").status_code == 200, 60, "TLS /healthz")
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
        kit.wait(creds.exists, 60, "the agent's credentials in its state dir")
        agent_id = json.loads(creds.read_text())["agent_id"]

        def online() -> bool:
            rows = http.get(kit.url + "/v1/agents", headers=admin).json()["agents"]
            return any(a["id"] == agent_id and a.get("online") for a in rows)

        kit.wait(online, 60, "the agent online")

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
        body, headers = kit.signed_push(sha)
        hook = http.post(kit.url + "/hooks/github", content=body, headers=headers)
        assert hook.status_code == 202, hook.text

        def serves() -> bool:
            r = httpx.get(
                f"http://127.0.0.1:{kit.proxy_port}/", headers={"Host": kit.domain}, timeout=3
            )
            return r.status_code == 200 and "shipped-in-a-container" in r.text

        kit.wait(serves, DEPLOY_TIMEOUT, "the app through the agent's proxy on 127.0.0.1")

    # the agent wrote the app's files where the host's daemon found them (same path)
    apps = list((kit.state / "apps").glob("dpl_*/compose.yaml"))
    assert len(apps) == 1
