"""The dashboard's routes: login and logout, the page, its live sections and their SSE feed.

Who may look: a session made by the login form (the admin token or, when one is set,
the read-only token), or the same token as ``Authorization: Bearer`` for scripts.  The
page itself answers an unauthenticated browser with a redirect to the login form; the
fragment and the stream answer 401 (a script or ``EventSource`` cannot follow a login).
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.responses import StreamingResponse

from reconciler.server.config import Role, ServerSecrets
from reconciler.server.ui import views
from reconciler.server.ui.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL,
    Sessions,
    same_token,
    set_cookie,
)

__all__ = ["UiDeps", "mount_ui"]

HERE = pathlib.Path(__file__).parent
MAX_FORM_BYTES = 8 * 1024  # a token and a CSRF value; anything larger is not our form
MAX_STREAMS = 16  # open /ui/stream connections; each polls the store once a second
POLL_SECONDS = 1.0  # how often a stream looks for a change
HEARTBEAT_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream
STREAM_SECONDS = 300.0  # a stream then ends; EventSource reconnects (after RETRY_MS)
RETRY_MS = 2000
ERROR_CHARS = 160  # of a last error shown at once; the rest behind a disclosure
EVENTS_READ = 200  # newest events the page reads (it shows views.EVENTS_SHOWN)

#: Every page: no framing, no inline script or style, nothing from another origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, kw_only=True)
class UiDeps:
    """What the dashboard reads, as the status API's own functions (one source of views)."""

    secrets: ServerSecrets
    deployments: Callable[[], list[dict[str, Any]]]
    agents: Callable[[], list[dict[str, Any]]]
    #: (plan as JSON, revision, planned at ISO) or None before the first reconcile
    last_plan: Callable[[], tuple[Mapping[str, Any], str | None, str | None] | None]
    #: the newest ``limit`` events, oldest first, as (id, ISO time, kind, fields)
    events: Callable[[int], Sequence[tuple[int, str | None, str, Mapping[str, Any]]]]
    sessions: Sessions = field(default_factory=Sessions)


@dataclass
class _Snapshot:
    deployments: list[dict[str, Any]]
    agents: list[dict[str, Any]]
    plan: tuple[Mapping[str, Any], str | None, str | None] | None
    events: Sequence[tuple[int, str | None, str, Mapping[str, Any]]]

    @property
    def version(self) -> str:
        last_event = self.events[-1][0] if self.events else 0
        planned = self.plan[2] if self.plan else None
        return views.fingerprint(self.deployments, self.agents, planned, last_event)


class _StreamSlots:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._open >= self._limit:
                return False
            self._open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._open -= 1


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # repository and host text is data, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = lambda v: (v or "")[: views.SHORT_HASH]
    env.filters["clock"] = views.clock
    env.globals["error_chars"] = ERROR_CHARS
    return env


def mount_ui(app: FastAPI, deps: UiDeps) -> None:
    """``/ui`` (the page, login, logout, the live fragment and stream) and ``/ui/static``."""
    app.include_router(_router(deps))
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")


