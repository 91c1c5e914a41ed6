"""The ``reconcile`` command line.

Heavy modules are imported inside the commands that need them, so ``validate`` and
``--dry-run`` start fast.  Exit codes are part of the interface: 0 success (valid, or no
changes), 1 invalid or failed, 2 usage error -- or, with ``--detailed-exitcode``,
changes present.
"""

from __future__ import annotations

import sys

from reconciler.cli import catalog, plan, status, validate  # noqa: F401  (registers the commands)
from reconciler.cli.app import app

__all__ = ["app", "main", "rewrite_argv"]

COMMANDS = frozenset({"validate", "plan", "catalog", "status", "apply", "serve", "agent"})


def rewrite_argv(argv: list[str]) -> list[str]:
    """``reconcile --dry-run PATH`` is ``reconcile plan PATH``.

    A click group cannot take both a positional PATH and subcommands, so the one
    spelling DESIGN promises (``reconcile --dry-run``, literally, for CI) is mapped
    onto the ``plan`` command before typer sees it.
    """
    if "--dry-run" not in argv:
        return argv
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS and first != "plan":
        return argv
    rest = [a for a in argv if a != "--dry-run"]
    if first == "plan":
        return rest
    return ["plan", *rest]


def main() -> None:
    app(args=rewrite_argv(sys.argv[1:]), prog_name="reconcile")
