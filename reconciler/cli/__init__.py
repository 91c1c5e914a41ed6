"""The ``reconcile`` command line.

Heavy modules are imported inside the commands that need them, so ``validate`` and
``--dry-run`` start fast.  Exit codes are part of the interface: 0 success (valid, or no
changes), 1 invalid or failed, 2 usage error -- or, with ``--detailed-exitcode``,
changes present.
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
    plan,
    serve,
    status,
    validate,
)
from reconciler.cli.app import app

__all__ = ["app", "main", "rewrite_argv"]

COMMANDS = frozenset({"validate", "plan", "catalog", "status", "apply", "serve", "agent", "hook"})


def rewrite_argv(argv: list[str]) -> list[str]:
    """``reconcile --dry-run PATH`` is ``reconcile plan PATH``; ``reconcile PATH`` is apply.

    A click group cannot take both a positional PATH and subcommands, so the spellings
    DESIGN promises (``reconcile --dry-run``, literally, for CI; plain ``reconcile PATH``)
    are mapped onto the ``plan`` and ``apply`` commands before typer sees them.
    """
    first = next((a for a in argv if not a.startswith("-")), None)
    if "--dry-run" not in argv:
        if first is not None and first not in COMMANDS and argv[0] == first:
            import os

            if os.path.isdir(first):
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


def main() -> None:
    app(args=rewrite_argv(sys.argv[1:]), prog_name="reconcile")
