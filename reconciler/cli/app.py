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

# -h is --help on every command: click hands help_option_names down to the subcommands.
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="reconcile",
    help="Declarative GitOps for Docker Compose hosts.",
    # --install-completion / --show-completion (bash, zsh, fish, powershell)
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP_OPTIONS,
)
catalog_app = typer.Typer(help="Browse the app catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


def _print_version(value: bool) -> None:
    if value:
        from reconciler import __version__

        typer.echo(f"reconcile (compose-reconciler) {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Declarative GitOps for Docker Compose hosts."""


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
    """The catalog a command reads; exits 1 with the reason when it is missing or empty.

    The shipped schemas are checked here too, so an incomplete installation is one clear
    line before any work, not a traceback in the middle of a validation.
    """
    from reconciler.cli.term import error
    from reconciler.load.catalog import Catalog
    from reconciler.load.packaged import MissingData
    from reconciler.load.schema import SCHEMA_NAMES, schema

    try:
        for name in SCHEMA_NAMES:
            schema(name)
        if path is None:
            return Catalog.builtin()
        return Catalog.at(path.resolve(), display_root=str(path))
    except MissingData as exc:
        _console(stderr=True).print(error(str(exc)))
        raise typer.Exit(1) from None
