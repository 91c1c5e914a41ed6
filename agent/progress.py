"""Forward the executor's steps to the control plane as they happen (live progress).

The executor calls :meth:`ProgressForwarder.__call__` from whichever thread runs a
deployment, so it only puts the step on a bounded queue and returns: a slow or
unreachable control plane never slows a deployment down.  One thread posts the steps in
the order they were queued (a command's steps arrive in order), batching what piled up
while the previous post was in flight.  Progress is live-only: a step that cannot be
posted, or that finds the queue full, is dropped and counted, never retried; the
command's result is what the server keeps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.client import AgentClientError
from reconciler.model.agentapi import ProgressStep

if TYPE_CHECKING:
    from agent.executor import StepEvent

__all__ = ["MAX_BATCH", "MAX_PENDING", "ProgressForwarder"]

log = logging.getLogger("reconcile-agent")

MAX_PENDING = 1000  # steps waiting to be posted before new ones are dropped
MAX_BATCH = 100  # steps per post (the server takes at most 200)

# (command id, steps) -> None; raises agent.client errors
Post = Callable[[str, list[ProgressStep]], object]
Item = tuple[str, ProgressStep] | None  # None: stop


class ProgressForwarder:
    def __init__(self, post: Post, *, max_pending: int = MAX_PENDING) -> None:
        self._post = post
        self._queue: queue.Queue[Item] = queue.Queue(max_pending)
        self.dropped = 0  # steps not forwarded: queue full, or the post failed
        self.sent = 0
        self._count = threading.Lock()  # executor threads and the poster both count
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def __call__(self, command_id: str, event: StepEvent) -> None:
        """Queue one step of ``command_id``; thread-safe, never blocks."""
        step = ProgressStep(
            deployment=event.deployment,
            step=event.step,
            detail=event.detail,
            time=dt.datetime.now(dt.UTC),
        )
        try:
            self._queue.put_nowait((command_id, step))
        except queue.Full:
            self._drop(1)

    def _drop(self, steps: int) -> None:
        with self._count:
            self.dropped += steps

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued (for at most ``timeout`` seconds), then stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._send(batch)
            if stop:
                return

    def _send(self, items: list[tuple[str, ProgressStep]]) -> None:
        # Consecutive steps of one command go in one post, in their order.
        runs: list[tuple[str, list[ProgressStep]]] = []
        for command_id, step in items:
            if runs and runs[-1][0] == command_id:
                runs[-1][1].append(step)
            else:
                runs.append((command_id, [step]))
        for command_id, steps in runs:
            try:
                self._post(command_id, steps)
                self.sent += len(steps)
            except AgentClientError as exc:  # an older server (404) or a blip: live-only
                self._drop(len(steps))
                log.debug("progress of %s not forwarded: %s", command_id, exc)
            except Exception:  # a bug here must not end the thread
                self._drop(len(steps))
                log.exception("progress of %s not forwarded", command_id)
