"""The README's "Running in production" section: every ``reconcile`` command in it parses
with the CLI as it is (options exist, values have their types).  What each one does is
tested where it is implemented (tests/install, tests/sources/test_private_remotes.py,
tests/server/test_backup.py); this keeps the README from drifting away from them."""

from __future__ import annotations

import pathlib
import re
import shlex
from typing import Any

import typer.main

from reconciler.cli import app, rewrite_argv
from reconciler.server.install import install_one_liner

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Running in production\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _shell_lines(section: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _parse(argv: list[str]) -> Any:
    """The innermost context click builds for ``argv``; parsing raises on a bad option.
    (Duck-typed: typer may bring its own copy of click.)"""
    command = typer.main.get_command(app)
    ctx = command.make_context("reconcile", rewrite_argv(argv))
    while hasattr(ctx.command, "resolve_command"):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, sub, rest = ctx.command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
    return ctx


def test_every_reconcile_command_in_the_section_parses() -> None:
    lines = _shell_lines(_section())
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
            words.pop(0)
        if words and words[0] == "reconcile":
            commands.append(words[1:])
    names = {" ".join(w for w in argv[:2] if not w.startswith("-")) for argv in commands}
    assert {"agent token", "serve backup", "serve restore"} <= names, names
    for argv in commands:
        ctx = _parse(argv)
        assert ctx.command.callback is not None, argv


def test_the_one_liner_in_the_section_is_the_one_the_cli_prints() -> None:
    section = _section()
    printed = install_one_liner("https://cp.example.com", "TOKEN")
    assert f"# {printed}" in section
    upgrade = printed.removesuffix(" --token TOKEN")
    assert upgrade in section
