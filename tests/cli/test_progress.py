"""Progress of a parallel apply: one plain line per step off a terminal, a live table with
one row per deployment on one; text from repositories stays inert in both."""

from __future__ import annotations

import io

from rich.console import Console

from agent.executor import StepEvent
from reconciler.cli.progress import Progress
from reconciler.cli.term import console
from reconciler.model.plan import Action

ID = "dpl_" + "0" * 16


def action(name: str) -> Action:
    return Action(action="install", deployment=name, id=ID, agent="local", reason="new")


def make_console(*, terminal: bool) -> tuple[io.StringIO, Console]:
    out = io.StringIO()
    c = console()
    c.file = out
    c._force_terminal = terminal  # rich's own switch, for a file that is not a tty
    return out, c


def test_off_a_terminal_each_step_is_one_plain_line() -> None:
    out, c = make_console(terminal=False)
    with Progress(c, [action("web"), action("api")], live=False) as progress:
        progress.on_event(StepEvent("web", "up", "docker compose up -d"))
        progress.on_event(StepEvent("api", "settle", "waiting 3 s"))
        progress.on_event(StepEvent("web", "done", "installed"))
    assert out.getvalue().splitlines() == [
        "  web: up docker compose up -d",
        "  api: settle waiting 3 s",
        "  web: done installed",
    ]


def test_on_a_terminal_one_row_per_deployment_with_its_last_step() -> None:
    out, c = make_console(terminal=True)
    evil = "[bold]x\x1b[2J"
    with Progress(c, [action("web"), action("api")], live=True) as progress:
        progress.on_event(StepEvent("web", "up", "docker compose up -d"))
        progress.on_event(StepEvent("web", "done", "installed"))
        progress.on_event(StepEvent("api", "failed", evil))
    final = out.getvalue().split("\x1b[2K")[-1]  # the last frame rich drew
    rows = [line for line in final.splitlines() if line.strip()]
    web = next(r for r in rows if "web" in r)
    api = next(r for r in rows if "api" in r)
    assert [r for r in rows if "web" in r] == [web]  # one row, updated in place
    assert "done" in web and "installed" in web and "compose" not in web
    assert "failed" in api and "[bold]x\\x1b[2J" in api
    assert "\x1b[2J" not in out.getvalue()
