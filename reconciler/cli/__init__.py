"""The ``reconcile`` command line.

Heavy modules are imported inside the commands that need them, so ``validate`` and
``--dry-run`` start fast.  Exit codes are part of the interface: 0 success (valid, or no
changes), 1 invalid or failed, 2 usage error -- or, with ``--detailed-exitcode``,
changes present (a usage error then exits 1).
"""

from __future__ import annotations

import os
import sys

# pydantic scans every installed distribution for plugins on first use (~30-40 ms of
# every command's start-up); this CLI uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import importlib
import types
from typing import TYPE_CHECKING

# typer (and the app module, which imports it) is imported by `load_commands`, not here:
# the no-op fast path (reconciler.cli.fastpath) answers before it is needed.  The command
# modules too: a process that runs one command registers only that command's module (see
# `main`), and `app` (PEP 562, below) registers them all for everyone else.

if TYPE_CHECKING:
    import typer

    from reconciler.cli.app import app as app

__all__ = ["app", "load_commands", "main", "modules_for", "not_a_directory", "rewrite_argv"]

# Every command module, in the order the full set registers them (the order of --help).
COMMAND_MODULES = (
    "apply",
    "backup",
    "catalog",
    "day2",
    "mcp",
    "plan",
    "serve",
    "status",
    "validate",
)
# Commands whose module registers nothing another one needs: a run of one of them imports
# only that module.  Groups (agent, catalog, hook, mcp, serve) take subcommands from
# several modules, so they, like everything else, load the full set.
LEAF_COMMANDS = {"apply": "apply", "plan": "plan", "status": "status", "validate": "validate"}
COMMANDS = frozenset(
    {"validate", "plan", "catalog", "status", "apply", "serve", "agent", "hook", "mcp"}
    # day-2 commands (reconciler.cli.day2)
    | {"logs", "restart", "show", "history", "rollback", "credentials", "backup", "events"}
)
# Whatever lists the commands (help, typo suggestions) or completes them needs them all.
_LISTING_FLAGS = frozenset({"-h", "--help", "--install-completion", "--show-completion"})


def load_commands(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """Register the commands of ``modules`` on the typer app, and return the app.

    typer builds a click command of every registered command on each run (13.5 ms for all
    17, 1.8 ms for one, besides importing their modules), so ``main`` registers the one
    it runs.
    """
    app_module = importlib.import_module("reconciler.cli.app")
    for name in modules:
        importlib.import_module(f"reconciler.cli.{name}")
    return app_module.app  # type: ignore[no-any-return]


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules a run of ``argv`` (as rewritten by `rewrite_argv`) needs."""
    if not argv or argv[0] not in LEAF_COMMANDS or _LISTING_FLAGS.intersection(argv):
        return COMMAND_MODULES
    if "_RECONCILE_COMPLETE" in os.environ:  # click's shell completion
        return COMMAND_MODULES
    return (LEAF_COMMANDS[argv[0]],)


class _Package(types.ModuleType):
    """``from reconciler.cli import app`` is the typer app with every command registered.

    Importing the submodule ``reconciler.cli.app`` (any command module does) binds the
    package's ``app`` attribute to that module; the property ignores that binding, so the
    name stays the typer app, whenever and by whom the submodule was imported.
    """

    @property
    def app(self) -> typer.Typer:
        return load_commands()

    @app.setter
    def app(self, _module: object) -> None:
        pass


sys.modules[__name__].__class__ = _Package


def rewrite_argv(argv: list[str]) -> list[str]:
    """``reconcile --dry-run PATH`` is ``reconcile plan PATH``; ``reconcile PATH`` is apply.

    A click group cannot take both a positional PATH and subcommands, so the spellings
    DESIGN promises (``reconcile --dry-run``, literally, for CI; plain ``reconcile PATH``)
    are mapped onto the ``plan`` and ``apply`` commands before typer sees them.
    """
    first = next((a for a in argv if not a.startswith("-")), None)
    if "--dry-run" not in argv:
        if (
            first is not None
            and first not in COMMANDS
            and argv[0] == first
            and (os.path.isdir(first) or _is_git_url(first))
        ):
            return ["apply", *argv]
        return argv
    if first in COMMANDS and first not in ("plan", "apply"):
        return argv
    rest = [a for a in argv if a != "--dry-run"]
    if first == "apply":
        # `apply --dry-run` plans; options only apply takes are meaningless there.
        rest.remove("apply")
        rest = [a for a in rest if a not in ("--yes", "-y", "--purge", "--watch")]
    elif first == "plan":
        return rest
    return ["plan", *rest]


def _is_git_url(source: str) -> bool:
    return "://" in source or source.startswith("git@")


def not_a_directory(argv: list[str]) -> str | None:
    """Why ``reconcile PATH`` cannot apply PATH, when PATH is clearly meant as a path.

    Without this, click answers "No such command '/no/such/dir'" to a mistyped path.
    A bare word (``reconcile statsu``) is left to click: that is more likely a command.
    """
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS or "--dry-run" in argv:
        return None
    first = argv[0]
    if os.path.isdir(first) or _is_git_url(first):
        return None
    if os.path.exists(first):
        return f"{first} is not a directory (give the desired-state repository's directory)"
    if os.sep in first or "/" in first or first.startswith((".", "~")):
        return f"directory {first} does not exist"
    return None


def main() -> None:
    argv = sys.argv[1:]
    problem = not_a_directory(argv)
    if problem is not None:
        from reconciler.cli.app import _console
        from reconciler.cli.term import error

        _console(stderr=True).print(error(problem))
        sys.exit(1)
    args = rewrite_argv(argv)
    from reconciler.cli import fastpath

    session = fastpath.begin(args)  # exits here when the no-op is proven unchanged
    if session is None:
        load_commands(modules_for(args))(args=args, prog_name="reconcile")
        return
    code: object = 1  # an exception (a bug, ^C): no record
    try:
        load_commands(modules_for(args))(args=args, prog_name="reconcile")
        code = 0
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        session.finish(code)
