"""The control plane's HTTP API (FastAPI): agents, status/admin, webhooks, ops.

Agent endpoints follow :mod:`reconciler.model.agentapi` exactly.  The status and admin
endpoints take ``Authorization: Bearer $RECONCILE_ADMIN_TOKEN``; with no token set they
refuse (401) rather than guess who may ask.  Every error body is ``{"error": "..."}``;
a body that is not valid JSON (or not the expected shape) is a 400.

Build one with :func:`build_control_plane` (store + worker + app from a
:class:`ServerConfig`), or wire the parts yourself with :func:`create_app`.
"""

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import iterate_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from reconciler.model.agentapi import (
    BootstrapRequest,
    BootstrapResponse,
    CommandProgress,
    CommandResult,
    ProgressAck,
    ResultAck,
)
from reconciler.model.errors import ReconcilerError
from reconciler.model.ids import NAME_RE
from reconciler.model.redact import redact
from reconciler.model.state import AgentState
from reconciler.server.agentlane import (
    AgentEndpoints,
    AgentLane,
    ControlPlaneAPI,
    Refusal,
    invalid_request,
)
from reconciler.server.config import Role, ServerConfig, ServerSecrets
from reconciler.server.fields import MAX_TEXT, cap_result, clip
from reconciler.server.limits import BodyLimit, HeaderLimit
from reconciler.server.metrics import DeploymentSample, Metrics
from reconciler.server.notify import Notifier
from reconciler.server.operations import operation_finished, operations_router
from reconciler.server.outbound import Router, Sender, Target, result_fields
from reconciler.server.progress import FEED_POLL, FEED_POLL_NOTIFIED, ProgressHub
from reconciler.server.replicas import Leadership, Replicas, SharedNotifier, lease_name
from reconciler.server.store import AgentRow, Store, secure_dir
from reconciler.server.worker import Reconciler, Worker, iso

__all__ = ["ControlPlane", "build_control_plane", "create_app"]

log = logging.getLogger("reconciler.server")

#: SQLite's integers are 64-bit: a larger query parameter is a 400, never an OverflowError.
SQLITE_MAX_INT = 2**63 - 1


@dataclass
class ControlPlane:
    config: ServerConfig
    secrets: ServerSecrets
    store: Store
    reconciler: Reconciler
    worker: Worker
    notifier: Notifier
    metrics: Metrics
    app: FastAPI = field(repr=False)
    outbox: Sender | None = None  # events out; started with the worker
    progress: ProgressHub = field(default_factory=ProgressHub, repr=False)
    replicas: Replicas | None = None  # leadership and signals (several replicas)

    def start(self) -> None:
        """Everything running, as ``reconcile serve`` runs it: leadership first, so a
        follower's worker never starts a reconcile of its own."""
        if self.replicas is not None:
            replicas = self.replicas
            self.worker.follow(lambda: replicas.leading, replicas.forward)
            self.reconciler.may_issue = lambda: replicas.leading
            if self.outbox is not None:
                self.outbox.active = lambda: replicas.leading
                self.outbox.on_wake = replicas.outbox_written
                replicas.wake_outbox = self.outbox.wake_lanes
            replicas.wake_progress = self.progress.wake
            replicas.start()
        self.progress.start()
        self.worker.start()
        if self.outbox is not None:
            self.outbox.start()

    def stop(self) -> None:
        """The reverse; the lease is given up last, once no run of ours is left."""
        self.worker.stop(timeout=10)
        if self.outbox is not None:
            self.outbox.stop()
        if self.replicas is not None:
            self.replicas.stop()
        self.progress.close()