def _router(deps: UiDeps) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)
    env = _templates()
    sessions = deps.sessions
    slots = _StreamSlots(MAX_STREAMS)

    def role_of(request: Request) -> Role | None:
        header = request.headers.get("authorization")
        if header is not None:  # a script: its token decides, a cookie does not rescue it
            scheme, _, token = header.partition(" ")
            return deps.secrets.role_of(token.strip()) if scheme.lower() == "bearer" else None
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        return session.role if session else None

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def snapshot() -> _Snapshot:
        return _Snapshot(
            deployments=deps.deployments(),
            agents=deps.agents(),
            plan=deps.last_plan(),
            events=deps.events(EVENTS_READ),
        )

    def sections(snap: _Snapshot) -> dict[str, Any]:
        now = datetime.now(UTC)
        plan = snap.plan
        return {
            "version": snap.version,
            "agents": views.agent_rows(snap.agents),
            "deployments": views.deployment_rows(snap.deployments),
            "plan": views.plan_lines(plan[0] if plan else None),
            "plan_summary": dict((plan[0].get("summary") or {}) if plan else {}),
            "revision": plan[1] if plan else None,
            "planned": plan[2] if plan else None,
            "events": views.event_lines(snap.events),
            "age": lambda iso: views.age(iso, now),
        }

    shared: list[tuple[float, str]] = []  # (when, version): one store read per poll
    shared_lock = threading.Lock()

    def current_version() -> str:
        """The page's version, read at most once per poll for all open streams together:
        16 streams cost the store what one does."""
        with shared_lock:
            if shared and time.monotonic() - shared[0][0] < POLL_SECONDS:
                return shared[0][1]
            version = snapshot().version
            shared[:] = [(time.monotonic(), version)]
            return version

    def unauthorized() -> JSONResponse:
        return JSONResponse(
            {"error": "sign in at /ui/login, or send Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", **SECURITY_HEADERS},
        )

    @router.get("")
    def dashboard(request: Request) -> Response:
        role = role_of(request)
        if role is None:
            return RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        return page(
            "dashboard.html",
            role=role,
            # logout only for a session (a bearer script has nothing to sign out of)
            csrf=session.csrf if session and "authorization" not in request.headers else None,
            **sections(snapshot()),
        )

    @router.get("/live")
    def live(request: Request) -> Response:
        """The page's sections alone, for the script to swap in after a stream update."""
        if role_of(request) is None:
            return unauthorized()
        return page("live.html", **sections(snapshot()))

    @router.get("/stream")
    async def stream(request: Request, since: str = "") -> Response:
        if role_of(request) is None:
            return unauthorized()
        if not slots.take():
            return JSONResponse(
                {"error": f"too many open dashboard streams (at most {MAX_STREAMS})"},
                status_code=503,
                headers={"Retry-After": "10"},
            )
        return _Stream(
            _feed(since, lambda: run_in_threadpool(current_version)),
            on_close=slots.give_back,
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
        )

    @router.get("/login")
    def login_form(request: Request) -> Response:
        if role_of(request) is not None:
            return RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
        return login_page(request)

    def login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
        import secrets

        csrf = secrets.token_urlsafe(32)
        response = page(
            "login.html",
            status=status,
            csrf=csrf,
            error=error,
            readonly=bool(deps.secrets.readonly_token),
            disabled=not (deps.secrets.admin_token or deps.secrets.readonly_token),
        )
        set_cookie(response, request, CSRF_COOKIE, csrf, max_age=3600)
        return response

    async def form(request: Request) -> dict[str, str] | None:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return None
        try:
            parsed = parse_qs(body.decode("ascii"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return None
        return {k: v[0] for k, v in parsed.items()}

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        if fields is None:
            return login_page(request, "The form could not be read; try again.", 400)
        if not same_token(fields.get("csrf"), request.cookies.get(CSRF_COOKIE)):
            return login_page(request, "The form expired; sign in again.", 400)
        role = deps.secrets.role_of(fields.get("token", "").strip())
        if role is None:
            return login_page(request, "Wrong token.", 401)
        sid, _ = sessions.create(role)
        response = RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
        set_cookie(response, request, SESSION_COOKIE, sid, max_age=int(SESSION_TTL))
        response.delete_cookie(CSRF_COOKIE, path="/ui")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        fields = await form(request) or {}
        sid = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(sid)
        if session is None:
            return RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        if not same_token(fields.get("csrf"), session.csrf):
            return JSONResponse({"error": "logout form without its CSRF token"}, 400)
        sessions.drop(sid)
        response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    return router


class _Stream(StreamingResponse):
    """Gives its stream's place back however the response ends: finished, cut by the
    client, or cancelled at server stop, even before the feed's first line."""

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _feed(
    since: str,
    version: Callable[[], Any],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[str]:
    """``update`` (data: the new version) whenever the page would change, a comment as
    a heartbeat, and an end after ``STREAM_SECONDS`` so no stream outlives its welcome.

    On server stop, uvicorn cancels the stream after its graceful timeout (5 s in
    ``reconcile serve``); the browser then finds the server gone and keeps the last page.
    """
    yield f"retry: {RETRY_MS}\n: connected\n\n"
    last, started = since, clock()
    beat = started
    while clock() - started < STREAM_SECONDS:
        current = await version()
        if current != last:
            yield f"event: update\ndata: {current}\n\n"
            last, beat = current, clock()
        elif clock() - beat >= HEARTBEAT_SECONDS:
            yield ": keep-alive\n\n"
            beat = clock()
        await asyncio.sleep(POLL_SECONDS)
