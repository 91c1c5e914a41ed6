"""The HTTP transport of ``reconcile serve``: uvicorn's h11 protocol with the limits that
anyone who can reach the port would otherwise exploit.

uvicorn bounds neither the time a client may take to send a request nor the number of
connections it keeps (``timeout_keep_alive`` only covers the idle time *between*
requests, and is reset by every byte).  Half-sent requests therefore never time out,
and a few thousand of them use up the server's file handles (``/healthz`` and every
agent with it).  With httptools a request head has no size limit either: one 200 MiB
header grew the server by 370 MiB.  ASGI middleware cannot help: it runs only once a
request head has been parsed.  So the guard sits in the protocol, the way other
uvicorn deployments solved it (xorbitsai/inference#5213: a receipt deadline on the
protocol class):

- **head size**: the request line and headers may take ``max_head_bytes`` (h11's
  ``max_incomplete_event_size``, counted here too, so the refusal is a 431 and not
  uvicorn's generic 400).  Memory per connection is bounded by that, whatever is sent.
- **head deadline**: a request head must arrive whole within ``head_timeout`` of the
  connection (or of its first byte, on a kept-alive connection) -> 408, closed.  An idle
  kept-alive connection is closed by uvicorn after ``keep_alive`` seconds, which outlives
  the agents' heartbeat interval (``max(75, 3 * heartbeat)`` by default): an agent reuses
  one connection for all its heartbeats instead of racing a close every few beats (at
  ``--heartbeat 5`` and a 5 s keep-alive, 1% of heartbeats failed that way).
- **body deadline**: once the head is in, the body must arrive whole within
  ``body_timeout`` (not counted while the app itself stops reading) -> 408, closed.
- **connections**: at most ``max_connections`` (lowered to what the file-handle limit
  allows).  Connections whose request has not arrived whole may hold all but
  ``connection_reserve`` of them: a new connection past that closes the *oldest*
  unfinished one.  A request that has arrived (a health check, an agent's long poll,
  a webhook being processed) is never closed to make room, and a client that sends
  its request at once (every real client) is done long before its turn comes; so a
  flood of slow connections only ever pushes out itself.

The limits apply per server process; :class:`TransportLimits` holds them (``server.yaml``
keys of the same names).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["TransportLimits", "guarded_protocol", "uvicorn_options"]

log = logging.getLogger("reconciler.server.transport")

#: File handles kept for everything that is not a client connection (SQLite and its
#: WAL, git subprocesses' pipes, the listening socket, logs).
FD_HEADROOM = 128


@dataclass(frozen=True)
class TransportLimits:
    max_head_bytes: int = 64 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive: int = 75
    max_connections: int = 2048
    connection_reserve: int = 128

    def effective_max_connections(self) -> int:
        """``max_connections``, lowered so connections can never take the handles the
        server needs itself (the attack on ``/healthz`` was running out of them)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(self.connection_reserve + 16, min(self.max_connections, soft - FD_HEADROOM))


def _canned(status: int, reason: str, text: str) -> bytes:
    """A whole response written past h11 (the connection is closed right after)."""
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _Gate:
    """The connections of one server whose current request has not arrived whole, oldest
    first (a dict keeps insertion order), so the oldest can be closed to make room."""

    def __init__(self) -> None:
        self.unfinished: dict[GuardedH11Protocol, None] = {}
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def oldest(self, other_than: GuardedH11Protocol) -> GuardedH11Protocol | None:
        for proto in self.unfinished:
            if proto is not other_than:
                return proto
        return None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head/body deadlines and the connection cap."""

    limits: ClassVar[TransportLimits] = TransportLimits()
    gate: ClassVar[_Gate] = _Gate()
    max_connections: ClassVar[int] = TransportLimits().max_connections

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may span two reads
        self._phase = "head"  # head | body | received | idle (kept alive, between requests)

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gate = self.gate
        if len(self.connections) > self.max_connections:
            victim = gate.oldest(other_than=self)
            if victim is None:
                gate.refused += 1
                self._settle()
                self._close(_canned(503, "Service Unavailable", "server at its connection limit"))
                return
            victim._evict()
        self._await_head()
        if len(gate.unfinished) > self.max_connections - self.limits.connection_reserve:
            victim = gate.oldest(other_than=self)
            if victim is not None:
                victim._evict()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":
            self._phase = "head"
            self._arm(self.limits.head_timeout)
        if self._phase == "head":
            # Only the head counts: the same read may carry the start of the body.
            window = self._tail + data
            ends = [i for i in (window.find(b"\n\r\n"), window.find(b"\n\n")) if i >= 0]
            if ends:
                head = self._head_bytes + min(ends) - len(self._tail)
            else:
                self._head_bytes += len(data)
                self._tail = window[-3:]
                head = self._head_bytes
            if head > self.limits.max_head_bytes:
                self.gate.refused += 1
                self._settle()
                self._close(
                    _canned(
                        431,
                        "Request Header Fields Too Large",
                        f"request line and headers over {self.limits.max_head_bytes} bytes",
                    )
                )
                return
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.is_closing():
            self._settle()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase != "body":
            self._phase = "body"
            self._arm(self.limits.body_timeout)
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._settle()  # received whole (DONE), or the connection is ending

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (
            not self.transport.is_closing()
            and self.conn.their_state is h11.IDLE
            and self._phase == "received"
        ):
            self._await_next()

    # ------------------------------------------------------------------- helpers

    def _await_head(self) -> None:
        self._phase = "head"
        self._head_bytes = 0
        self._tail = b""
        self.gate.unfinished[self] = None
        self._arm(self.limits.head_timeout)

    def _await_next(self) -> None:
        """Kept alive: idle (uvicorn's ``timeout_keep_alive`` closes it) until the next
        request's first byte, which starts its head deadline.  Still evictable, oldest
        first, when slow connections crowd the cap."""
        self._await_head()
        self._phase = "idle"
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _settle(self) -> None:
        """The request arrived whole (or the connection ends): no deadline, no eviction."""
        self._phase = "received"
        self.gate.unfinished.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._phase == "received":
            return
        if self._phase == "body" and self.flow.read_paused:
            # The app is not reading (its buffer is full): not the client's delay.
            self._arm(self.limits.body_timeout)
            return
        self.gate.timed_out += 1
        what = "request head" if self._phase == "head" else "request body"
        limit = self.limits.head_timeout if self._phase == "head" else self.limits.body_timeout
        started = self.conn.our_state in (h11.SEND_BODY, h11.DONE)
        self._settle()
        answer = _canned(408, "Request Timeout", f"{what} not received in {limit:g} s")
        self._close(None if started else answer)

    def _evict(self) -> None:
        self.gate.evicted += 1
        self._settle()
        self.transport.abort()

    def _close(self, answer: bytes | None) -> None:
        """Answer (unless a response has started) and close; uvicorn's ``connection_lost``
        tells a running app that the client is gone."""
        if answer is not None and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(answer)
        self.transport.close()


def guarded_protocol(limits: TransportLimits) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``limits`` and to a fresh connection registry (one per
    server: uvicorn builds the protocol from the class, so the shared state lives on it)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "limits": limits,
            "gate": _Gate(),
            "max_connections": limits.effective_max_connections(),
        },
    )


def uvicorn_options(limits: TransportLimits) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` that apply ``limits``."""
    return {
        "http": guarded_protocol(limits),
        "h11_max_incomplete_event_size": limits.max_head_bytes,
        "timeout_keep_alive": limits.keep_alive,
        "ws": "none",
    }
