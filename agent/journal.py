"""The agent's command journal: what it started, finished, and got acknowledged.

One small JSON file per command, ``<state dir>/agent/commands/<cmd id>.json``, written
atomically, so a crash or ``kill -9`` at any point leaves each entry in a state the next
start can act on:

* ``running`` -- the agent died mid-command.  Nothing to do: the control plane hands
  every unfinished command out again on every poll, and the executor's actions are
  idempotent, so the command is simply redone when it comes back.
* ``done`` and not ``acked`` -- the action finished but the server never confirmed the
  result (it was down, or the agent died before the answer).  The stored result is
  posted again; the server's result endpoint is idempotent on the command id.
* ``done`` and ``acked`` -- finished business; pruned after a day.

The journal is also how a running agent skips a command id it already finished while
the server has not yet seen the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import pathlib
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.statedir import atomic_write
from reconciler.model.agentapi import Command, CommandResult
from reconciler.model.ids import COMMAND_ID_RE

__all__ = ["COMMAND_ID_RE", "Journal", "JournalEntry"]

log = logging.getLogger(__name__)

KEEP_ACKED = dt.timedelta(days=1)
MAX_ENTRY_BYTES = 1024 * 1024


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    kind: str
    deployment: str
    status: Literal["running", "done"]
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    deadline: dt.datetime | None = None
    result: CommandResult | None = None
    acked: bool = False
    attempts: int = 1  # how many times this agent started it (a restart redoes it)
    # How many agent processes died (or were stopped) while it ran: a command that keeps
    # killing the agent is failed after a few, instead of crash-looping it forever.
    interrupted: int = 0


class Journal:
    def __init__(self, state_dir: pathlib.Path, now: Callable[[], dt.datetime] = _utcnow) -> None:
        self.directory = pathlib.Path(state_dir) / "agent" / "commands"
        self._now = now

    def _path(self, command_id: str) -> pathlib.Path:
        if not COMMAND_ID_RE.match(command_id):
            raise ValueError(f"not a command id: {command_id!r}")
        return self.directory / f"{command_id}.json"

    def _write(self, entry: JournalEntry) -> JournalEntry:
        atomic_write(self._path(entry.id), entry.model_dump_json(indent=2).encode(), 0o600)
        return entry

    def get(self, command_id: str) -> JournalEntry | None:
        """The entry, or None.  A corrupt file counts as absent (the command is redone)."""
        path = self._path(command_id)
        try:
            raw = path.read_bytes()[:MAX_ENTRY_BYTES]
            return JournalEntry.model_validate_json(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("journal entry %s is unreadable (%s); treating it as absent", path, exc)
            return None

    def entries(self) -> list[JournalEntry]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("cmd_*.json")):
            entry = self.get(path.stem)
            if entry is not None:
                out.append(entry)
        return out

    def start(self, command: Command, *, interrupted: int = 0) -> JournalEntry:
        previous = self.get(command.id)
        return self._write(
            JournalEntry(
                id=command.id,
                kind=command.kind,
                deployment=command.action.deployment,
                status="running",
                started_at=self._now(),
                deadline=command.deadline,
                attempts=(previous.attempts + 1) if previous is not None else 1,
                interrupted=interrupted,
            )
        )

    def refuse(self, command_id: str, result: CommandResult) -> JournalEntry:
        """Journal a command the agent would not run (not a valid command) as done, so
        its failed result is posted until acknowledged and it is never started."""
        now = self._now()
        return self._write(
            JournalEntry(
                id=command_id,
                kind="refused",
                deployment="",
                status="done",
                started_at=now,
                finished_at=now,
                result=result,
                attempts=0,
            )
        )

    def finish(self, command_id: str, result: CommandResult) -> JournalEntry:
        entry = self.get(command_id)
        if entry is None:  # pragma: no cover - start() always comes first
            raise KeyError(command_id)
        return self._write(
            entry.model_copy(
                update={"status": "done", "result": result, "finished_at": self._now()}
            )
        )

    def ack(self, command_id: str) -> None:
        entry = self.get(command_id)
        if entry is not None and not entry.acked:
            self._write(entry.model_copy(update={"acked": True}))

    def unacked(self) -> list[JournalEntry]:
        """Finished commands whose result the server has not confirmed, oldest first."""
        done = [e for e in self.entries() if e.status == "done" and not e.acked]
        return sorted(done, key=lambda e: e.finished_at or e.started_at)

    def prune(self, older_than: dt.timedelta = KEEP_ACKED) -> int:
        """Delete acknowledged entries finished more than ``older_than`` ago, and
        interrupted ones whose deadline passed that long ago (the server gave up on them
        and will not hand them out again)."""
        cutoff = self._now() - older_than
        removed = 0
        for entry in self.entries():
            finished = entry.finished_at or entry.started_at
            abandoned = (
                entry.status == "running" and entry.deadline is not None and entry.deadline < cutoff
            )
            if (entry.acked and finished < cutoff) or abandoned:
                with contextlib.suppress(FileNotFoundError):
                    self._path(entry.id).unlink()
                    removed += 1
        return removed
