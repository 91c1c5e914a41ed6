"""Several ``reconcile serve`` replicas on one database.

Any replica answers any request (agents, webhooks, the status API): everything they
need is in the store.  These make a second replica *correct* rather than a
second writer:

- **One reconcile worker per source.**  The replicas race for a lease
  (:meth:`Store.try_lead`, name ``reconcile:<source digest>``); the holder's worker
  runs reconciles, renews the lease every ``ttl / 3`` seconds, and delivers the outbox.
  A follower's worker runs nothing: a trigger it receives (a webhook, ``POST
  /v1/reconcile``, drift in a heartbeat) is forwarded to the leader as a ``reconcile``
  signal.  When the leader dies its lease runs out (``ttl``) and the next follower to
  try takes it, and starts with a reconcile of its own: the loop is level-triggered, so
  whatever the dead leader left half done (a plan saved, some commands issued) is
  finished from the store, and what it issued is in flight, never issued again.
- **Wake-ups.**  A command created on one replica wakes the long poll of its agent on
  every other one: the notifier also sends a ``command`` signal, and each replica
  watches the signals and wakes its own waiting polls.
- **One event stream.**  ``GET /v1/events/stream`` on any replica shows the steps and
  results agents post to any other: the events go through the store, and on PostgreSQL a
  ``progress`` signal wakes the other replicas' hubs (:mod:`reconciler.server.progress`).
- **Nothing in one process.**  Bundles, the rendered deployments and the one-shot
  mass-prune approval are in the store (see :mod:`reconciler.server.worker`).

A leader that loses its lease mid-run (paused, or cut off from the database) finds out
at its next renewal and stops before its next command (:class:`LostLeadership`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

from reconciler.server.notify import Notifier
from reconciler.server.store import PROGRESS, Store

__all__ = ["LEASE_TTL", "Leadership", "Replicas", "SharedNotifier", "lease_name"]

log = logging.getLogger("reconciler.server")

#: Seconds a leader's lease lasts without renewal: the longest a dead leader (killed,
#: its host gone) holds up reconciles before a follower takes over.
LEASE_TTL = 15.0

#: Signal channels.
COMMAND = "command"  # key: an agent id, which has new commands
RECONCILE = "reconcile"  # key: the trigger's reason, for the leader's worker
OUTBOX = "outbox"  # a follower wrote outbox rows: the leader's sender delivers them


def lease_name(source: str, branch: str | None, path: str | None) -> str:
    """The lease of one source: a digest, so no URL (nor its credentials) is stored."""
    digest = hashlib.sha256(f"{source}\0{branch or ''}\0{path or ''}".encode()).hexdigest()
    return f"reconcile:{digest[:16]}"


class SharedNotifier(Notifier):
    """Wakes the long polls of this replica and, through a signal, those of the others."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    def notify(self, agent: str) -> None:
        self.notify_many([agent])

    def notify_many(self, agents: Iterable[str]) -> None:
        """This replica's polls at once, then the others' through one signal write: a
        database round trip per agent before the next local wake-up held the last of 100
        agents up for about a second on PostgreSQL."""
        batch = sorted(set(agents))
        for agent in batch:
            super().notify(agent)
        try:
            self._store.signal_many(COMMAND, batch)
        except Exception:  # a lost wake-up costs one poll interval, never the command
            log.warning("signals for %d agents", len(batch), exc_info=True)

    def notify_local(self, agent: str) -> None:
        """A wake-up signalled by another replica: this one's polls only."""
        super().notify(agent)


class Leadership:
    """Takes and keeps lease ``name`` from a thread; ``leading`` says whether it holds it.

    A renewal that fails (the database does not answer) counts as lost: leading on a
    lease that may have run out is what must never happen.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        ttl: float = LEASE_TTL,
        holder: str | None = None,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.name = name
        self.ttl = ttl
        self.holder = holder or store.replica_id
        self.on_change = on_change
        self._leading = False
        self._until = 0.0  # monotonic: when the lease taken last runs out
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def leading(self) -> bool:
        # The lease's own end too: a renewal thread that stalls never leaves a replica
        # believing it leads past the moment another one may take over.
        return self._leading and self.clock() < self._until

    def check(self) -> bool:
        """One try now: take or renew the lease; returns whether this replica leads."""
        with self._lock:
            was = self.leading
            started = self.clock()
            try:
                ok = self.store.try_lead(self.name, self.holder, ttl=self.ttl)
            except Exception:
                log.warning("lease %s: the database did not answer", self.name, exc_info=True)
                ok = False
            if ok:
                # Counted from before the statement: the store's clock started no later.
                # A statement that waited longer than the lease (the database was busy)
                # takes it but does not count: the next try, quick, makes it count.
                self._until = started + self.ttl
            self._leading = ok
            ok = self.leading
            changed = ok != was
        if changed:
            log.info(
                "replica %s %s %s",
                self.holder,
                "leads" if ok else "no longer leads",
                self.name,
                extra={"fields": {"event": "leader", "replica": self.holder, "leading": ok}},
            )
            self.on_change(ok)
        return ok

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._loop, name="leadership", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.check()

    def stop(self) -> None:
        """Stop trying, and resign: a follower takes over at its next try."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            was, self._leading = self._leading, False
        if was:
            try:
                self.store.resign(self.name, self.holder)
            except Exception:  # it runs out by itself
                log.warning("resigning %s", self.name, exc_info=True)


class Replicas:
    """This replica's part in the set: its leadership and the signals it watches."""

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        notifier: SharedNotifier,
        trigger: Callable[[str], None],
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.notifier = notifier
        self._trigger = trigger
        self._unwatch: Callable[[], None] | None = None
        #: Wakes this replica's outbox sender (set when it has one).
        self.wake_outbox: Callable[[], None] = lambda: None
        #: Wakes this replica's progress hub: another one stored an event.
        self.wake_progress: Callable[[], None] = lambda: None

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    def forward(self, reason: str) -> None:
        """A trigger that arrived here, for the leader's worker."""
        try:
            self.store.signal(RECONCILE, reason[:200])
        except Exception:  # the leader's timer catches up with it
            log.warning("forwarding trigger %r", reason, exc_info=True)

    def outbox_written(self) -> None:
        """Rows were added to the outbox here: a follower tells the leader, whose sender
        would otherwise find them only at its next look (up to a minute later)."""
        if self.leading:
            return
        try:
            self.store.signal(OUTBOX, "")
        except Exception:  # the leader's next look finds them
            log.warning("outbox signal", exc_info=True)

    def on_signal(self, channel: str, key: str) -> None:
        if channel == COMMAND:
            self.notifier.notify_local(key)
        elif channel == RECONCILE and self.leading:
            self._trigger(key)
        elif channel == OUTBOX and self.leading:
            self.wake_outbox()
        elif channel == PROGRESS:
            self.wake_progress()

    def start(self) -> None:
        self._unwatch = self.store.watch(self.on_signal)
        self.leadership.start()

    def stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
        self.leadership.stop()