def build_control_plane(
    config: ServerConfig, secrets: ServerSecrets | None = None, *, store: Store | None = None
) -> ControlPlane:
    """Every part wired together; the worker is *not* started (``plane.worker.start()``)."""
    secrets = secrets or ServerSecrets()
    secure_dir(config.data_dir)
    store = store or Store(config.database_path())
    notifier = SharedNotifier(store)
    metrics = Metrics()
    # A shared database may have other replicas: the stream is fleet-wide through it
    # (reconciler.server.progress).  A server on its own data dir keeps it in memory.
    shared = config.database is not None
    progress = ProgressHub(
        feed=store if shared else None,
        poll=FEED_POLL if store.path is not None else FEED_POLL_NOTIFIED,
    )
    progress.on_drop = metrics.stream_dropped.inc
    reconciler = Reconciler(config, store, notifier=notifier, metrics=metrics, progress=progress)
    outbox = _events_out(config, store, reconciler)
    worker = Worker(reconciler.reconcile, poll_interval=config.poll_interval)

    def on_lead(leading: bool) -> None:
        if leading:  # level-triggered: finish whatever a dead leader left half done
            worker.trigger("leader: this replica took over")

    leadership = Leadership(
        store,
        lease_name(config.source, config.branch, config.path),
        ttl=config.lease_ttl,
        on_change=on_lead,
    )
    replicas = Replicas(store, leadership, notifier, worker.trigger)
    app = create_app(
        config,
        store,
        worker,
        reconciler=reconciler,
        secrets=secrets,
        metrics=metrics,
        notifier=notifier,
        progress=progress,
    )
    return ControlPlane(
        config,
        secrets,
        store,
        reconciler,
        worker,
        notifier,
        metrics,
        app,
        outbox=outbox,
        progress=progress,
        replicas=replicas,
    )


def _events_out(config: ServerConfig, store: Store, reconciler: Reconciler) -> Sender:
    """The outbox wired to the store: ``notify:`` targets and ``commit_status:``.

    Raises InvalidSpec when a secret they name is unset: refused at start, never found
    out at the first event.
    """
    from reconciler.server.forges import CommitStatuses

    targets = Target.from_config(config.notify)
    sender = Sender(store)
    store.route_events(Router(targets), sender.wake)
    sender.add_webhooks(targets)
    if config.commit_status is not None:
        reconciler.statuses = CommitStatuses(config.commit_status, store)
        sender.add_lane("forge", reconciler.statuses.prepare)
    now = reconciler.clock

    def announce_offline() -> None:
        store.announce_offline(cutoff=now() - config.offline_after, now=now())

    sender.every(config.heartbeat, announce_offline)
    return sender


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_mass_prune: bool = False


class DeployHookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=NAME_RE.pattern)]


