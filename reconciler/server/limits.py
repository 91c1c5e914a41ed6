"""A cap on request bodies for every endpoint but the webhook receivers (they cap their
own, at 25 MB, and answer in their own words).

Without it FastAPI reads a body whole before the handler runs: one unauthenticated
``POST /v1/agent/bootstrap`` with a 2 GB body would take 2 GB of the server's memory.
Agents' reports are the largest legitimate bodies (a few KB per deployment), far below
the cap.  A declared ``Content-Length`` over the cap is refused before anything is read;
a body without one (chunked) is counted as it arrives and cut off at the cap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

__all__ = [
    "MAX_API_BODY",
    "MAX_HEADERS",
    "BodyLimit",
    "HeaderLimit",
    "body_over",
    "declared_over",
    "headers_over",
]

MAX_API_BODY = 16 * 1024 * 1024
MAX_HEADERS = 100

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_over(limit: int) -> str:
    return f"request body over {limit} bytes"


def headers_over(limit: int) -> str:
    return f"more than {limit} request headers"


def declared_over(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """The request declares a ``Content-Length`` over ``limit``: refused unread."""
    declared = dict(headers).get(b"content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_API_BODY, exempt: str = "/hooks/") -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        if declared_over(scope.get("headers") or [], self.limit):
            response = JSONResponse(
                {"error": body_over(self.limit)},
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI lets an HTTPException from body reading through to the
                    # app's handler: the same {"error": …} body as every other refusal.
                    raise HTTPException(413, body_over(self.limit))
            return message

        await self.app(scope, counted, send)


class HeaderLimit:
    """At most ``limit`` request headers (431 past it).

    The transport bounds the head's *bytes* (``reconciler.server.transport``); this bounds
    their *count*, which costs per header in every parser and dict downstream.  Real
    clients send a dozen or two; GitHub sends about 15.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADERS) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope.get("headers") or ()) > self.limit:
            response = JSONResponse(
                {"error": headers_over(self.limit)},
                status_code=431,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
