"""Day-2 operations through the control plane: ``reconcile logs|restart|show|history|
rollback|credentials|backup NAME --server URL``.

The server cannot reach a host (agents poll it, never the reverse), so an operation is a
command like any other: ``POST /v1/operations`` queues a command of kind ``operation``
for the deployment's agent and wakes its long poll; the agent runs it
(:mod:`agent.operations`) and posts the answer as the result's payload;
``GET /v1/operations/{id}?wait=S`` waits for it.  Operation commands are stored with
``deployment = "op:<dpl id>"``, so they never supersede, or count as, the deployment's
own install/update commands.

Admin only.  A credentials reveal is an audit event (``credential.revealed``) recorded
when it is asked for, whether or not the agent then answers.  A rollback and a release
of a hold trigger a reconcile, so the plan (and ``/v1/deployments``) shows ``held`` or
git's spec again without waiting for the timer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.params import Depends

from reconciler.model.agentapi import Command
from reconciler.model.day2 import OperationRequest
from reconciler.model.plan import Action
from reconciler.server.notify import Notifier
from reconciler.server.store import CommandRow, Store
from reconciler.server.worker import Reconciler, Worker, iso

__all__ = ["OPERATION_PREFIX", "OPERATION_TTL", "operation_finished", "operations_router"]

OPERATION_TTL = 120.0  # seconds an agent has to pick an operation up; then it expires
OPERATION_PREFIX = "op:"  # the commands table's ``deployment`` for operation commands
MAX_WAIT = 30.0  # seconds one GET /v1/operations/{id} waits for the answer
POLL = 0.1  # seconds between looks at the store while waiting


def operations_router(
    *,
    store: Store,
    reconciler: Reconciler,
    worker: Worker,
    notifier: Notifier,
    admin: Sequence[Depends],
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    router = APIRouter(dependencies=list(admin))

    def create(request: OperationRequest) -> dict[str, Any]:
        rows = [r for r in store.deployments() if request.deployment in (r.id, r.name)]
        if not rows:
            known = ", ".join(sorted(r.name for r in store.deployments())) or "none"
            raise HTTPException(404, f"no deployment {request.deployment!r} (known: {known})")
        row = rows[0]
        now = clock()
        state = reconciler.agent_state(store.agent(row.agent), row.agent, now)
        if not state.online:
            raise HTTPException(
                409, f"agent {row.agent} of {row.name} is {state.reason or 'offline'}"
            )
        command_id = f"cmd_{secrets.token_hex(8)}"
        # The agent finds the deployment by its id: two namespaces may share a name.
        op = request.model_copy(update={"deployment": row.id})
        command = Command(
            id=command_id,
            kind="operation",
            action=Action(
                action="noop",
                deployment=row.name,
                id=row.id,
                agent=row.agent,
                reason=f"operation: {request.op}",
            ),
            operation=op,
            created=datetime.fromtimestamp(now, UTC),
            deadline=datetime.fromtimestamp(now + OPERATION_TTL, UTC),
        )
        if request.op == "credentials":
            store.record_event(
                "credential.revealed",
                {"deployment": row.name, "id": row.id, "agent": row.agent, "by": "admin"},
            )
        store.create_command(
            command_id=command_id,
            agent=row.agent,
            deployment=OPERATION_PREFIX + row.id,
            kind="operation",
            spec_hash=None,
            payload=command.model_dump(mode="json"),
            created=now,
            deadline=now + OPERATION_TTL,
            supersede=False,
        )
        store.record_event(
            "operation.created",
            {"command": command_id, "op": request.op, "deployment": row.name, "agent": row.agent},
        )
        notifier.notify(row.agent)
        return {"command": command_id, "agent": row.agent, "deployment": row.name}

    def view(row: CommandRow) -> dict[str, Any]:
        result = row.result or {}
        return {
            "command": row.id,
            "state": row.state,
            "created": iso(row.created),
            "finished": iso(row.finished),
            "message": result.get("message"),
            "result": result.get("payload"),
        }

    def lookup(command_id: str) -> CommandRow:
        row = store.command(command_id)
        if row is None or row.kind != "operation":
            raise HTTPException(404, f"no operation {command_id}")
        return row

    @router.post("/v1/operations", status_code=202)
    def post_operation(body: OperationRequest) -> dict[str, Any]:
        return create(body)

    @router.get("/v1/operations/{command_id}")
    async def get_operation(
        command_id: str, wait: float = Query(default=0.0, ge=0.0, le=3600.0)
    ) -> dict[str, Any]:
        deadline = time.monotonic() + min(wait, MAX_WAIT)
        while True:
            store.expire_commands(now=clock())
            row = await run_in_threadpool(lookup, command_id)
            if row.state != "pending" or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        answer = view(row)
        if row.result is not None and _op(row) == "credentials":
            # Secret values are handed out once and never kept in the server's database.
            await run_in_threadpool(store.forget_result_payload, row.id)
        return answer

    return router


def _op(row: CommandRow) -> str | None:
    operation = row.payload.get("operation")
    return str(operation.get("op")) if isinstance(operation, dict) else None


def operation_finished(row: CommandRow, ok: bool, worker: Worker) -> None:
    """After an agent's answer: a rollback or a released hold changes what the plan
    says about the deployment, so plan again now rather than at the next timer."""
    op = _op(row)
    if ok and op in ("rollback", "release"):
        worker.trigger(f"operation: {op} {row.payload.get('action', {}).get('deployment')}")
