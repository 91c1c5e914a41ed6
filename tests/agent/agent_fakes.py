"""Fakes for the agent daemon's unit tests: a control plane behind ``httpx.MockTransport``
that speaks reconciler.model.agentapi, and the executor's proxy/watch seams.

The fake control plane keeps the protocol's promises the daemon relies on: bootstrap
tokens are single-use, every unfinished command is handed out on every poll, and the
result endpoint is idempotent on the command id.  Failures are injected per request.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib
import secrets
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from reconciler.load.repo import load_repository
from reconciler.model.agentapi import (
    BootstrapResponse,
    Command,
    CommandBatch,
    CommandResult,
    ReportAck,
    ResultAck,
)
from reconciler.model.deployment import ProxyConfig
from reconciler.model.state import ActualState, AgentState, ContainerState
from reconciler.plan import plan
from reconciler.render import RenderContext, RenderedDeployment, render_all

AGENT_ID = "agt_00000000000000a1"
SERVER = "http://control.test"


@dataclass
class FakeControlPlane:
    tokens: set[str] = field(default_factory=lambda: {"tok-1"})
    agents: dict[str, str] = field(default_factory=dict)  # agent id -> secret
    commands: dict[str, Command] = field(default_factory=dict)  # unfinished, by id
    # Commands as raw JSON objects, for the ones a Command model would refuse to hold.
    raw: dict[str, dict[str, object]] = field(default_factory=dict)
    keep_listing: bool = False  # a server that lists commands after their result came
    bundles: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, CommandResult] = field(default_factory=dict)
    result_posts: list[str] = field(default_factory=list)  # every POST, duplicates too
    reports: list[dict[str, object]] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    # Injected failures, consumed one per matching request: "connect", a status code.
    fail: dict[str, list[str | int]] = field(default_factory=dict)  # path prefix -> queue
    refuse_secrets: bool = False
    heartbeat_seconds: float = 10.0
    requests: list[str] = field(default_factory=list)
    # A server that acknowledges state digests (issue 17); None: one from before.
    held_digest: str | None = None
    acks_digest: bool = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def register(self, agent_id: str = AGENT_ID, secret: str = "s3cret") -> None:
        self.agents[agent_id] = secret

    def add(self, command: Command, bundle: bytes | None = None) -> None:
        self.commands[command.id] = command
        if bundle is not None:
            self.bundles[command.id] = bundle

    def _injected(self, request: httpx.Request) -> httpx.Response | None:
        for prefix, queue in self.fail.items():
            if request.url.path.startswith(prefix) and queue:
                what = queue.pop(0)
                if what == "connect":
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(int(what), json={"detail": "injected"})
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        injected = self._injected(request)
        if injected is not None:
            return injected
        if path == "/v1/agent/bootstrap":
            token = json.loads(request.content)["token"]
            if token not in self.tokens:
                return httpx.Response(401, json={"detail": "unknown, used or expired token"})
            self.tokens.discard(token)
            agent_id = f"agt_{secrets.token_hex(8)}"
            secret = secrets.token_urlsafe(16)
            self.agents[agent_id] = secret
            body = BootstrapResponse(agent_id=agent_id, secret=secret, heartbeat_seconds=5)
            return httpx.Response(201, content=body.model_dump_json())
        agent = request.headers.get("X-Agent-Id", "")
        if self.refuse_secrets or self.agents.get(agent) != request.headers.get("X-Agent-Secret"):
            return httpx.Response(401, json={"detail": "unknown agent or wrong secret"})
        if path == "/v1/agent/commands":
            self.polls.append(float(request.url.params.get("wait", "0")))
            batch = CommandBatch(
                commands=list(self.commands.values()), heartbeat_seconds=self.heartbeat_seconds
            ).model_dump(mode="json")
            batch["commands"] = [*self.raw.values(), *batch["commands"]]
            return httpx.Response(200, content=json.dumps(batch))
        if path == "/v1/agent/report":
            report = json.loads(request.content)
            self.reports.append(report)
            if self.acks_digest and report.get("state") is not None:
                self.held_digest = report.get("state_digest")
            ack = ReportAck(
                heartbeat_seconds=self.heartbeat_seconds,
                state_digest=self.held_digest if self.acks_digest else None,
            )
            return httpx.Response(200, content=ack.model_dump_json())
        parts = path.split("/")
        if path.startswith("/v1/agent/commands/") and parts[-1] == "bundle":
            if parts[-2] not in self.bundles:
                return httpx.Response(404, json={"detail": "no bundle"})
            return httpx.Response(
                200, content=self.bundles[parts[-2]], headers={"content-type": "application/x-tar"}
            )
        if path.startswith("/v1/agent/commands/") and parts[-1] == "result":
            cid = parts[-2]
            self.result_posts.append(cid)
            if cid in self.results:
                return httpx.Response(200, content=ResultAck(duplicate=True).model_dump_json())
            self.results[cid] = CommandResult.model_validate_json(request.content)
            if not self.keep_listing:
                self.commands.pop(cid, None)
                self.raw.pop(cid, None)
            return httpx.Response(200, content=ResultAck().model_dump_json())
        return httpx.Response(404, json={"detail": "Not Found"})


# ------------------------------------------------------------------ executor seams


@dataclass
class FakeProxy:
    routes: dict[str, str] = field(default_factory=dict)
    ensured: int = 0

    def ensure(self) -> None:
        self.ensured += 1

    def sync(self, routes: Mapping[str, str]) -> object:
        self.routes = dict(routes)
        return None

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        return 200 if domain in self.routes else 404


@dataclass
class FakeWatch:
    def containers(self, deployment_id: str) -> list[ContainerState]:
        return [ContainerState(service="app", name=f"{deployment_id}-app")]

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        return {"app": "sha256:" + "a" * 64}


# ------------------------------------------------------------------ commands


def repo_files(namespace: str = "t", http_port: int = 18080) -> dict[str, str]:
    """A desired-state repo with two deployments on AGENT_ID: an image, and a compose
    manifest whose files (``public/``) travel in the command's bundle."""
    return {
        "reconcile.yaml": f"namespace: {namespace}\nagents: {{host1: {AGENT_ID}}}\n"
        f"proxy: {{tls: off, http_port: {http_port}}}\n",
        "deployments/web.yaml": "name: web\nagent: host1\nimage: busybox:1.36\n",
        "deployments/blog/deployment.yaml": (
            "name: blog\nagent: host1\ncompose: ./compose.yaml\n"
            "routes:\n  - upstream: '{deployment_id}-app:80'\n    match_var: domain\n"
        ),
        "deployments/blog/compose.yaml": (
            "services:\n"
            "  app:\n"
            "    image: busybox:1.36\n"
            "    container_name: ${DEPLOYMENT_ID}-app\n"
            "    init: true\n"
            "    restart: unless-stopped\n"
            "    command: [httpd, -f, -p, '80', -h, /seed]\n"
            "    volumes: ['./public:/seed:ro']\n"
            "    healthcheck: {test: [CMD, 'true'], interval: 2s}\n"
            "    networks: [default, impreza-proxy]\n"
            "networks:\n"
            "  impreza-proxy: {external: true}\n"
        ),
        "deployments/blog/public/index.html": "<h1>hello from the bundle</h1>\n",
    }


