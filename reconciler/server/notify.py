"""Wake-ups for long polls: a thread (the worker) tells waiting requests (asyncio).

A poll registers *before* it reads the store and only then waits, so a command created
between the read and the wait still wakes it: the notification finds the waiter
registered and sets its event through the waiter's own event loop
(``call_soon_threadsafe``: asyncio events are not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterable, Iterator

__all__ = ["EMPTY_ANSWER_SPREAD", "Notifier", "spread_wait"]

#: An empty long poll is answered after ``wait`` times a uniform draw from this range.
EMPTY_ANSWER_SPREAD = (0.7, 1.0)


def spread_wait(wait: float, rng: random.Random) -> float:
    """How long an empty long poll waits: a uniform share of ``wait``.

    After a restart every agent polls again within the same second, and with a fixed wait
    they would come back together every ``wait`` seconds for ever (552 of 1,000 answers in
    one second of every 30 were measured).  Answering each empty poll at a random 70-100%
    of its wait spreads them over 30% of the period within a few rounds; the agent polls
    again at once, so nothing waits longer than it asked."""
    low, high = EMPTY_ANSWER_SPREAD
    return wait * rng.uniform(low, high)


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def waiting(self, agent: str) -> Iterator[asyncio.Event]:
        """An event set when ``agent`` may have new commands; must be entered in a loop."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(agent, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(agent)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[agent]

    def notify(self, agent: str) -> None:
        """Thread-safe; returns at once."""
        with self._lock:
            entries = list(self._waiters.get(agent, ()))
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def notify_many(self, agents: Iterable[str]) -> None:
        """Every agent of a batch (the commands of one reconcile); thread-safe."""
        for agent in agents:
            self.notify(agent)

    def waiting_agents(self) -> set[str]:
        with self._lock:
            return set(self._waiters)
