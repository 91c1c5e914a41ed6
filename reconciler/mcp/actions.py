"""Host actions (logs, restart, rollback) for the MCP tools.

Each function takes a deployment id and does the job either through the control plane
(when ``RECONCILE_SERVER`` is set: the day-2 operations of ``reconcile logs|restart|
rollback --server``, through the same client, :mod:`reconciler.client.operations`) or on
the host the MCP server runs on.  This module never imports ``agent`` (see the import
contracts), so locally logs and restart use ``docker compose -p <dpl_id>`` -- the project
name the agent always pins, so no compose file is needed -- and a rollback, which needs
the agent's executor and release records, runs ``reconcile rollback`` as a child process
of this interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from reconciler.client.operations import ServerRefused, ServerUnreachable, run_operation
from reconciler.mcp.errors import ToolFailure
from reconciler.mcp.remote import ServerClient
from reconciler.model.day2 import OperationError, OperationKind, OperationRequest
from reconciler.model.redact import redact

__all__ = ["get_logs", "restart", "rollback"]

DOCKER_TIMEOUT = 120.0  # seconds; a restart waits for each container's stop timeout
ROLLBACK_TIMEOUT = 600.0  # seconds; a local rollback pulls, starts and settles the release
MAX_TAIL = 5000  # lines; the tool's schema says the same
LABEL = "io.reconciler.deployment"


def get_logs(
    dpl_id: str, *, tail: int, service: str | None, server: ServerClient | None
) -> dict[str, Any]:
    tail = max(1, min(tail, MAX_TAIL))
    if server is not None:
        chunk = _remote(server, "logs", dpl_id, service=service, tail=tail)
        text = str(chunk.get("text") or "")
        return {
            "deployment": dpl_id,
            "via": "server",
            "lines": [redact(line) for line in text.splitlines()[-tail:]],
            "until": chunk.get("until"),
        }
    _require_local(dpl_id)
    args = ["logs", "--no-color", "--timestamps", "--tail", str(tail)]
    if service:
        args.append(service)
    out = _compose(dpl_id, *args)
    lines = out.splitlines()
    return {
        "deployment": dpl_id,
        "via": "local docker",
        "lines": [redact(line) for line in lines[-tail:]],
    }


def restart(dpl_id: str, *, service: str | None, server: ServerClient | None) -> dict[str, Any]:
    if server is not None:
        if service:
            raise ToolFailure(
                "not_supported",
                "through the control plane a restart covers all of a deployment's services",
                hint="leave service out to restart them all",
            )
        done = _remote(server, "restart", dpl_id)
        return {
            "deployment": dpl_id,
            "via": "server",
            "restarted": list(done.get("restarted") or []),
            "message": done.get("message") or f"restarted {dpl_id}",
        }
    before = _require_local(dpl_id)
    args = ["restart", *([service] if service else [])]
    _compose(dpl_id, *args)
    return {
        "deployment": dpl_id,
        "via": "local docker",
        "restarted": sorted(before),
        "note": "restarted in place: the desired state did not change, so the next "
        "reconcile leaves it running",
    }


def rollback(
    dpl_id: str, *, to: str | None, release: bool, server: ServerClient | None
) -> dict[str, Any]:
    """Run an earlier release and hold it there, or (``release``) lift the hold."""
    if release and to is not None:
        raise ToolFailure("invalid", "release lifts the hold; it takes no `to`")
    if server is not None:
        if release:
            done = _remote(server, "release", dpl_id)
            return {
                "deployment": dpl_id,
                "via": "server",
                "released": True,
                "status": done.get("status"),
                "message": "hold lifted; the next reconcile applies what git says",
            }
        done = _remote(server, "rollback", dpl_id, to=to)
        return {"deployment": dpl_id, "via": "server", **done}
    args = ["rollback", dpl_id, *(["--release"] if release else []), *(["--to", to] if to else [])]
    message = _reconcile_cli(*args)
    return {
        "deployment": dpl_id,
        "via": "local",
        **({"released": True} if release else {}),
        "message": message,
    }


def _remote(server: ServerClient, op: OperationKind, dpl_id: str, **fields: Any) -> dict[str, Any]:
    """The payload of a day-2 operation the deployment's agent ran; ToolFailure otherwise."""
    if not server.token:
        raise ToolFailure(
            "unauthorized",
            "day-2 operations through the control plane need its admin token",
            hint="set RECONCILE_TOKEN (or RECONCILE_ADMIN_TOKEN, or *_FILE) to the admin token",
        )
    request = OperationRequest(op=op, deployment=dpl_id, **fields)
    try:
        result = run_operation(server.base_url, server.token, request)
    except ServerUnreachable as exc:
        raise ToolFailure("unavailable", f"the control plane did not answer: {exc}") from None
    except ServerRefused as exc:
        if exc.status in (401, 403):
            raise ToolFailure(
                "unauthorized",
                f"the control plane refused the token (HTTP {exc.status})",
                hint="set RECONCILE_TOKEN (or RECONCILE_ADMIN_TOKEN, or *_FILE) to the admin token",
            ) from None
        if exc.status in (404, 405):
            raise ToolFailure(
                "not_supported",
                f"{op}: not supported by this server yet ({exc})",
                hint="upgrade the control plane, or run the tool on the host itself",
            ) from None
        code = "unavailable" if exc.status >= 500 else "refused"
        raise ToolFailure(code, str(exc)) from None
    except OperationError as exc:
        raise ToolFailure("refused", f"{op}: {exc}") from None
    if not result.ok:
        raise ToolFailure("refused", result.error or f"{op} failed")
    return dict(result.payload or {})


def _reconcile_cli(*args: str) -> str:
    """Run ``reconcile ARGS`` with this interpreter (the agent's code, outside this
    process's imports); its stderr, the CLI's message to people."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=ROLLBACK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ToolFailure(
            "unavailable", f"reconcile {args[0]} did not finish in {ROLLBACK_TIMEOUT:.0f}s"
        ) from None
    message = " ".join(done.stderr.split())[-500:]
    if done.returncode != 0:
        raise ToolFailure(
            "refused",
            f"reconcile {args[0]} failed: {message}",
            hint="`reconcile history NAME` lists the releases kept on this host",
        )
    return message


def _require_local(dpl_id: str) -> list[str]:
    """The names of the deployment's containers here; ``not_found`` when it runs none."""
    out = _docker("ps", "--all", "--filter", f"label={LABEL}={dpl_id}", "--format", "{{.Names}}")
    names = [n for n in out.splitlines() if n.strip()]
    if not names:
        raise ToolFailure(
            "not_found",
            f"deployment {dpl_id} has no container on this host",
            hint="apply it first (`reconcile apply`), or set RECONCILE_SERVER to reach its agent",
        )
    return names


def _compose(dpl_id: str, *args: str) -> str:
    return _docker("compose", "-p", dpl_id, *args)


def _docker(*args: str) -> str:
    try:
        done = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=DOCKER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise ToolFailure("unavailable", "the docker command is not installed here") from None
    except subprocess.TimeoutExpired:
        raise ToolFailure(
            "unavailable", f"docker {args[0]} did not finish in {DOCKER_TIMEOUT:.0f}s"
        ) from None
    if done.returncode != 0:
        raise ToolFailure(
            "unavailable", f"docker {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}"
        )
    return done.stdout