def create_app(
    config: ServerConfig,
    store: Store,
    worker: Worker,
    *,
    reconciler: Reconciler,
    secrets: ServerSecrets,
    metrics: Metrics,
    notifier: Notifier,
    progress: ProgressHub | None = None,
    rng: random.Random | None = None,
) -> FastAPI:
    app = ControlPlaneAPI(
        title="compose-reconciler control plane",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    progress = progress or reconciler.progress
    jitter = rng or random.Random()  # noqa: S311 - spreading load, not a secret
    metrics.watch_deployments(lambda: deployment_samples())
    app.add_middleware(BodyLimit)
    app.add_middleware(HeaderLimit, limit=config.max_headers)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(Refusal)
    async def _on_error(request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": invalid_request(exc.errors())}, status_code=400)

    # -------------------------------------------------------------------- auth

    endpoints = AgentEndpoints(config, store, reconciler, worker, notifier, jitter)

    def agent_auth(
        x_agent_id: Annotated[str | None, Header()] = None,
        x_agent_secret: Annotated[str | None, Header()] = None,
    ) -> str:
        return endpoints.authenticate(x_agent_id, x_agent_secret)

    def bearer_role(authorization: str | None) -> Role:
        if not secrets.admin_token and not secrets.readonly_token:
            raise Refusal(
                401,
                "the status and admin API is disabled: set RECONCILE_ADMIN_TOKEN in the "
                "server's environment and send it as `Authorization: Bearer <token>`",
            )
        scheme, _, token = (authorization or "").partition(" ")
        role = secrets.role_of(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            raise Refusal(
                401,
                "missing or wrong bearer token (Authorization: Bearer $RECONCILE_ADMIN_TOKEN)",
                {"WWW-Authenticate": "Bearer"},
            )
        return role

    def admin_auth(authorization: Annotated[str | None, Header()] = None) -> None:
        if bearer_role(authorization) != "admin":
            raise Refusal(
                403,
                "the read-only token only reads the status: this endpoint needs "
                "RECONCILE_ADMIN_TOKEN",
            )

    def reader_auth(authorization: Annotated[str | None, Header()] = None) -> None:
        bearer_role(authorization)

    Agent = Annotated[str, Depends(agent_auth)]
    admin = [Depends(admin_auth)]
    reader = [Depends(reader_auth)]

    # ------------------------------------------------------------ agent: wire

    @app.post("/v1/agent/bootstrap", status_code=201)
    def bootstrap(body: BootstrapRequest) -> BootstrapResponse:
        hostname = clip(body.hostname, MAX_TEXT)
        created = store.bootstrap_agent(body.token, hostname)
        if created is None:
            raise Refusal(401, "bootstrap token unknown, already used or expired")
        agent_id, secret = created
        store.record_event("agent.bootstrap", {"agent": agent_id, "hostname": hostname})
        log.info(
            "agent %s bootstrapped (hostname %r)",
            agent_id,
            hostname,
            extra={"fields": {"event": "agent.bootstrap", "agent": agent_id, "hostname": hostname}},
        )
        return BootstrapResponse(
            agent_id=agent_id, secret=secret, heartbeat_seconds=config.heartbeat
        )

    # The heartbeat and the long poll: answered before FastAPI (reconciler.server.agentlane).
    app.lane = AgentLane(endpoints, max_headers=config.max_headers)

    @app.get("/v1/agent/commands/{command_id}/bundle")
    def bundle(command_id: str, agent: Agent) -> StreamingResponse:
        # From the store, one chunk at a time: any replica serves it, whichever built it.
        row = store.command(command_id)
        if row is None or row.agent != agent:
            raise Refusal(404, f"no command {command_id} for this agent")
        size = store.bundle_size(command_id) if row.payload.get("has_bundle") else None
        if size is None:
            raise Refusal(404, f"command {command_id} has no bundle (or it is finished)")
        return StreamingResponse(
            iterate_in_threadpool(store.read_bundle(command_id)),
            media_type="application/x-tar",
            headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{command_id}.tar"',
            },
        )

    @app.post("/v1/agent/commands/{command_id}/result")
    def result(command_id: str, body: CommandResult, agent: Agent) -> ResultAck:
        body = cap_result(body)
        result = body.model_dump(mode="json")
        row, duplicate = store.finish_command(
            command_id,
            agent,
            result,
            # written with the result, in its transaction: see reconciler.server.outbound
            event=lambda command: ("command.result", result_fields(command, result)),
        )
        if row is None:
            raise Refusal(404, f"no command {command_id} for this agent")
        if duplicate:
            return ResultAck(accepted=True, duplicate=True)
        if row.kind == "operation":
            operation_finished(row, body.ok and bool((body.payload or {}).get("ok")), worker)
        metrics.actions.labels(kind=row.kind, result="ok" if body.ok else "failed").inc()
        if reconciler.statuses is not None:
            reconciler.statuses.settle()
        name = row.payload.get("action", {}).get("deployment", row.deployment)
        log.log(
            logging.INFO if body.ok else logging.WARNING,
            "command %s result from %s: %s %s %s (%.1f s)%s: %r",
            command_id,
            agent,
            row.kind,
            name,
            "ok" if body.ok else "FAILED",
            body.seconds,
            "; rolled back" if body.rolled_back else "",
            body.message,
            extra={
                "fields": {
                    "event": "command.result",
                    "command": command_id,
                    "agent": agent,
                    "kind": row.kind,
                    "deployment": name,
                    "ok": body.ok,
                    "rolled_back": body.rolled_back,
                    "seconds": body.seconds,
                    "message": body.message,
                }
            },
        )
        progress.publish(
            {
                "type": "command.result",
                "command": command_id,
                "agent": agent,
                "kind": row.kind,
                "deployment": name,
                "deployment_id": row.deployment,
                "ok": body.ok,
                "rolled_back": body.rolled_back,
                "seconds": body.seconds,
                "message": body.message,
                "url": body.url,
            }
        )
        return ResultAck(accepted=True, duplicate=False)

    @app.post("/v1/agent/commands/{command_id}/progress", status_code=202)
    def command_progress(command_id: str, body: CommandProgress, agent: Agent) -> ProgressAck:
        row = store.command(command_id)
        if row is None or row.agent != agent:
            raise Refusal(404, f"no command {command_id} for this agent")
        name = row.payload.get("action", {}).get("deployment", row.deployment)
        for step in body.steps:
            log.debug("command %s: %s %s %r", command_id, name, step.step, step.detail)
        # One call for the post: with replicas, one write to the store for all its steps.
        progress.publish_many(
            [
                {
                    "type": "step",
                    "command": command_id,
                    "agent": agent,
                    "deployment": name,
                    "deployment_id": row.deployment,
                    "step": clip(step.step, MAX_TEXT),
                    "detail": clip(step.detail, MAX_TEXT),
                    "time": step.time.timestamp() if step.time else reconciler.clock(),
                }
                for step in body.steps
            ]
        )
        return ProgressAck(accepted=len(body.steps))

    # ----------------------------------------------------------- status/admin

    def agent_view(row: AgentRow, now: float) -> dict[str, Any]:
        state = reconciler.agent_state(row, row.id, now)
        running = (row.report or {}).get("running", [])
        return {
            "id": row.id,
            "hostname": row.hostname,
            "version": row.version,
            "online": state.online,
            "reason": state.reason,
            "created": iso(row.created),
            "last_seen": iso(row.last_seen),
            "deployments": len(state.deployments),
            "running": running,
            # what the agent reports about its size (None: an agent from before)
            "capacity": {"memory_mb": (row.report or {}).get("total_memory_mb")},
        }

    def deployment_views(*, commands: bool = True) -> list[dict[str, Any]]:
        """Every desired deployment with what its agent reports; ``commands=False`` leaves
        out each one's last command (a query per deployment, which /metrics does not use)."""
        now = reconciler.clock()
        rows = store.deployments()
        if not rows:  # a fleet with nothing desired: no agent's state needs reading
            return []
        agents = {a.id: a for a in store.agents()}
        states: dict[str, AgentState] = {}
        out = []
        for row in rows:
            agent_state = states.get(row.agent)
            if agent_state is None:  # each agent's state parsed once, and only if it is asked
                agent_state = reconciler.agent_state(agents.get(row.agent), row.agent, now)
                states[row.agent] = agent_state
            have = agent_state.deployments.get(row.id)
            last = store.last_command(row.id) if commands else None
            out.append(
                {
                    "name": row.name,
                    "id": row.id,
                    "agent": row.agent,
                    "agent_online": agent_state.online,
                    "agent_reason": agent_state.reason,
                    "desired_spec_hash": row.spec_hash,
                    "actual_spec_hash": have.spec_hash if have else None,
                    "status": ("held" if have.held else have.status) if have else "not installed",
                    # rolled back by hand (reconcile rollback): what, when, and at which spec
                    "held": have.held.model_dump(mode="json") if have and have.held else None,
                    "in_sync": bool(have and have.spec_hash == row.spec_hash),
                    "containers": [c.model_dump(mode="json") for c in have.containers]
                    if have
                    else [],
                    "plan_action": row.last_action,
                    "plan_reason": row.last_reason,
                    "last_command": None
                    if last is None
                    else {
                        "id": last.id,
                        "kind": last.kind,
                        "state": last.state,
                        "created": iso(last.created),
                        "finished": iso(last.finished),
                        "result": last.result,
                        # the repository commit the command was planned from
                        "revision": last.payload.get("revision"),
                    },
                    "url": row.url,
                    # what the agent reports first (its record knows the .onion address),
                    # else the URL the plan or the last result gave
                    "urls": list(have.urls) if have and have.urls else [u for u in [row.url] if u],
                    "onion_address": have.onion_address if have else None,
                    "updated": iso(row.updated),
                }
            )
        return out

    def deployment_samples() -> list[DeploymentSample]:
        namespaces = {d.id: d.namespace for d in reconciler.rendered()}
        return [
            DeploymentSample(
                name=v["name"],
                namespace=namespaces.get(v["id"], ""),
                agent=v["agent"],
                status=v["status"],
                health=health_of(v["status"], v["containers"]),
                in_sync=v["in_sync"],
            )
            for v in deployment_views(commands=False)
        ]

    @app.get("/v1/deployments", dependencies=reader)
    def list_deployments() -> dict[str, Any]:
        found = store.last_plan()
        return {
            "revision": found[1] if found else None,
            "planned": iso(found[2]) if found else None,
            "deployments": deployment_views(),
        }

    @app.get("/v1/deployments/{key}", dependencies=reader)
    def one_deployment(key: str) -> dict[str, Any]:
        for view in deployment_views():
            if key in (view["id"], view["name"]):
                return view
        raise Refusal(404, f"no deployment {key!r} (by id or name)")

    @app.get("/v1/plan", dependencies=reader)
    def last_plan() -> Response:
        found = store.last_plan()
        if found is None:
            raise Refusal(404, "no plan yet: the first reconcile has not finished")
        from reconciler.plan import Plan
        from reconciler.plan.report import json_plan

        return Response(
            json_plan(Plan.model_validate(found[0])) + "\n",
            media_type="application/json",
            headers={
                "X-Reconcile-Revision": found[1] or "",
                "X-Reconcile-Planned": iso(found[2]) or "",
            },
        )

    @app.get("/v1/actual-state", dependencies=reader)
    def actual_state() -> Response:
        return Response(
            reconciler.actual_state().model_dump_json(indent=2), media_type="application/json"
        )

    @app.get("/v1/events", dependencies=reader)
    def events(
        after: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
        limit: Annotated[int, Query(ge=1, le=SQLITE_MAX_INT)] = 100,
        audit: bool | None = None,
    ) -> dict[str, Any]:
        rows = store.events(after=after, limit=min(limit, 1000), audit=audit)
        return {
            "events": [
                {"id": e.id, "time": iso(e.time), "kind": e.kind, "fields": e.fields} for e in rows
            ],
            "last": rows[-1].id if rows else after,
        }

    @app.get("/v1/events/stream", dependencies=admin)
    async def event_stream(
        deployment: Annotated[str | None, Query(max_length=200)] = None,
        command: Annotated[str | None, Query(max_length=200)] = None,
        after: Annotated[int | None, Query(ge=0, le=SQLITE_MAX_INT)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: ``command.sent``, ``step`` and ``command.result``, live.

        Filtered by deployment (name or id) and/or command id.  ``after`` (or the
        ``Last-Event-ID`` a reconnecting EventSource sends) replays the buffered events
        after that id; a command filter alone replays that command's buffered events.
        """
        if after is None and last_event_id and last_event_id.strip().isdigit():
            after = min(int(last_event_id.strip()), SQLITE_MAX_INT)
        sub = progress.subscribe(deployment=deployment, command=command, after=after)
        metrics.stream_clients.inc()

        async def body() -> Any:
            try:
                async for chunk in progress.stream(sub):
                    yield chunk
            finally:
                metrics.stream_clients.dec()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/agents", dependencies=reader)
    def agents() -> dict[str, Any]:
        now = reconciler.clock()
        return {"agents": [agent_view(a, now) for a in store.agents()]}

    @app.delete("/v1/agents/{agent_id}", dependencies=admin)
    def remove_agent(agent_id: str) -> dict[str, Any]:
        if not store.remove_agent(agent_id):
            raise Refusal(404, f"no agent {agent_id!r}")
        store.record_event("agent.removed", {"agent": agent_id, "by": "api"})
        log.info(
            "agent %s removed (by the API)",
            agent_id,
            extra={"fields": {"event": "agent.removed", "agent": agent_id}},
        )
        worker.trigger(f"api: agent {agent_id} removed")
        return {"removed": agent_id}

    @app.post("/v1/reconcile", dependencies=admin, status_code=202)
    def trigger(body: ReconcileRequest | None = None) -> dict[str, Any]:
        if body is not None and body.allow_mass_prune:
            # One run's approval, like `reconcile apply --allow-mass-prune`: the guard is
            # back for the run after.
            reconciler.allow_mass_prune_once()
            store.record_event("mass_prune.allowed", {"by": "api"})
        worker.trigger("api: POST /v1/reconcile")
        return {"queued": True, "allow_mass_prune": bool(body and body.allow_mass_prune)}

    @app.post("/v1/agent-tokens", dependencies=admin, status_code=201)
    def agent_token() -> dict[str, Any]:
        token = store.create_bootstrap_token()
        store.record_event("agent.token", {"by": "api"})
        return {"token": token, "expires_in": 600}

    @app.post("/v1/deploy-hooks", dependencies=admin, status_code=201)
    def deploy_hook(body: DeployHookRequest) -> dict[str, Any]:
        token = store.create_deploy_hook(body.name)
        store.record_event("deploy_hook.created", {"name": body.name})
        return {"name": body.name, "token": token, "path": f"/hooks/deploy/{token}"}

    # ------------------------------------------------------ agent: installation

    dist_dir = config.dist_dir if config.dist_dir is not None else config.data_dir / "dist"

    @app.get("/install.sh")
    def install_script() -> PlainTextResponse:
        """Public, like the wheel: neither holds a secret (the token is on the command line)."""
        from reconciler import __version__
        from reconciler.server.install import find_agent_wheel, render_install_script

        wheel = find_agent_wheel(dist_dir, __version__)
        if wheel is None:  # the path goes to the log, not to an unauthenticated caller
            log.warning("GET /install.sh: no compose_reconciler-*.whl in %s", dist_dir)
            raise Refusal(
                503,
                "the control plane has no agent wheel to hand out: put "
                "compose_reconciler-*.whl in its dist dir (reconcile serve --dist-dir DIR, "
                "default <data dir>/dist)",
            )
        return PlainTextResponse(render_install_script(wheel), media_type="text/x-shellscript")

    @app.get("/dist/{name}")
    def dist_file(name: str) -> FileResponse:
        from reconciler.server.install import WHEEL_RE

        path = dist_dir / name
        if not WHEEL_RE.match(name) or not path.is_file():
            raise Refusal(404, f"no such file in the dist dir: {name[:100]}")
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    # --------------------------------------------------------------------- ops

    app.include_router(
        operations_router(
            store=store, reconciler=reconciler, worker=worker, notifier=notifier, admin=admin
        )
    )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        failing: list[str] = []
        if not store.ping():
            failing.append("store: the database does not answer")
        leading = worker.leading
        if not worker.alive:
            failing.append("worker: the reconcile thread is not running")
        elif leading and not worker.started_first:
            # A follower never starts one: it serves agents and forwards triggers.
            failing.append("worker: the first reconcile has not started")
        if failing:
            return JSONResponse(
                {"status": "not ready", "error": "; ".join(failing), "leader": leading}, 503
            )
        # Ready even when the last reconcile failed (an unreachable remote is retried;
        # restarting the server would not help): it is reported, not gated on.
        last = reconciler.last_outcome
        if last is None and worker.last_error:
            last_reconcile: dict[str, Any] | None = {
                "ok": False,
                "revision": None,
                "error": redact(worker.last_error),
            }
        else:
            last_reconcile = (
                None
                if last is None
                else {
                    "ok": last.ok,
                    "revision": last.revision,
                    "error": redact(last.error or worker.last_error or "")
                    or (f"{len(last.problems)} validation errors" if last.problems else None),
                }
            )
        return JSONResponse(
            {
                "status": "ready",
                "reconciles": worker.runs,
                "last_reconcile": last_reconcile,
                # several replicas: whether this one runs the reconciles (and which it is)
                "leader": leading,
                "replica": store.replica_id,
            }
        )

    @app.get("/metrics")
    def metrics_endpoint() -> PlainTextResponse:
        now = reconciler.clock()
        metrics.agents_online.set(store.count_seen_since(now - config.offline_after))
        metrics.leader.set(int(worker.leading))
        from prometheus_client import CONTENT_TYPE_LATEST

        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _include_hooks(app, config, store, worker, reconciler, secrets, metrics)
    _include_ui(app, store, secrets, deployment_views, agents)
    return app


def _include_ui(
    app: FastAPI,
    store: Store,
    secrets: ServerSecrets,
    deployment_views: Callable[[], list[dict[str, Any]]],
    agents: Callable[[], dict[str, Any]],
) -> None:
    """The dashboard (``reconciler.server.ui``), fed by the status API's own views."""
    from reconciler.server.ui import UiDeps, mount_ui

    def last_plan() -> tuple[dict[str, Any], str | None, str | None] | None:
        found = store.last_plan()
        return None if found is None else (found[0], found[1], iso(found[2]))

    def events(limit: int) -> list[tuple[int, str | None, str, dict[str, Any]]]:
        return [(e.id, iso(e.time), e.kind, e.fields) for e in store.newest_events(limit)]

    deps = UiDeps(
        secrets=secrets,
        deployments=deployment_views,
        agents=lambda: list(agents()["agents"]),
        last_plan=last_plan,
        events=events,
    )
    mount_ui(app, deps)


def _include_hooks(
    app: FastAPI,
    config: ServerConfig,
    store: Store,
    worker: Worker,
    reconciler: Reconciler,
    secrets: ServerSecrets,
    metrics: Metrics,
) -> None:
    """The webhook receivers (``reconciler.server.hooks``), fed by this store and worker."""
    from reconciler.server import hooks

    def trigger(reason: str) -> None:
        worker.trigger(reason if reason.startswith("webhook") else f"webhook: {reason}")

    def record_event(kind: str, fields: dict[str, object]) -> None:
        store.record_event(kind, dict(fields))

    try:
        branch = reconciler.source_spec()[1] or config.branch or "main"
    except ReconcilerError:
        branch = config.branch or "main"

    def on_push(provider: str, payload: Mapping[str, object], sha: str | None) -> None:
        if reconciler.statuses is not None:
            from reconciler.server.forges import push_repository

            reconciler.statuses.pushed(push_repository(provider, payload), sha)

    settings = hooks.HookSettings(
        branch=branch,
        webhook_secret=secrets.webhook_secret,
        gitlab_token=secrets.gitlab_token,
    )
    deps = hooks.HookDeps(
        settings=settings,
        deliveries=store,
        deploy_hooks=store,
        trigger=trigger,
        record_event=record_event,
        observe=metrics.observe_webhook,
        observe_suppressed=metrics.observe_suppressed,
        on_push=on_push,
    )
    app.include_router(hooks.webhook_router(deps))


def health_of(status: str, containers: list[dict[str, Any]]) -> str:
    """One word for a deployment's containers: ``unknown`` when nothing runs, else the
    worst of them (a container that stopped, restarts or fails its check is unhealthy)."""
    if status != "running" or not containers:
        return "unknown"
    worst = "healthy"
    for c in containers:
        exited_ok = c.get("one_shot") and c.get("status") == "exited" and c.get("exit_code") == 0
        if c.get("health") == "unhealthy" or (c.get("status") != "running" and not exited_ok):
            return "unhealthy"
        if c.get("health") == "starting":
            worst = "starting"
    return worst
