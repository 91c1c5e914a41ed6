"""``reconcile mcp``: serve the MCP tools over stdio (or streamable HTTP on loopback)."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import CatalogOption, _console, app

if TYPE_CHECKING:
    from reconciler.mcp.snippets import AiTool

__all__ = ["mcp_app"]

mcp_app = typer.Typer(
    help="The MCP server for AI tools (Claude Code, Cursor, Codex, ...).",
    invoke_without_command=True,
)
app.add_typer(mcp_app, name="mcp")

MISSING_SDK = "the MCP server needs the `mcp` extra: pip install 'compose-reconciler[mcp]'"


@mcp_app.callback()
def mcp_command(
    ctx: typer.Context,
    repo: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--repo",
            help="A local git clone of the desired-state repository (changes are committed "
            "there, on new branches).",
            show_default=False,
        ),
    ] = None,
    push: Annotated[
        bool,
        typer.Option(
            "--push/--no-push",
            envvar="RECONCILE_MCP_PUSH",
            help="Push each change's branch to the clone's remote (the `mcp: {push: true}` "
            "switch). Off: the tools return the branch and the diff to review.",
        ),
    ] = False,
    remote: Annotated[str, typer.Option("--remote", help="The remote to push to.")] = "origin",
    http: Annotated[
        int | None,
        typer.Option(
            "--http",
            metavar="PORT",
            help="Serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio.",
            show_default=False,
        ),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Start the MCP server on a clone; RECONCILE_SERVER and RECONCILE_TOKEN from the env."""
    if ctx.invoked_subcommand is not None:
        return
    from reconciler.cli.term import error

    if repo is None:
        _console(stderr=True).print(error("give --repo PATH (a clone of the repository)"))
        raise typer.Exit(2)
    if not repo.is_dir():
        _console(stderr=True).print(error(f"--repo {repo} is not a directory"))
        raise typer.Exit(1)
    try:
        from reconciler.mcp.server import build_server
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("mcp", "mcp_types"):
            _console(stderr=True).print(error(MISSING_SDK))
            raise typer.Exit(1) from None
        raise
    from reconciler.mcp.settings import McpSettings
    from reconciler.model.errors import ReconcilerError

    try:
        settings = McpSettings.from_env(repo, catalog=catalog, push=push, remote=remote)
        server = build_server(settings)
    except ReconcilerError as exc:
        _console(stderr=True).print(error(str(exc)))
        raise typer.Exit(1) from None
    if http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=http)


@mcp_app.command("config")
def config_command(
    tool: Annotated[
        str,
        typer.Option("--tool", help="claude-code, cursor or codex.", show_default=False),
    ],
    repo: Annotated[
        pathlib.Path,
        typer.Option("--repo", help="The clone the server works on (default: here)."),
    ] = pathlib.Path("."),
) -> None:
    """Print the snippet that registers this MCP server with an AI tool."""
    from reconciler.mcp.snippets import AiTool, snippet

    try:
        chosen: AiTool = AiTool(tool)
    except ValueError:
        from reconciler.cli.term import error

        choices = ", ".join(t.value for t in AiTool)
        _console(stderr=True).print(error(f"--tool {tool!r}: use one of {choices}"))
        raise typer.Exit(2) from None
    command = shutil.which("reconcile") or "reconcile"
    sys.stdout.write(
        snippet(
            chosen,
            command=command,
            repo=str(repo.resolve()),
            server=os.environ.get("RECONCILE_SERVER") or None,
        )
    )
