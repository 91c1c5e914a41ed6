"""``reconcile validate``."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import CatalogOption, ReportFormat, _catalog, _console, app
from reconciler.model.redact import redact

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.load.repo import DesiredState

__all__ = ["display_for", "print_problems", "validate"]


@app.command()
def validate(
    path: Annotated[
        pathlib.Path, typer.Argument(help="The desired-state repository.", show_default=True)
    ] = pathlib.Path("."),
    fmt: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="Output format.")
    ] = ReportFormat.text,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    catalog: CatalogOption = None,
) -> None:
    """Check every deployment file; report all problems with file, line and fix.

    Exit 0 when valid (warnings allowed unless --strict), 1 when not.
    """
    from reconciler.cli import report
    from reconciler.load.repo import load_repository

    state = load_repository(path, catalog=_catalog(catalog))
    problems = list(state.problems)
    failed = bool(state.errors) or (strict and bool(problems))
    root = state.root

    display = display_for(root)
    summary = report.summary_line(problems, len(state.deployments), len(state.files), strict=strict)

    if fmt is ReportFormat.json:
        sys.stdout.write(
            report.json_report(
                problems,
                root=str(root),
                deployments=[d.name for d in state.deployments],
                files=len(state.files),
                strict=strict,
            )
            + "\n"
        )
    elif fmt is ReportFormat.github:
        for line in report.github_annotations(problems, display, strict=strict):
            sys.stdout.write(line + "\n")
        sys.stdout.write(summary + "\n")
    else:
        console = _console()
        print_problems(state, console, display)
        from rich.text import Text

        console.print(Text(summary, style="bold red" if failed else "bold green"))
    raise typer.Exit(1 if failed else 0)


def print_problems(
    state: DesiredState, console: Console, display: Callable[[str], str] | None = None
) -> None:
    """Problems as compiler-style lines with the source line and a caret."""
    from reconciler.cli import report
    from reconciler.cli.term import text

    root = state.root
    cache: dict[str, list[str] | None] = {}

    def source_line(file: str, line: int) -> str | None:
        if file not in cache:
            try:
                cache[file] = (root / file).read_text(errors="replace").splitlines()
            except OSError:
                cache[file] = None
        lines = cache[file]
        if lines is None or not 0 < line <= len(lines):
            return None
        return redact(lines[line - 1])  # a `git_url:` line may hold a token

    shown = display or display_for(root)
    for style, line in report.text_report(state.problems, shown, source_line):
        console.print(text(line, style))


def display_for(root: pathlib.Path) -> Callable[[str], str]:
    cwd = pathlib.Path.cwd().resolve()

    def display(file: str) -> str:
        """Relative to the working directory, so editors and CI annotations can open it."""
        target = root / file
        try:
            return target.relative_to(cwd).as_posix()
        except ValueError:
            return str(target)

    return display
