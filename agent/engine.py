"""A few read-only Docker Engine API calls over the local UNIX socket, with the stdlib only.

Why: importing the Docker SDK costs more than a whole no-op reconcile (``docker`` pulls in
``requests`` and ``urllib3``: ~130 ms of a ~0.3 s budget, and the SDK negotiates the API
version with an extra ``GET /version`` per client).  The hot paths that only *read* -- the
daemon ping, the one sparse container list of ``observe_local``, the proxy's "already in
place?" inspects -- go through :class:`LocalEngine` instead; everything that changes the
host, and any ``DOCKER_HOST`` that is not a UNIX socket (tcp, ssh, TLS), keeps using the SDK.

Same requests as the SDK makes (unversioned paths mean the daemon's own API version, which
is what the SDK negotiates by default), same JSON back.  :class:`UnixHTTPConnection` is also
what ``agent.proxy`` uses for Caddy's admin socket.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "DEFAULT_SOCKET",
    "EngineError",
    "LocalEngine",
    "UnixHTTPConnection",
    "local_engine",
    "socket_path",
]

DEFAULT_SOCKET = "/var/run/docker.sock"


class EngineError(Exception):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a UNIX socket; ``connect_timeout`` bounds the connect alone."""

    def __init__(
        self, path: str, timeout: float | None = 10.0, connect_timeout: float | None = None
    ) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.socket_path)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def socket_path(environ: Mapping[str, str] | None = None) -> str | None:
    """The engine's UNIX socket as the SDK's ``from_env`` would pick it, or None when
    ``DOCKER_HOST`` names anything else (then only the SDK knows how to get there)."""
    host = (os.environ if environ is None else environ).get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    for scheme in ("unix://", "http+unix://"):
        if host.startswith(scheme):
            return host[len(scheme) :] or DEFAULT_SOCKET
    return None


class LocalEngine:
    """The read-only subset of ``docker.APIClient`` that the hot paths call, same names."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    @property
    def api(self) -> LocalEngine:  # like DockerClient.api, so callers need not care
        return self

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        conn = UnixHTTPConnection(self.path, timeout=self.timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        status, body = self._get(path, params)
        if status >= 400:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = body.decode(errors="replace")[:300]
            raise EngineError(status, message)
        return json.loads(body)

    def ping(self) -> bool:
        status, body = self._get("/_ping")
        return status == 200 and body.strip() == b"OK"

    def containers(
        self, all: bool = False, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /containers/json``, with the SDK's defaults (no size, no limit)."""
        params = {"all": "1" if all else "0", "limit": "-1", "size": "0", "trunc_cmd": "0"}
        if filters:
            params["filters"] = _filters(filters)
        result = self._json("/containers/json", params)
        return list(result) if isinstance(result, list) else []

    def info(self) -> dict[str, Any]:
        """``GET /info``: the daemon's host (``MemTotal``, ``NCPU``, ...)."""
        result = self._json("/info")
        return dict(result)

    def networks(self) -> list[dict[str, Any]]:
        """``GET /networks``: every network with its IPAM subnets (for the capacity)."""
        result = self._json("/networks")
        return list(result) if isinstance(result, list) else []

    def inspect_container(self, container: str) -> dict[str, Any]:
        result = self._json(f"/containers/{_quote(container)}/json")
        return dict(result)

    def inspect_image(self, image: str) -> dict[str, Any]:
        result = self._json(f"/images/{_quote(image)}/json")
        return dict(result)

    def events(self, filters: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """``GET /events``: decoded events as they come; blocks (no read timeout) like the
        SDK's ``events(decode=True)``.  Closing the generator closes the connection."""
        path = "/events"
        if filters:
            path += "?" + urllib.parse.urlencode({"filters": _filters(filters)})
        conn = UnixHTTPConnection(self.path, timeout=None, connect_timeout=self.timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status >= 400:
                raise EngineError(response.status, response.read().decode(errors="replace"))
            for line in response:
                if line.strip():
                    yield dict(json.loads(line))
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing to close: every call has its own connection (a UNIX connect is ~50 us)."""


def _filters(filters: Mapping[str, Any]) -> str:
    """The ``filters`` query parameter, as ``docker.utils.convert_filters`` encodes it."""
    out: dict[str, list[str]] = {}
    for key, value in filters.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return json.dumps(out)


def _quote(arg: str) -> str:
    return urllib.parse.quote_plus(arg, safe="/:")  # as docker.APIClient._url does


def local_engine(timeout: float = 10.0) -> LocalEngine | None:
    """A :class:`LocalEngine` for the socket ``DOCKER_HOST`` names, or None (use the SDK)."""
    path = socket_path()
    return None if path is None else LocalEngine(path, timeout)
