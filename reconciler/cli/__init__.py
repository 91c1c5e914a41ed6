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

from reconciler.cli import (  # noqa: F401  (registers the commands)
    apply,
    backup,
    catalog,
    day2,
    mcp,
    plan,
    serve,
    status,
    validate,
)
from reconciler.cli.app import app

__all__ = ["app", "main", "not_a_directory", "rewrite_argv"]

COMMANDS = frozenset(
    {"validate", "plan", "catalog", "status", "apply", "serve", "agent", "hook", "mcp"}
    # day-2 commands (reconciler.cli.day2)
    | {"logs", "restart", "show", "history", "rollback", "credentials", "backup", "events"}
)


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
    app(args=rewrite_argv(argv), prog_name="reconcile")
