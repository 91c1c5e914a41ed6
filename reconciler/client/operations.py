"""Day-2 operations through the control plane: ``POST /v1/operations``, then
``GET /v1/operations/{id}?wait=S`` until the deployment's agent answers.

Used by ``reconcile logs|restart|rollback|... --server`` and by the MCP tools when
``RECONCILE_SERVER`` is set.  Errors are typed by what the caller does next:
:class:`~reconciler.model.day2.OperationError` (the server or the agent refused: the
message says why; nothing changed), :class:`ServerUnreachable` (no answer: retry later)
and :class:`ServerRefused` (an HTTP error status: a wrong token, an old server).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from reconciler.model.day2 import OperationError, OperationRequest, OperationResult
from reconciler.model.errors import ReconcilerError

__all__ = [
    "HTTP_TIMEOUT",
    "REMOTE_TIMEOUT",
    "WAIT",
    "ServerRefused",
    "ServerUnreachable",
    "run_operation",
]

REMOTE_TIMEOUT = 150.0  # seconds to wait for an agent's answer (its command TTL is 120)
HTTP_TIMEOUT = 45.0  # seconds per request: above WAIT plus the server's own MAX_WAIT slack
WAIT = 25  # seconds one GET asks the server to hold the answer (the server caps it at 30)


class ServerUnreachable(ReconcilerError):
    """Connection refused or reset, or a timeout: the control plane did not answer."""


class ServerRefused(ReconcilerError):
    """The control plane answered with an HTTP error (or no JSON object)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def run_operation(
    server: str,
    token: str,
    request: OperationRequest,
    *,
    timeout: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> OperationResult:
    """Ask the control plane to run ``request`` on the deployment's agent; its answer.

    Raises :class:`OperationError` when the server refuses the operation (unknown
    deployment, agent offline) or the agent does not answer within ``timeout``
    seconds (default :data:`REMOTE_TIMEOUT`).
    """
    timeout = REMOTE_TIMEOUT if timeout is None else timeout
    headers = {"Authorization": f"Bearer {token}"}
    base = server.rstrip("/")
    try:
        with httpx.Client(headers=headers, timeout=HTTP_TIMEOUT, transport=transport) as client:
            response = client.post(base + "/v1/operations", json=request.model_dump(mode="json"))
            if response.status_code in (404, 409):
                raise OperationError(str(_json(response).get("error")))
            command = str(answer(base + "/v1/operations", response)["command"])
            deadline = time.monotonic() + timeout
            while True:
                url = f"{base}/v1/operations/{command}"
                data = answer(url, client.get(url, params={"wait": WAIT}))
                if data["state"] != "pending":
                    break
                if time.monotonic() > deadline:
                    raise OperationError(f"the agent did not answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        raise ServerUnreachable(f"{base}: {exc}") from None
    if data["state"] == "expired":
        raise OperationError("the agent did not pick the operation up in time (is it online?)")
    if data.get("result") is None:
        # an agent from before day-2 operations refuses the kind with a message
        raise OperationError(str(data.get("message") or f"operation {data['state']}"))
    return OperationResult.model_validate(data["result"])


def answer(url: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; :class:`ServerRefused` otherwise."""
    data = _json(response)
    if response.status_code >= 300:
        message = data.get("error")
        raise ServerRefused(
            f"{url}: HTTP {response.status_code}: {message or response.text[:200]}",
            status=response.status_code,
        )
    if not data and not isinstance(_raw(response), dict):
        raise ServerRefused(f"{url}: unexpected answer", status=response.status_code)
    return data


def _raw(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    data = _raw(response)
    return data if isinstance(data, dict) else {}
