"""The typer application and the options commands share.

Heavy modules are imported inside the commands that need them, so ``validate`` and
``--dry-run`` start fast.  Exit codes are part of the interface: 0 valid, 1 invalid or
failed, 2 usage error.
"""

from __future__ import annotations

import enum
import pathlib
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.load.catalog import Catalog

__all__ = [
    "CatalogOption",
    "MassPruneOption",
    "PruneOption",
    "RefOption",
    "ReportFormat",
    "SourceArgument",
    "StateDirOption",
    "SubpathOption",
    "app",
    "catalog_app",
]

app = typer.Typer(
    name="reconcile",
    help="Declarative GitOps for Docker Compose hosts.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(help="Browse the app catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


class ReportFormat(enum.StrEnum):
    text = "text"
    json = "json"
    github = "github"


class ListFormat(enum.StrEnum):
    text = "text"
    json = "json"


CatalogOption = Annotated[
    pathlib.Path | None,
    typer.Option(
        "--catalog",
        help="Catalog directory to use instead of the built-in one.",
        envvar="RECONCILE_CATALOG",
        show_default=False,
    ),
]


SourceArgument = Annotated[
    str, typer.Argument(help="The desired-state repository: a directory or a git URL.")
]
RefOption = Annotated[
    str | None,
    typer.Option(
        "--ref", help="With a git URL: branch, tag or commit (default main).", show_default=False
    ),
]
SubpathOption = Annotated[
    str | None,
    typer.Option(
        "--path", help="With a git URL: the repository's directory inside it.", show_default=False
    ),
]


PruneOption = Annotated[
    bool | None,
    typer.Option("--prune/--no-prune", help="Override reconcile.yaml's prune.", show_default=False),
]
MassPruneOption = Annotated[
    bool, typer.Option("--allow-mass-prune", help="Allow pruning past max_prune_share.")
]
StateDirOption = Annotated[
    pathlib.Path | None,
    typer.Option(
        "--state-dir",
        envvar="RECONCILE_STATE_DIR",
        show_default=False,
        help="The host's state dir (default: /var/lib/reconciler as root, "
        "else $XDG_STATE_HOME/reconciler).",
    ),
]


def _console(stderr: bool = False) -> Console:
    from reconciler.cli.term import console

    return console(stderr=stderr)


def _catalog(path: pathlib.Path | None) -> Catalog:
    from reconciler.load.catalog import Catalog

    if path is None:
        return Catalog.builtin()
    if not path.is_dir():
        from reconciler.cli.term import error

        _console(stderr=True).print(error(f"catalog {path} is not a directory"))
        raise typer.Exit(1)
    return Catalog(path.resolve(), display_root=str(path))
