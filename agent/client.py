"""The agent's side of the control-plane protocol (:mod:`reconciler.model.agentapi`).

A thin, synchronous ``httpx`` client: one method per endpoint, answers parsed into the
wire models, and every failure sorted by what the daemon should do next:

* :class:`Unavailable` -- the control plane is down, restarting or overloaded
  (connection errors, timeouts, 5xx): back off and retry, nothing is lost.
* :class:`Unauthorized` -- 401: the token or the credentials were refused.  For
  bootstrap that is final; for the other calls the server may have lost its store, so
  the daemon keeps its credentials and retries slowly.
* :class:`ProtocolError` -- any other refusal (4xx, an answer that is not the model):
  retrying the same request will not help.

Credentials (``agent_id`` + ``secret``) live in ``<state dir>/agent/credentials.json``,
0600, written atomically, so a restart never needs the one-time token again.
"""

from __future__ import annotations

import json
import pathlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.statedir import atomic_write
from reconciler.model.agentapi import (
    AgentReport,
    BootstrapRequest,
    BootstrapResponse,
    Command,
    CommandProgress,
    CommandResult,
    ProgressStep,
    ReportAck,
    ResultAck,
)
from reconciler.model.ids import COMMAND_ID_RE

__all__ = [
    "MAX_BUNDLE_BYTES",
    "AgentClient",
    "AgentClientError",
    "Backoff",
    "Credentials",
    "Polled",
    "ProtocolError",
    "RefusedCommand",
    "Unauthorized",
    "Unavailable",
    "credentials_path",
    "load_credentials",
    "save_credentials",
]

MAX_BUNDLE_BYTES = 256 * 1024 * 1024  # a build context is at most 100 MB; bundles add a little
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
LONG_POLL_SLACK = 15.0  # the server may hold a poll a little longer than asked
PROGRESS_TIMEOUT = 5.0  # seconds: progress is live-only, a late post is worth nothing
#: An idle pooled connection is dropped after this long: longer than a heartbeat interval
#: (httpx's default of 5 s opened a new connection for every 10 s heartbeat), and shorter
#: than the server's keep-alive (``reconcile serve``: at least 75 s), so the agent drops a
#: connection before the server closes it under a request in flight.
KEEPALIVE_EXPIRY = 60.0

_Model = TypeVar("_Model", bound=BaseModel)


class AgentClientError(Exception):
    """A call to the control plane failed; the subclass says what to do next."""


class Unavailable(AgentClientError):
    """Connection refused or reset, a timeout, or a 5xx: back off and retry."""


class Unauthorized(AgentClientError):
    """401: the bootstrap token, or the agent's credentials, were refused."""


class ProtocolError(AgentClientError):
    """A refusal that retrying will not fix: another 4xx, or an answer of the wrong shape."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RefusedCommand:
    """A command of the batch that is not a valid :class:`Command` (a deployment id that
    is a path, an unknown kind, a naive deadline, ...): never run.  ``id`` is None when
    the id itself is not a command id, so no result can be posted or journaled for it."""

    id: str | None
    shown_id: str  # for the log: the id as sent, shortened
    reason: str


@dataclass(frozen=True)
class Polled:
    """One long poll's answer, each command parsed on its own: one bad command must not
    hide the good ones, nor stop the agent."""

    commands: list[Command] = field(default_factory=list)
    refused: list[RefusedCommand] = field(default_factory=list)
    heartbeat_seconds: float = 10.0


class _RawBatch(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    commands: list[object] = Field(default_factory=list)
    heartbeat_seconds: float = 10.0


def _parse_command(item: object) -> Command | RefusedCommand:
    try:
        return Command.model_validate(item)
    except ValidationError as exc:
        raw = item.get("id") if isinstance(item, dict) else None
        cid = raw if isinstance(raw, str) and COMMAND_ID_RE.match(raw) else None
        reason = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}" for e in exc.errors()
        )
        return RefusedCommand(id=cid, shown_id=_short(repr(raw), 80), reason=_short(reason))


class Credentials(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    server: str
    agent_id: str
    secret: str


def credentials_path(state_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(state_dir) / "agent" / "credentials.json"


def load_credentials(state_dir: pathlib.Path) -> Credentials | None:
    """The stored credentials, or None when there are none yet.

    A file that exists but cannot be read is an error, not None: silently
    re-bootstrapping would need a fresh token and hide a broken disk.
    """
    path = credentials_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Credentials.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"{path} is not valid agent credentials: {exc}") from None


def save_credentials(state_dir: pathlib.Path, creds: Credentials) -> pathlib.Path:
    path = credentials_path(state_dir)
    atomic_write(path, (creds.model_dump_json(indent=2) + "\n").encode(), 0o600)
    return path


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): the n-th delay is
    uniform in ``[0, min(cap, base * 2**n)]``, so a fleet of agents that lost the same
    control plane does not come back in lock step.  :meth:`reset` after a success."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        return float(min(self.cap, self.base * (2**self.attempt)))

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempt = min(self.attempt + 1, 64)
        return self._rng(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail(response: httpx.Response) -> str:
    """The server's ``detail`` (FastAPI's error body), else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _short(response.text)
    if isinstance(body, dict) and "detail" in body:
        return _short(str(body["detail"]))
    return _short(response.text)


