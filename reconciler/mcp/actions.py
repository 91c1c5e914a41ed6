"""Host actions (logs, restart, rollback): the seam the day-2 commands will fill.

Each function takes a deployment id and does the job either through the control plane
(when ``RECONCILE_SERVER`` is set) or, for the host the MCP server runs on, directly with
``docker compose -p <dpl_id>`` -- the project name the agent always pins, so no compose
file is needed.  This module never imports ``agent`` (see the import contracts); when the
project's own ``reconcile logs/restart/rollback`` functions exist, point these at them.
"""

from __future__ import annotations

import subprocess
from typing import Any

from reconciler.mcp.errors import ToolFailure
from reconciler.mcp.remote import ServerClient
from reconciler.model.redact import redact

__all__ = ["get_logs", "restart", "rollback"]

DOCKER_TIMEOUT = 120.0  # seconds; a restart waits for each container's stop timeout
MAX_TAIL = 5000  # lines; the tool's schema says the same
LABEL = "io.reconciler.deployment"


def get_logs(
    dpl_id: str, *, tail: int, service: str | None, server: ServerClient | None
) -> dict[str, Any]:
    tail = max(1, min(tail, MAX_TAIL))
    if server is not None:
        params: dict[str, Any] = {"tail": tail}
        if service:
            params["service"] = service
        data = server.get(f"/v1/deployments/{dpl_id}/logs", params)
        return {"deployment": dpl_id, "via": "server", **_as_dict(data)}
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
        body = {"service": service} if service else {}
        data = server.post(f"/v1/deployments/{dpl_id}/restart", body)
        return {"deployment": dpl_id, "via": "server", **_as_dict(data)}
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


def rollback(dpl_id: str, *, server: ServerClient | None) -> dict[str, Any]:
    if server is None:
        raise ToolFailure(
            "not_supported",
            "rollback is not supported on the local host yet",
            hint="roll back through git: revert the commit that changed the deployment",
        )
    data = server.post(f"/v1/deployments/{dpl_id}/rollback")
    return {"deployment": dpl_id, "via": "server", **_as_dict(data)}


def _as_dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {"result": data}


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
