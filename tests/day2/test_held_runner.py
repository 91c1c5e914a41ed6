"""An agent refuses to undo a hold: a command planned against the spec a hold holds
(issued before the server saw the hold) is answered ``ok`` without running; a command
with another spec (git changed) runs.  Pure: the executor is a stub that records calls."""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import Any

from agent.runner import CommandRunner
from agent.statedir import AppRecord, write_record
from reconciler.model.agentapi import Command
from reconciler.model.ids import deployment_id
from reconciler.model.plan import Action
from reconciler.model.state import Hold, SpecRecord

DPL = deployment_id("ns", "web")
WANTED = "b" * 64  # what git wanted when the deployment was rolled back
OLD = "a" * 64  # the release it was rolled back to


class _NoExecutor:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args: Any) -> Any:
        self.calls += 1
        raise RuntimeError("the executor must not be made for a held deployment")


def _command(kind: str, spec_hash: str) -> Command:
    now = dt.datetime.now(dt.UTC)
    return Command(
        id="cmd_0123456789abcdef",
        kind=kind,  # type: ignore[arg-type]
        action=Action(
            action=kind,  # type: ignore[arg-type]
            deployment="web",
            id=DPL,
            agent="agt_0000000000000001",
            reason="test",
            spec_hash=spec_hash,
        ),
        deployment={"not": "used"},
        created=now,
        deadline=now + dt.timedelta(minutes=5),
    )


def _held_host(state: pathlib.Path) -> None:
    hold = Hold(release="20261204T100000-aaaaaaaaaaaa", release_spec_hash=OLD,
                spec_hash=WANTED, at="2026-12-04T10:00:00Z")  # fmt: skip
    write_record(
        state,
        AppRecord(
            id=DPL, name="web", namespace="ns", spec_hash=OLD, record=SpecRecord(), held=hold
        ),
    )


def test_a_command_for_the_held_spec_is_not_run(tmp_path: pathlib.Path) -> None:
    _held_host(tmp_path)
    stub = _NoExecutor()
    runner = CommandRunner(tmp_path, lambda *_: None, stub)
    for kind in ("repair", "update"):
        result = runner.run(_command(kind, WANTED))
        assert result.ok, result
        assert result.message.startswith("held: rolled back by hand to release 20261204T100000")
    assert stub.calls == 0


def test_a_command_for_another_spec_runs(tmp_path: pathlib.Path) -> None:
    _held_host(tmp_path)
    runner = CommandRunner(tmp_path, lambda *_: None, _NoExecutor())
    # git changed: the command is not held back (here it fails on its fake deployment body,
    # before any executor is made: what matters is that it was not answered "held")
    result = runner.run(_command("update", "c" * 64))
    assert not result.message.startswith("held")
