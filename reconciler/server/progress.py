"""Live progress: the steps of each command, fanned out to ``GET /v1/events/stream``.

Progress is live-only, so it lives in memory, never in the store: a ring buffer of the
last :data:`HISTORY` events (a client that connects mid-command, or reconnects with
``Last-Event-ID``, still sees the steps it missed) and one bounded queue per client.
:meth:`ProgressHub.publish` is called from the worker thread and from request threads;
it never blocks and never waits for a client.  A client whose queue is full is dropped
(its stream ends with a comment saying so): one slow reader can neither stall the
server nor make it hold an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HISTORY", "QUEUE_SIZE", "Event", "ProgressHub", "Subscription"]

#: Events kept for replay, all commands together (~300 bytes each: ~300 KB at most).
HISTORY = 1000
#: Events one client may have unread before it is dropped.
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # command.sent | step | command.result
    fields: dict[str, Any]

    def matches(self, deployment: str | None, command: str | None) -> bool:
        if command is not None and self.fields.get("command") != command:
            return False
        return deployment is None or deployment in (
            self.fields.get("deployment"),
            self.fields.get("deployment_id"),
        )


# What a subscriber's queue carries besides events: the end of its stream, and why.
_CLOSED = "the server is stopping"
_DROPPED = "dropped: this client read too slowly"


@dataclass(eq=False)
class Subscription:
    """One client's view: the events matching its filter, in order, until the stream ends."""

    loop: asyncio.AbstractEventLoop
    deployment: str | None
    command: str | None
    queue: asyncio.Queue[Event | str] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )
    ended: str | None = None  # why the stream ended, once it has
    on_drop: Callable[[], None] = lambda: None

    def offer(self, item: Event | str) -> None:
        """On the client's loop: queue ``item``; a full queue drops the client."""
        if self.ended is not None:
            return
        if isinstance(item, str):
            self._end(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.on_drop()
            self._end(_DROPPED)

    def _end(self, why: str) -> None:
        self.ended = why
        while not self.queue.empty():  # the reader sees the end at once, not after a backlog
            self.queue.get_nowait()
        self.queue.put_nowait(why)

    async def next(self, timeout: float) -> Event | str | None:
        """The next event, the reason the stream ended (a str), or None after ``timeout``."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class ProgressHub:
    def __init__(self, *, heartbeat: float = 15.0, history: int = HISTORY) -> None:
        self.heartbeat = heartbeat  # seconds between keep-alive comments on an idle stream
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.on_drop: Callable[[], None] = lambda: None

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, fields: dict[str, Any]) -> Event:
        """Record one event (``fields["type"]`` names it) and hand it to every matching
        client.  Thread-safe; never blocks."""
        body = {k: v for k, v in fields.items() if k != "type"}
        body.setdefault("time", time.time())
        with self._lock:
            event = Event(id=next(self._ids), type=str(fields.get("type", "event")), fields=body)
            self._history.append(event)
            targets = [s for s in self._subscribers if event.matches(s.deployment, s.command)]
        for sub in targets:
            _deliver(sub, event)
        return event

    def subscribe(
        self, *, deployment: str | None = None, command: str | None = None, after: int | None = None
    ) -> Subscription:
        """A subscription on the running loop, primed with the buffered events after id
        ``after`` (None: with the buffered events of ``command`` if one is named, else none).
        Call from the event loop."""
        sub = Subscription(asyncio.get_running_loop(), deployment, command, on_drop=self.on_drop)
        with self._lock:
            if self._closed:
                sub.offer(_CLOSED)
                return sub
            if after is not None or command is not None:
                for event in self._history:
                    if (after is None or event.id > after) and event.matches(deployment, command):
                        sub.offer(event)
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def close(self) -> None:
        """End every stream (the server is stopping); later subscriptions end at once."""
        with self._lock:
            self._closed = True
            subs = list(self._subscribers)
            self._subscribers.clear()
        for sub in subs:
            _deliver(sub, _CLOSED)

    async def stream(self, sub: Subscription) -> AsyncIterator[str]:
        """The Server-Sent Events text of one subscription, with keep-alive comments."""
        try:
            yield f": connected; keep-alive every {self.heartbeat:g} s\n\n"
            while True:
                item = await sub.next(self.heartbeat)
                if item is None:
                    yield ": keep-alive\n\n"
                elif isinstance(item, str):
                    yield f": end: {item}\n\n"
                    return
                else:
                    yield sse(item)
        finally:
            self.unsubscribe(sub)


def sse(event: Event) -> str:
    import json

    data = json.dumps({"id": event.id, "type": event.type, **event.fields}, sort_keys=True)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


def _deliver(sub: Subscription, item: Event | str) -> None:
    with contextlib.suppress(RuntimeError):  # the client's loop is closed: it is gone
        sub.loop.call_soon_threadsafe(sub.offer, item)
