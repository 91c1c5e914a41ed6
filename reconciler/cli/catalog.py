"""``reconcile catalog list|show``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from reconciler.cli.app import CatalogOption, ListFormat, _catalog, _console, catalog_app
from reconciler.cli.term import error, styled

__all__ = ["catalog_list", "catalog_show"]


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
        cell = styled(("invalid manifest ", "red"), desc) if not row["valid"] else desc
        table.add_row(str(row["name"]), version, cell)
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
        err.print(error(f"no app {name!r} in the catalog{hint}"))
        raise typer.Exit(1)
    entry = cat.entry(name, version)
    if entry is None:
        err.print(
            error(f"{name} has no version {version!r}; available: {', '.join(cat.versions(name))}")
        )
        raise typer.Exit(1)
    checked = cat.check(entry)
    m = checked.manifest
    if m is None or not checked.ok:
        for p in checked.problems:
            err.print(p.render())
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
    out.print(styled((m.display_name or m.name, "bold"), f" {m.version}  ({entry.display})"))
    if m.description:
        out.print(m.description)
    if m.website:
        out.print(f"website: {m.website}")
    out.print(f"versions: {', '.join(cat.versions(name))}")
    out.print(f"images: {', '.join(images)}")
    for route in m.routes:
        out.print(f"route: {route.match_var} -> {route.upstream}")
    if m.requirements:
        out.print(
            f"requirements: {m.requirements.memory_mb or '?'} MB, {m.requirements.cpus or '?'} CPU"
        )
    if m.vars:
        table = Table(title="vars", title_justify="left")
        for col in ("name", "container env", "required", "default", "secret", "description"):
            table.add_column(col)
        for v in m.vars:
            default = (
                f"generated ({v.generate})"
                if v.generate
                else ("" if v.default is None else ("***" if v.secret else str(v.default)))
            )
            table.add_row(
                v.name,
                v.env or v.name,
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
