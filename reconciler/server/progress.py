"""Live progress: the steps of each command, fanned out to ``GET /v1/events/stream``.

Progress is live-only: a ring buffer of the last :data:`HISTORY` events (a client that
connects mid-command, or reconnects with ``Last-Event-ID``, still sees the steps it
missed) and one bounded queue per client.  :meth:`ProgressHub.publish` is called from the
worker thread and from request threads; it never waits for a client.  A client whose
queue is full is dropped (its stream ends with a comment saying so): one slow reader can
neither stall the server nor make it hold an unbounded backlog.

**Several replicas** (a hub with a :class:`ProgressFeed`, the store, when the server
runs on a shared database): an agent posts its steps to whichever replica the load
balancer picks, and an admin streams from any other, so every event goes through the
store's ``progress`` table and every replica's hub reads it back.  The table's ids are the
events' ids on every replica, assigned in commit order (the store's docstring of
``append_progress``), which gives the three promises at once:

- *in order, no duplicate*: a hub delivers an event only when its id is above the last
  one it delivered, and before delivering its own new event it first reads and delivers
  the ones committed before it (by other replicas) that it has not seen yet;
- *within a second*: on PostgreSQL the insert NOTIFYs the others at commit (a hub reads
  on the signal, and once a second in case one was lost); on SQLite each hub reads the
  table every 100 ms, as the replicas already read their signals;
- *replay anywhere*: ``after=N`` / ``Last-Event-ID: N`` means the same event on every
  replica, so a client that reconnects through the load balancer to another replica
  resumes where it was.  A hub starting late fills its ring from the table.

The table, not the signals themselves, because an event is larger than a NOTIFY payload
or a signal key may be, and because only a table gives one id per event for all the
replicas.  The replica that publishes delivers its own event as soon as it commits,
never after a poll.  A single server on its own data dir (no shared ``database``) keeps
the events in memory only, exactly as before: there is nobody to share them with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "FEED_POLL",
    "FEED_POLL_NOTIFIED",
    "HISTORY",
    "QUEUE_SIZE",
    "Event",
    "ProgressFeed",
    "ProgressHub",
    "Subscription",
]

log = logging.getLogger("reconciler.server")

#: Events kept for replay, all commands together (~300 bytes each: ~300 KB at most).
HISTORY = 1000
#: Events one client may have unread before it is dropped.
QUEUE_SIZE = 256
#: Seconds between two reads of a shared feed when nothing woke the hub: SQLite's replicas
#: have no wake-up but this (the same 100 ms as their signals); PostgreSQL's are woken by
#: NOTIFY and read on this clock only in case one was lost.
FEED_POLL = 0.1
FEED_POLL_NOTIFIED = 1.0


class ProgressFeed(Protocol):
    """The events every replica sees, in one id order (the store)."""

    def append_progress(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]: ...

    def progress_between(
        self, after: int, before: int | None = None
    ) -> list[tuple[int, str, dict[str, Any]]]: ...

    def last_progress_id(self) -> int: ...


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
    def __init__(
        self,
        *,
        heartbeat: float = 15.0,
        history: int = HISTORY,
        feed: ProgressFeed | None = None,
        poll: float = FEED_POLL,
    ) -> None:
        self.heartbeat = heartbeat  # seconds between keep-alive comments on an idle stream
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.on_drop: Callable[[], None] = lambda: None
        # A shared feed (several replicas): the last id delivered here, taken in turn by
        # whoever delivers (a publisher, the follower thread), so delivery is in id order.
        self._feed = feed
        self._poll = poll
        self._order = threading.Lock()
        self._last = 0
        self._wake = threading.Event()
        self._follower: threading.Thread | None = None
        if feed is not None:
            self._last = max(0, feed.last_progress_id() - history)
            self.catch_up()  # the ring as it is: a replay works on a replica started late

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, fields: dict[str, Any]) -> Event:
        """Record one event (``fields["type"]`` names it) and hand it to every matching
        client.  Thread-safe; never waits for a client (:meth:`publish_many`)."""
        if self._feed is not None:
            return self.publish_many([fields])[0]
        # In memory only: the path of every event on a single server, kept as short as
        # it was before the shared feed existed (one lock, no batch).
        body = {k: v for k, v in fields.items() if k != "type"}
        body.setdefault("time", time.time())
        with self._lock:
            event = Event(id=next(self._ids), type=str(fields.get("type", "event")), fields=body)
            self._history.append(event)
            targets = [s for s in self._subscribers if event.matches(s.deployment, s.command)]
        for sub in targets:
            _deliver(sub, event)
        return event

    def publish_many(self, batch: Sequence[dict[str, Any]]) -> list[Event]:
        """:meth:`publish` for several events at once, in order.  With a shared feed they
        are stored first, in one short write; events the store refused are logged and
        dropped (their id is 0): progress is live only, and must never fail what it
        reports on."""
        if not batch:
            return []
        events: list[tuple[str, dict[str, Any]]] = []
        for fields in batch:
            body = {k: v for k, v in fields.items() if k != "type"}
            body.setdefault("time", time.time())
            events.append((str(fields.get("type", "event")), body))
        feed = self._feed
        if feed is None:
            return [self.publish({"type": kind, **body}) for kind, body in events]
        try:
            ids = feed.append_progress(events)
        except Exception:
            log.warning("%d progress event(s) not stored: dropped", len(events), exc_info=True)
            return [Event(id=0, type=k, fields=b) for k, b in events]
        out = [Event(id=i, type=k, fields=b) for i, (k, b) in zip(ids, events, strict=True)]
        with self._order:
            for event in out:
                if event.id <= self._last:  # the follower read it from the store first
                    continue
                if event.id > self._last + 1:  # others committed before it: theirs first
                    self._deliver_stored(feed, before=event.id)
                self._fan_out(event)
                self._last = event.id
        return out

    def catch_up(self) -> None:
        """Deliver the events of the shared feed not delivered here yet, in id order."""
        feed = self._feed
        if feed is None:
            return
        with self._order:
            self._deliver_stored(feed)

    def _deliver_stored(self, feed: ProgressFeed, before: int | None = None) -> None:
        """Under ``_order``: the stored events after the last one delivered (and before
        ``before``), in order."""
        try:
            rows = feed.progress_between(self._last, before)
        except Exception:  # the next read (a publish, the follower) tries again
            if not self._closed:  # else: the store closed under a last read, at shutdown
                log.warning("reading the shared progress events", exc_info=True)
            return
        for event_id, kind, body in rows:
            self._fan_out(Event(id=event_id, type=kind, fields=body))
            self._last = event_id

    def _fan_out(self, event: Event) -> None:
        with self._lock:
            self._history.append(event)
            targets = [s for s in self._subscribers if event.matches(s.deployment, s.command)]
        for sub in targets:
            _deliver(sub, event)

    def start(self) -> None:
        """Follow the shared feed from a thread (nothing to do without one)."""
        if self._feed is None or self._follower is not None:
            return
        self._follower = threading.Thread(target=self._follow, name="progress-feed", daemon=True)
        self._follower.start()

    def wake(self) -> None:
        """Another replica stored an event (its NOTIFY): read it now, not at the next poll."""
        self._wake.set()

    def _follow(self) -> None:
        while not self._closed:
            self._wake.wait(self._poll)
            self._wake.clear()
            if self._closed:
                return
            self.catch_up()

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
        """End every stream (the server is stopping); later subscriptions end at once.
        The follower thread stops too (it is not waited for: this runs in a signal
        handler)."""
        with self._lock:
            self._closed = True
            subs = list(self._subscribers)
            self._subscribers.clear()
        self._wake.set()
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
