"""Progress of a parallel apply: a live table on a terminal, plain lines otherwise.

Deployments now run side by side, so the old one-line-per-step output interleaved
steps of eight apps into an unreadable stream on a terminal.  On a terminal the steps
update one row per deployment in place (rich ``Live``); piped into a file or a CI log,
where cursor movement is noise, each step stays one plain line prefixed by its
deployment, which reads well with ``grep``.  Events come from the pool's threads:
everything here holds one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.cli.term import styled, text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from agent.executor import StepEvent
    from reconciler.model.plan import Action

__all__ = ["Progress"]

DETAIL_CHARS = 60  # a row's detail is cut here: one row stays one line
REFRESH_PER_SECOND = 4


@dataclass
class _Row:
    action: str
    step: str = "waiting"
    detail: str = ""
    started: float | None = None
    ended: float | None = None


class Progress:
    """``on_event`` for the executor; use as a context manager around the run."""

    def __init__(self, console: Console, actions: Sequence[Action], *, live: bool) -> None:
        self.console = console
        self._rows = {a.deployment: _Row(a.action) for a in actions}
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._want_live = live and bool(actions)

    def __enter__(self) -> Progress:
        if self._want_live:
            from rich.live import Live

            self._live = Live(
                get_renderable=self._table,
                console=self.console,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def on_event(self, event: StepEvent) -> None:
        now = time.monotonic()
        with self._lock:
            row = self._rows.setdefault(event.deployment, _Row(""))
            row.started = row.started if row.started is not None else now
            row.step, row.detail = event.step, event.detail
            if event.step in ("done", "failed"):
                row.ended = now
            if self._live is not None:
                return  # the next refresh draws it
        style = "red" if event.step == "failed" else "dim"
        self.console.print(
            styled("  ", (f"{event.deployment}: {event.step}", style), f" {event.detail}")
        )

    def _table(self) -> Table:
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("deployment", "action", "step", "detail", "time"):
            table.add_column(column, no_wrap=True)
        now = time.monotonic()
        with self._lock:
            for name, row in self._rows.items():
                style = {"done": "green", "failed": "red", "waiting": "dim"}.get(row.step, "")
                seconds = (
                    ""
                    if row.started is None
                    else f"{(row.ended if row.ended is not None else now) - row.started:.1f}s"
                )
                detail = row.detail
                if len(detail) > DETAIL_CHARS:
                    detail = detail[: DETAIL_CHARS - 1] + "…"
                table.add_row(
                    text(name, newlines=False),
                    row.action,
                    text(row.step, style, newlines=False),
                    text(detail, newlines=False),
                    seconds,
                )
        return table
