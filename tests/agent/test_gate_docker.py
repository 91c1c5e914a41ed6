"""The settle gate against real containers: the crash-loop verdict survives the faster gate.

The real loader, renderer, planner, executor, Docker Compose and Docker Engine, and the
real ``DockerWatch`` (so the gate ages containers by Docker's own ``StartedAt``).  The
Caddy proxy is one container per host, shared with every other run on this daemon, and
plays no part in the gate: a stand-in creates this test's own proxy network and probes the
app on its published port on 127.0.0.1.  Every name is unique to the run and removed.
"""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from agent.compose import WhalesComposeDriver
from agent.executor import ActionResult, Executor, ExecutorSettings, StepEvent
from agent.observe import observe_local
from agent.statedir import read_record
from agent.watch import DockerWatch
from reconciler.load.desired import load_desired
from reconciler.model.state import ActualState
from reconciler.plan import plan
from reconciler.render import RenderContext, render_all
from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port

pytestmark = pytest.mark.docker

# busybox httpd serving $BODY; `crash_after` makes it exit 1 that long after it starts,
# and restart: unless-stopped makes Docker start it again (the restart count rises).
COMPOSE = """\
services:
  app:
    image: busybox:1.36
    init: true
    restart: unless-stopped
    command: ["sh", "-c", "{script}"]
    ports: ["127.0.0.1:{port}:80"]
{healthcheck}"""
SERVE = "mkdir -p /www && echo {body} > /www/index.html && "
HEALTHCHECK = """\
    healthcheck:
      test: ["CMD", "true"]
      interval: 500ms
"""


class PortProxy:
    """The proxy network exists; a probe is a GET on the app's published port."""

    def __init__(self, client: Any, network: str, port: int) -> None:
        self.client, self.network, self.port = client, network, port

    def ensure(self) -> None:
        if not self.client.networks.list(names=[self.network]):
            self.client.networks.create(self.network, labels={"io.reconciler.test": "1"})

    def sync(self, routes: Mapping[str, str]) -> object:
        return None

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout).status_code
        except httpx.HTTPError:
            return 0


@dataclass
class GateHost:
    client: Any
    tmp: pathlib.Path
    namespace: str
    network: str
    port: int
    events: list[StepEvent]

    def write(self, body: str, *, crash_after: float | None = None, healthy: bool = False) -> None:
        script = SERVE.format(body=body)
        if crash_after is None:
            script += "exec httpd -f -p 80 -h /www"
        else:  # httpd in the background, then the main process fails
            script += f"httpd -p 80 -h /www && sleep {crash_after:g} && exit 1"
        repo = self.tmp / "repo"
        (repo / "deployments" / "web").mkdir(parents=True, exist_ok=True)
        (repo / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\nproxy: {{network: {self.network}, tls: off}}\n"
            "policy: {allow_host_ports: [web]}\n"
        )
        (repo / "deployments" / "web" / "deployment.yaml").write_text(
            "name: web\ncompose: ./compose.yaml\n"
        )
        (repo / "deployments" / "web" / "compose.yaml").write_text(
            COMPOSE.format(
                script=script, port=self.port, healthcheck=HEALTHCHECK if healthy else ""
            )
        )

    def apply(self, settings: ExecutorSettings) -> tuple[ActionResult, str]:
        """One apply of the repo as it is; the result and the deployment's id."""
        repo = self.tmp / "repo"
        desired = load_desired(str(repo), cache_dir=self.tmp / "cache")
        assert desired.state.ok, desired.state.problems
        state = self.tmp / "state"
        executor = Executor(
            state_dir=state,
            driver=WhalesComposeDriver(),
            proxy=PortProxy(self.client, self.network, self.port),
            watch=DockerWatch(),
            settings=settings,
            on_event=self.events.append,
            environ={},
        )
        actual = ActualState(source="local", agents={"local": observe_local(state_dir=state)})
        rendered = render_all(
            desired.state, RenderContext(config=desired.state.config), actual=actual
        )
        (result,) = executor.run(plan(rendered, actual, namespace=self.namespace), rendered, repo)
        return result, rendered[0].id

    def body(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=5).text.strip()

    def settled(self) -> list[str]:
        return [e.detail for e in self.events if e.step == "settled"]


@pytest.fixture
def gate_host(tmp_path: pathlib.Path) -> Iterator[GateHost]:
    client = docker_client()
    tag = secrets.token_hex(4)
    h = GateHost(client, tmp_path, f"gate-{tag}", f"gate-net-{tag}", free_port(), [])
    try:
        yield h
    finally:
        for c in client.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={h.namespace}"}
        ):
            c.remove(force=True)
        for net in client.networks.list(names=[h.network]):
            net.remove()
        for net in client.networks.list(filters={"label": "com.docker.compose.project"}):
            if net.attrs["Labels"].get("io.reconciler.namespace") == h.namespace:
                net.remove()


def test_a_crash_1_5_s_after_start_fails_and_rolls_back(gate_host: GateHost) -> None:
    """The production window (the default), a service without a healthcheck, a previous
    release serving: the update that dies 1.5 s after its start is failed and undone."""
    h = gate_host
    h.write("v1")
    first, dpl_id = h.apply(ExecutorSettings())
    assert first.ok, first.message
    assert h.body() == "v1"
    before = read_record(h.tmp / "state", dpl_id)
    assert before is not None

    h.write("v2", crash_after=1.5)
    h.events.clear()
    result, _ = h.apply(ExecutorSettings())
    assert not result.ok and result.rolled_back, result.message
    assert result.message.startswith("settle: service app is crash-looping"), result.message
    assert "previous release restored" in result.message
    assert h.settled() == []  # the gate never said settled
    assert h.body() == "v1"
    after = read_record(h.tmp / "state", dpl_id)
    assert after is not None
    assert (after.status, after.spec_hash) == ("running", before.spec_hash)


def test_a_healthy_service_is_settled_before_the_window(gate_host: GateHost) -> None:
    """A window of 10 minutes: only the healthcheck can settle it, and the gate says so."""
    h = gate_host
    h.write("v1", healthy=True)
    result, _ = h.apply(ExecutorSettings(settle_seconds=600.0, settle_timeout=60.0))
    assert result.ok, result.message
    (decision,) = h.settled()
    assert decision.endswith(": app: healthy"), decision
    assert h.body() == "v1"


def test_without_a_healthcheck_the_window_is_what_settles(gate_host: GateHost) -> None:
    h = gate_host
    h.write("v1")
    result, _ = h.apply(ExecutorSettings(settle_seconds=0.5))
    assert result.ok, result.message
    (decision,) = h.settled()
    assert decision.endswith(": app: window"), decision
