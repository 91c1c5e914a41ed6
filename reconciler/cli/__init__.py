"""The ``reconcile`` command line.

Heavy modules are imported inside the commands that need them, so ``validate`` and
``--dry-run`` start fast.  Exit codes are part of the interface: 0 valid, 1 invalid or
failed, 2 usage error.
"""

from __future__ import annotations

import enum
import pathlib
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.load.catalog import Catalog

__all__ = ["app", "main"]

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


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _catalog(path: pathlib.Path | None) -> Catalog:
    from reconciler.load.catalog import Catalog

    if path is None:
        return Catalog.builtin()
    if not path.is_dir():
        _console(stderr=True).print(f"[red]error:[/] catalog {path} is not a directory")
        raise typer.Exit(1)
    return Catalog(path.resolve(), display_root=str(path))


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

    cwd = pathlib.Path.cwd().resolve()

    def display(file: str) -> str:
        """Relative to the working directory, so editors and CI annotations can open it."""
        target = root / file
        try:
            return target.relative_to(cwd).as_posix()
        except ValueError:
            return str(target)

    if fmt is ReportFormat.json:
        sys.stdout.write(
            report.json_report(
                problems,
                root=str(root),
                deployments=[d.name for d in state.deployments],
                files=len(state.files),
            )
            + "\n"
        )
    elif fmt is ReportFormat.github:
        for line in report.github_annotations(problems, display):
            sys.stdout.write(line + "\n")
        sys.stdout.write(
            report.summary_line(problems, len(state.deployments), len(state.files)) + "\n"
        )
    else:
        console = _console()
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
            return lines[line - 1]

        from rich.text import Text

        for style, text in report.text_report(problems, display, source_line):
            console.print(Text(text, style=style))
        summary = report.summary_line(problems, len(state.deployments), len(state.files))
        if strict and problems and not state.errors:
            summary += " — failing: --strict treats warnings as errors"
        console.print(Text(summary, style="bold red" if failed else "bold green"))
    raise typer.Exit(1 if failed else 0)


@catalog_app.command("list")
def catalog_list(
    fmt: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.text,
    catalog: CatalogOption = None,
) -> None:
    """List the catalog's apps with their newest version."""
    import json

    cat = _catalog(catalog)
    rows = []
    for name in cat.apps():
        latest = cat.latest(name)
        entry = cat.entry(name, latest)
        assert entry is not None
        checked = cat.check(entry)
        m = checked.manifest
        rows.append(
            {
                "name": name,
                "latest": latest,
                "versions": cat.versions(name),
                "description": m.description if m else None,
                "valid": checked.ok,
            }
        )
    if fmt is ListFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} apps", title_justify="left")
    table.add_column("app", style="bold")
    table.add_column("version")
    table.add_column("description")
    for row in rows:
        versions = row["versions"]
        assert isinstance(versions, list)
        version = str(row["latest"]) + (f" (+{len(versions) - 1})" if len(versions) > 1 else "")
        desc = str(row["description"] or "")
        if not row["valid"]:
            desc = "[red]invalid manifest[/] " + desc
        table.add_row(str(row["name"]), version, desc)
    _console().print(table)


@catalog_app.command("show")
def catalog_show(
    name: Annotated[str, typer.Argument(help="App name, e.g. vaultwarden.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Default: the newest.")
    ] = None,
    fmt: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.text,
    catalog: CatalogOption = None,
) -> None:
    """Show one app: description, vars, routes, images, requirements."""
    import json

    cat = _catalog(catalog)
    err = _console(stderr=True)
    if name not in cat.index:
        close = cat.suggest_app(name)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        err.print(f"[red]error:[/] no app {name!r} in the catalog{hint}")
        raise typer.Exit(1)
    entry = cat.entry(name, version)
    if entry is None:
        err.print(
            f"[red]error:[/] {name} has no version {version!r}; "
            f"available: {', '.join(cat.versions(name))}"
        )
        raise typer.Exit(1)
    checked = cat.check(entry)
    m = checked.manifest
    if m is None or not checked.ok:
        for p in checked.problems:
            err.print(p.render(), markup=False)
        raise typer.Exit(1)
    images = _images(checked.compose.data if checked.compose else None)
    if fmt is ListFormat.json:
        data = m.model_dump(mode="json", exclude_none=True)
        data["images"] = images
        data["versions"] = cat.versions(name)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.table import Table

    out = _console()
    out.print(f"[bold]{m.display_name or m.name}[/] {m.version}  ({entry.display})")
    if m.description:
        out.print(m.description, markup=False)
    if m.website:
        out.print(f"website: {m.website}", markup=False)
    out.print(f"versions: {', '.join(cat.versions(name))}", markup=False)
    out.print(f"images: {', '.join(images)}", markup=False)
    for route in m.routes:
        out.print(f"route: {route.match_var} -> {route.upstream}", markup=False)
    if m.requirements:
        out.print(
            f"requirements: {m.requirements.memory_mb or '?'} MB, {m.requirements.cpus or '?'} CPU",
            markup=False,
        )
    if m.vars:
        table = Table(title="vars", title_justify="left")
        for col in ("name", "required", "default", "secret", "description"):
            table.add_column(col)
        for v in m.vars:
            default = (
                f"generated ({v.generate})"
                if v.generate
                else ("" if v.default is None else ("***" if v.secret else str(v.default)))
            )
            table.add_row(
                v.name,
                "yes" if v.required else "",
                default,
                "yes" if v.secret else "",
                v.description or "",
            )
        out.print(table)


def _images(compose: object) -> list[str]:
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return []
    return sorted(
        {
            str(s["image"])
            for s in compose["services"].values()
            if isinstance(s, dict) and "image" in s
        }
    )


def main() -> None:
    app(prog_name="reconcile")