REPO = repo_files()


def rendered_repo(root: pathlib.Path) -> list[RenderedDeployment]:
    state = load_repository(root)
    assert state.ok, state.problems
    return render_all(state, RenderContext(config=state.config))


def make_command(
    rendered: RenderedDeployment,
    *,
    cid: str | None = None,
    kind: str = "install",
    bundle: bool = False,
    deadline: dt.datetime | None = None,
    settle: float | None = 0.0,
    purge: bool = False,
    proxy: ProxyConfig | None = None,
) -> Command:
    """A command as the control plane would send it for ``rendered``."""
    empty = ActualState(source="empty", agents={AGENT_ID: AgentState(agent=AGENT_ID)})
    actions = {a.id: a for a in plan([rendered], empty, namespace=rendered.namespace).actions}
    action = actions[rendered.id]
    if kind != action.action:
        action = action.model_copy(update={"action": kind})
    now = dt.datetime.now(dt.UTC)
    return Command(
        id=cid or f"cmd_{secrets.token_hex(6)}",
        kind=kind,  # type: ignore[arg-type]
        action=action,
        deployment=None if kind == "uninstall" else rendered.model_dump(mode="json"),
        has_bundle=bundle,
        purge=purge,
        proxy=proxy or ProxyConfig(http_port=18080, tls="off"),
        settle_seconds=settle,
        created=now,
        deadline=deadline or now + dt.timedelta(minutes=30),
    )


def tar_of(root: pathlib.Path, *subdirs: str) -> bytes:
    """A tar of ``subdirs`` of ``root``, names relative to ``root`` (as the server sends)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sub in subdirs:
            tar.add(root / sub, arcname=sub)
    return buf.getvalue()


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()
