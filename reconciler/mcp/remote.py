"""The control plane's admin API, as the MCP tools need it (``RECONCILE_SERVER``)."""

from __future__ import annotations

from typing import Any

import httpx

from reconciler.mcp.errors import ToolFailure

__all__ = ["ServerClient"]

TIMEOUT = 15.0  # seconds; the admin endpoints answer from the store, a log tail may take longer


class ServerClient:
    """Each call returns the decoded JSON body or raises :class:`ToolFailure`."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = TIMEOUT) -> None:
        self.base_url = base_url
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body or {})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolFailure(
                "unavailable", f"the control plane {self.base_url} did not answer: {exc}"
            ) from None
        if response.status_code in (401, 403):
            raise ToolFailure(
                "unauthorized",
                f"the control plane refused the token (HTTP {response.status_code})",
                hint="set RECONCILE_TOKEN (or RECONCILE_ADMIN_TOKEN, or *_FILE) to the admin token",
            )
        detail = _detail(response)
        if response.status_code == 405 or (response.status_code == 404 and detail == "Not Found"):
            # FastAPI's own answer for a route it does not have, not the app's "no such ...".
            raise ToolFailure(
                "not_supported",
                f"{method} {path}: not supported by this server yet (HTTP {response.status_code})",
                hint="upgrade the control plane, or run the tool on the host itself",
            )
        if response.status_code == 404:
            raise ToolFailure("not_found", detail or f"{path}: not found")
        if response.status_code >= 400:
            code = "unavailable" if response.status_code >= 500 else "refused"
            raise ToolFailure(code, f"{method} {path}: HTTP {response.status_code}: {detail}")
        try:
            return response.json()
        except ValueError:
            raise ToolFailure(
                "unavailable", f"{method} {path}: the control plane sent no JSON"
            ) from None

    def close(self) -> None:
        self._client.close()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return str(body)[:300]
