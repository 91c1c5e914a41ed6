"""``reconcile plan PATH`` (and ``reconcile --dry-run PATH``): print the plan, touch nothing."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from reconciler.cli.app import (
    CatalogOption,
    MassPruneOption,
    PruneOption,
    RefOption,
    SourceArgument,
    StateDirOption,
    SubpathOption,
    _catalog,
    _console,
    app,
)

__all__ = ["PlanFormat", "plan_command"]


class PlanFormat(enum.StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


@app.command("plan")
def plan_command(
    path: SourceArgument = ".",
    ref: RefOption = None,
    subpath: SubpathOption = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Actual state: local, empty, snapshot:FILE or a control-plane URL. "
            "Default: local when a Docker daemon answers, else empty.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f")] = PlanFormat.text,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="Exit 0 no changes, 2 changes, 1 invalid or error."
        ),
    ] = False,
    allow_mass_prune: MassPruneOption = False,
    prune: PruneOption = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show unchanged deployments too.")
    ] = False,
    state_dir: StateDirOption = None,
    catalog: CatalogOption = None,
) -> None:
    """Show what apply would do: install, update, uninstall, repair, noop, blocked."""
    from reconciler.cli.against import load_actual
    from reconciler.cli.validate import print_problems
    from reconciler.load.desired import load_desired
    from reconciler.model.errors import ReconcilerError
    from reconciler.plan import PlanOptions, plan, report
    from reconciler.render import RenderContext, agents_of, render_all

    err = _console(stderr=True)
    try:
        desired = load_desired(path, ref=ref, subpath=subpath, catalog=_catalog(catalog))
    except ReconcilerError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    state = desired.state
    if not state.ok:
        print_problems(state, err)
        err.print("[bold red]No plan: the desired state is invalid (nothing was touched).[/]")
        raise typer.Exit(1)
    try:
        actual, where = load_actual(against, agents=agents_of(state), state_dir=state_dir)
    except ReconcilerError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    # Rendered against the actual state: an auto domain someone else serves moves on.
    rendered = render_all(
        state,
        RenderContext(
            config=state.config,
            source_revision=desired.revision,
            git_revisions=desired.git_revisions,
        ),
        actual=actual,
    )
    options = PlanOptions(
        prune=state.config.prune if prune is None else prune,
        allow_mass_prune=allow_mass_prune,
        max_prune_share=state.config.max_prune_share,
    )
    result = plan(
        rendered,
        actual,
        namespace=state.config.namespace,
        options=options,
        unresolved=desired.unresolved,
    )
    if fmt is PlanFormat.json:
        sys.stdout.write(report.json_plan(result) + "\n")
    elif fmt is PlanFormat.markdown:
        sys.stdout.write(report.markdown_plan(result))
    else:
        from rich.text import Text

        out = _console()
        out.print(
            Text(
                f"Plan for {desired.source} (namespace {result.namespace}) against {where}",
                style="bold",
            )
        )
        out.print()
        for style, line in report.text_plan(result, verbose=verbose):
            out.print(Text(line, style=style))
        if any(a.action != "noop" for a in result.actions) or verbose:
            out.print()
        out.print(Text(report.summary_line(result), style="bold"))
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(2)
