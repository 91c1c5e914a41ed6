"""The HTTP transport of ``reconcile serve``: uvicorn's httptools protocol (llhttp, a C
parser) with the limits that anyone who can reach the port would otherwise exploit.

uvicorn bounds neither the time a client may take to send a request nor the number of
connections it keeps (``timeout_keep_alive`` only covers the idle time *between*
requests, and is reset by every byte).  Half-sent requests therefore never time out,
and a few thousand of them use up the server's file handles (``/healthz`` and every
agent with it).  httptools has no limit on a request head either: one 200 MiB header
grew the server by 370 MiB.  ASGI middleware cannot help: it runs only once a request
head has been parsed.  So the guard sits in the protocol, the way other uvicorn
deployments solved it (xorbitsai/inference#5213: a receipt deadline on the protocol
class).  It used to sit on uvicorn's h11 protocol, whose pure-Python parser made a
keep-alive request cost 185 us of server CPU where this one costs 102 us (plain uvicorn
httptools: 86 us; ``benchmarks/transport.py``).

- **head size**: the request line and headers may take ``max_head_bytes``, counted in
  :meth:`~GuardedHttpToolsProtocol.data_received` *before* the parser sees the bytes ->
  431, closed.  Memory per connection is bounded by that, whatever is sent.
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

llhttp parses whatever it is fed, pipelined requests included, so the bytes are fed in
pieces cut where the parser's state can change: just past a blank line (``\\r\\n\\r\\n``: the
end of a head, or perhaps of a chunked body) and at the end of a ``Content-Length``
body.  Between the pieces the guard knows which request a byte belongs to and whether
it is head, body or beyond.  Bytes past a request that arrived whole wait, with reading
paused, until its response is complete, as with h11: one request at a time per
connection, each counted and timed on its own.

The limits apply per server process; :class:`TransportLimits` holds them (``server.yaml``
keys of the same names).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["GuardedHttpToolsProtocol", "TransportLimits", "guarded_protocol", "uvicorn_options"]

log = logging.getLogger("reconciler.server.transport")

#: File handles kept for everything that is not a client connection (SQLite and its
#: WAL, git subprocesses' pipes, the listening socket, logs).
FD_HEADROOM = 128

#: What ends a request head, and a chunked body (llhttp takes no bare ``\n`` there).
_BLANK_LINE = b"\r\n\r\n"
#: Bytes kept from the previous piece: a blank line may span two reads.
_TAIL = len(_BLANK_LINE) - 1

Phase = Literal["head", "body", "received", "idle"]


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
    """A whole response written past the protocol (the connection is closed right after)."""
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _Gate:
    """The connections of one server whose current request has not arrived whole, oldest
    first (a dict keeps insertion order), so the oldest can be closed to make room."""

    def __init__(self) -> None:
        self.unfinished: dict[GuardedHttpToolsProtocol, None] = {}
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def oldest(self, other_than: GuardedHttpToolsProtocol) -> GuardedHttpToolsProtocol | None:
        for proto in self.unfinished:
            if proto is not other_than:
                return proto
        return None


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head size limit, the head/body deadlines and
    the connection cap."""

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
        self._phase: Phase = "head"
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: Phase | None = None
        self._head_bytes = 0
        self._body_left: int | None = None  # a Content-Length body's bytes still to come
        self._tail = b""  # the last bytes fed in this phase: a blank line may span two reads
        self._held = b""  # bytes past a request that arrived whole, until it is answered

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
        self._arm("head")
        if len(gate.unfinished) > self.max_connections - self.limits.connection_reserve:
            victim = gate.oldest(other_than=self)
            if victim is not None:
                victim._evict()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()
        self._held = b""
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._held:
            self._hold(data)
        else:
            self._feed(data)

    # ------------------------------------------------------------ parser callbacks

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = "body"
        self._body_left = _content_length(self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle.response_complete:
            # Answered before its body was in (a refusal): nothing more to wait for, and
            # uvicorn's keep-alive timer was cancelled by the body's bytes.
            self._await_next()
            if not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
        else:
            self._settle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self._phase != "received":
            return
        self._await_next()
        held, self._held = self._held, b""
        if held:
            self._feed(held)
            if not self._held and not self.flow.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # ------------------------------------------------------------------- feeding

    def _feed(self, data: bytes) -> None:
        """Give ``data`` to the parser in pieces cut where its state may change (see the
        module docstring), counting the head's bytes before the parser buffers them."""
        while data:
            if self._phase == "idle":
                self._phase = "head"
            if self._phase == "received":
                self._hold(data)
                return
            if self._phase == "head":
                window = self._tail + data
                end = window.find(_BLANK_LINE)
                # Without a blank line, the last bytes may be the start of one.
                size = len(data) - _TAIL if end < 0 else end - len(self._tail)
                if self._head_bytes + size > self.limits.max_head_bytes:
                    self._refuse_head()
                    return
                cut = len(data) if end < 0 else end + len(_BLANK_LINE) - len(self._tail)
                self._head_bytes += cut
            elif self._body_left is not None:
                cut = min(len(data), self._body_left) or len(data)
                self._body_left = max(0, self._body_left - cut)
            else:  # chunked: it ends with a blank line
                end = (self._tail + data).find(_BLANK_LINE)
                cut = len(data) if end < 0 else end + len(_BLANK_LINE) - len(self._tail)
            piece = data[:cut] if cut < len(data) else data
            before = self._phase
            super().data_received(piece)
            if self.transport.is_closing():  # a parse error: uvicorn answered 400
                self._settle()
                return
            if self._phase == before:
                self._tail = (self._tail + piece[-_TAIL:])[-_TAIL:]
            else:
                self._tail = b""
            data = data[cut:] if cut < len(data) else b""
        if self._phase == "head" or self._phase == "body":
            self._arm(self._phase)

    def _hold(self, data: bytes) -> None:
        """Keep bytes that arrive while a request is being answered, and stop reading: they
        are the next request, fed (and counted, and timed) once this one is answered.
        The app asking for more of its own body may resume reading once; this pauses it
        again, so at most a read or two wait here."""
        self._held += data
        self.transport.pause_reading()

    # ------------------------------------------------------------------- helpers

    def _await_head(self) -> None:
        self._phase = "head"
        self._head_bytes = 0
        self._tail = b""
        self.gate.unfinished[self] = None

    def _await_next(self) -> None:
        """Kept alive: idle (uvicorn's ``timeout_keep_alive`` closes it) until the next
        request's first byte, which starts its head deadline.  Still evictable, oldest
        first, when slow connections crowd the cap."""
        self._await_head()
        self._phase = "idle"
        self._disarm()

    def _settle(self) -> None:
        """The request arrived whole (or the connection ends): no deadline, no eviction."""
        self._phase = "received"
        self.gate.unfinished.pop(self, None)
        self._disarm()

    def _arm(self, phase: Phase) -> None:
        """Start ``phase``'s deadline unless it runs already (a head's deadline counts
        from its first byte, a body's from the end of the head)."""
        if self._deadline_for == phase:
            return
        self._disarm()
        seconds = self.limits.head_timeout if phase == "head" else self.limits.body_timeout
        self._deadline = self.loop.call_later(seconds, self._expired)
        self._deadline_for = phase

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _expired(self) -> None:
        phase = self._deadline_for
        self._deadline = None
        self._deadline_for = None
        if self.transport.is_closing() or phase != self._phase:
            return
        if phase == "body" and self.flow.read_paused:
            # The app is not reading (its buffer is full): not the client's delay.
            self._arm("body")
            return
        self.gate.timed_out += 1
        what = "request head" if phase == "head" else "request body"
        limit = self.limits.head_timeout if phase == "head" else self.limits.body_timeout
        started = phase == "body" and self.cycle.response_started
        self._settle()
        answer = _canned(408, "Request Timeout", f"{what} not received in {limit:g} s")
        self._close(None if started else answer)

    def _refuse_head(self) -> None:
        self.gate.refused += 1
        self._settle()
        self._close(
            _canned(
                431,
                "Request Header Fields Too Large",
                f"request line and headers over {self.limits.max_head_bytes} bytes",
            )
        )

    def _evict(self) -> None:
        self.gate.evicted += 1
        self._settle()
        self.transport.abort()

    def _close(self, answer: bytes | None) -> None:
        """Answer (the callers know whether a response has started) and close; uvicorn's
        ``connection_lost`` tells a running app that the client is gone."""
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's length as llhttp frames it: ``None`` for a chunked body, 0 for none
    (llhttp refuses a request with both, or with two lengths)."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def guarded_protocol(limits: TransportLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``limits`` and to a fresh connection registry (one per
    server: uvicorn builds the protocol from the class, so the shared state lives on it)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
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
        "timeout_keep_alive": limits.keep_alive,
        "ws": "none",
    }