class AgentClient:
    """One control plane, as this agent sees it.  Safe to share between the poll loop and
    the heartbeat thread (``httpx.Client`` pools connections under a lock)."""

    def __init__(
        self,
        server: str,
        credentials: Credentials | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "reconcile-agent",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.server = server.rstrip("/")
        self.credentials = credentials
        self._http = httpx.Client(
            base_url=self.server,
            transport=transport,
            verify=verify,  # agent.tls.server_ssl_context: system CAs, a CA file, or a pin
            timeout=httpx.Timeout(CALL_TIMEOUT, connect=CONNECT_TIMEOUT),
            headers={"User-Agent": user_agent},
            follow_redirects=False,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
        )

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------ endpoints

    def bootstrap(self, token: str, hostname: str = "") -> BootstrapResponse:
        body = BootstrapRequest(token=token, hostname=hostname).model_dump(mode="json")
        response = self._send("POST", "/v1/agent/bootstrap", json=body, auth=False)
        return self._parse(response, BootstrapResponse)

    def commands(self, wait: float) -> Polled:
        timeout = httpx.Timeout(wait + LONG_POLL_SLACK, connect=CONNECT_TIMEOUT)
        response = self._send(
            "GET", "/v1/agent/commands", params={"wait": f"{wait:g}"}, timeout=timeout
        )
        batch = self._parse(response, _RawBatch, name="CommandBatch")
        polled = Polled(heartbeat_seconds=batch.heartbeat_seconds)
        for item in batch.commands:
            parsed = _parse_command(item)
            if isinstance(parsed, Command):
                polled.commands.append(parsed)
            else:
                polled.refused.append(parsed)
        return polled

    def post_result(self, command_id: str, result: CommandResult) -> ResultAck:
        response = self._send(
            "POST",
            f"/v1/agent/commands/{command_id}/result",
            json=result.model_dump(mode="json"),
        )
        return self._parse(response, ResultAck)

    def post_progress(self, command_id: str, steps: list[ProgressStep]) -> None:
        """Live steps of a running command (best effort: the caller drops them on error)."""
        body = CommandProgress(steps=steps).model_dump(mode="json")
        self._send(
            "POST",
            f"/v1/agent/commands/{command_id}/progress",
            json=body,
            timeout=httpx.Timeout(PROGRESS_TIMEOUT),
        )

    def report(self, report: AgentReport) -> ReportAck:
        # The host's figures travel as the report's own fields (see AgentReport); the last
        # error stays local (the server has the command's result)
        local_only: dict[str, Any] = {
            "total_memory_mb": True,
            "free_networks": True,
            "deployments": {"__all__": {"last_error"}},
        }
        body = report.model_dump(mode="json", exclude={"state": local_only})
        response = self._send("POST", "/v1/agent/report", json=body)
        return self._parse(response, ReportAck)

    def download_bundle(
        self, command_id: str, target: pathlib.Path, max_bytes: int = MAX_BUNDLE_BYTES
    ) -> int:
        """Stream the command's bundle (a tar) into ``target``; return its size.

        The size is counted while streaming, so a huge or endless answer costs at most
        ``max_bytes`` of disk before it is refused.
        """
        path = f"/v1/agent/commands/{command_id}/bundle"
        try:
            with self._http.stream("GET", path, headers=self._auth_headers()) as response:
                if response.status_code != 200:
                    response.read()
                    self._check(response)
                    raise ProtocolError(
                        f"GET {path}: unexpected HTTP {response.status_code}",
                        response.status_code,
                    )
                size = 0
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise ProtocolError(
                                f"the bundle of {command_id} is larger than "
                                f"{max_bytes // (1024 * 1024)} MiB; refused"
                            )
                        fh.write(chunk)
                return size
        except httpx.TransportError as exc:
            raise Unavailable(f"GET {path}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------ plumbing

    def _auth_headers(self) -> dict[str, str]:
        if self.credentials is None:
            raise Unauthorized("no agent credentials yet: bootstrap first")
        return {"X-Agent-Id": self.credentials.agent_id, "X-Agent-Secret": self.credentials.secret}

    def _send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        json: object = None,
        params: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        headers = self._auth_headers() if auth else {}
        try:
            response = self._http.request(
                method,
                path,
                headers=headers,
                json=json,
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        self._check(response)
        return response

    @staticmethod
    def _check(response: httpx.Response) -> None:
        request = response.request
        what = f"{request.method} {request.url.path}"
        status = response.status_code
        if status == 401:
            raise Unauthorized(f"{what}: HTTP 401: {_detail(response)}")
        if status >= 500 or status in (408, 429):
            raise Unavailable(f"{what}: HTTP {status}: {_detail(response)}")
        if status >= 400:
            raise ProtocolError(f"{what}: HTTP {status}: {_detail(response)}", status)

    @staticmethod
    def _parse(response: httpx.Response, model: type[_Model], name: str = "") -> _Model:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            request = response.request
            raise ProtocolError(
                f"{request.method} {request.url.path}: the answer is not a "
                f"{name or model.__name__}: {_short(str(exc))}",
                response.status_code,
            ) from None
