"""Dashboard sessions: a token typed once into the login form, then a cookie.

The cookie holds a random session id, nothing else; the session (its role, its CSRF
token, its expiry) lives in this process's memory, so a restart signs everyone out and
a stolen cookie dies with the session.  The login form is protected by a double-submit
CSRF cookie (there is no session yet to tie it to); the logout form by the session's own
CSRF token.  Cookies are HttpOnly and SameSite=Strict, and Secure when the request came
over https (directly or through a proxy that says so in ``X-Forwarded-Proto``).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from reconciler.server.config import Role

__all__ = [
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "Session",
    "Sessions",
    "is_https",
    "same_token",
    "set_cookie",
]

SESSION_COOKIE = "reconcile_session"
CSRF_COOKIE = "reconcile_login_csrf"
SESSION_TTL = 8 * 3600.0  # seconds a session lasts from its login (a working day)
MAX_SESSIONS = 1000  # the oldest is dropped beyond this: a login flood cannot grow memory


@dataclass(frozen=True)
class Session:
    role: Role
    csrf: str
    expires: float


class Sessions:
    """Sessions by id, oldest first; thread-safe (handlers run in a thread pool)."""

    def __init__(self, *, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.time):
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Session] = OrderedDict()

    def create(self, role: Role) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(
            role=role, csrf=secrets.token_urlsafe(32), expires=self._clock() + self._ttl
        )
        with self._lock:
            self._items[sid] = session
            while len(self._items) > MAX_SESSIONS:
                self._items.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._items.get(sid)
            if session is not None and session.expires <= self._clock():
                del self._items[sid]
                return None
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._items.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._items)


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two non-empty strings."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )
