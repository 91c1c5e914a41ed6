"""``reconcile plan PATH`` (and ``reconcile --dry-run PATH``): print the plan, touch nothing."""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

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

if TYPE_CHECKING:
    from reconciler.load.repo import DesiredState
    from reconciler.model.errors import Problem
    from reconciler.plan import Plan

__all__ = ["PlanFormat", "plan_command"]


class PlanFormat(enum.StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"
    github = "github"


class _PlanCommand(TyperCommand):
    """With ``--detailed-exitcode``, exit 2 means "changes" and nothing else.

    click exits 2 on every usage error (unknown flag, missing or bad value), which a CI
    step would read as "changes"; there it exits 1, as ``terraform plan
    -detailed-exitcode`` does.  Parsing happens in ``make_context``, before the command.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        detailed = "--detailed-exitcode" in args  # parsing consumes ``args``
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except Exception as exc:
            # click's UsageError (and BadParameter, ...) carry exit_code 2; typer vendors
            # click, so the class is matched by that code rather than imported.
            if detailed and getattr(exc, "exit_code", None) == 2:
                exc.exit_code = 1  # type: ignore[attr-defined]
            raise


@app.command("plan", cls=_PlanCommand)
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
    fmt: Annotated[
        PlanFormat,
        typer.Option(
            "--format",
            "-f",
            help="text; json or markdown (a whole document even when there is no plan); "
            "github: annotations, the plan as a notice, Markdown to $GITHUB_STEP_SUMMARY.",
        ),
    ] = PlanFormat.text,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 no changes, 2 changes, 1 invalid, error or usage error.",
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
    from reconciler.cli.against import DEFAULT_LOCAL_NOTE, load_actual
    from reconciler.load.desired import load_desired
    from reconciler.model.errors import InvalidSpec, ReconcilerError
    from reconciler.plan import PlanOptions, plan
    from reconciler.render import RenderContext, agents_of, render_all

    if catalog is not None and not catalog.is_dir():
        _refuse(fmt, f"catalog {catalog} is not a directory", valid=False)
    try:
        desired = load_desired(path, ref=ref, subpath=subpath, catalog=_catalog(catalog))
    except ReconcilerError as exc:
        problems = exc.problems if isinstance(exc, InvalidSpec) else []
        _refuse(fmt, str(exc), valid=False, problems=problems)
    state = desired.state
    if not state.ok:
        from reconciler.cli.report import summary_line

        verdict = summary_line(state.problems, len(state.deployments), len(state.files))
        _refuse(
            fmt,
            f"the desired state is invalid ({verdict.removeprefix('✗ ')})",
            valid=False,
            state=state,
        )
    try:
        actual, where = load_actual(against, agents=agents_of(state), state_dir=state_dir)
    except ReconcilerError as exc:
        _refuse(fmt, str(exc), valid=True, state=state)
    note = DEFAULT_LOCAL_NOTE if against is None and actual.source == "local" else None
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
    header = f"Plan for {desired.source} (namespace {result.namespace}) against {where}"
    _show(fmt, result, state, header=header, note=note, verbose=verbose)
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(2)


def _show(
    fmt: PlanFormat,
    result: Plan,
    state: DesiredState,
    *,
    header: str,
    note: str | None,
    verbose: bool,
) -> None:
    """The plan in one format; machine formats go to stdout unwrapped."""
    from reconciler.plan import report

    if fmt is PlanFormat.json:
        sys.stdout.write(report.json_plan(result) + "\n")
    elif fmt is PlanFormat.markdown:
        sys.stdout.write(report.markdown_plan(result, note=note))
    elif fmt is PlanFormat.github:
        from reconciler.cli.report import github_annotations, github_command
        from reconciler.cli.validate import display_for

        for line in github_annotations(state.problems, display_for(state.root)):
            sys.stdout.write(line + "\n")
        if note is not None:
            sys.stdout.write(github_command("warning", note, title="plan against this host") + "\n")
        body = [header, *(line for _style, line in report.text_plan(result, verbose=verbose))]
        body.append(report.summary_line(result))
        sys.stdout.write(
            github_command("notice", "\n".join(body), title=report.summary_line(result)) + "\n"
        )
        _step_summary(report.markdown_plan(result, note=note))
    else:
        from reconciler.cli.term import text

        out = _console()
        out.print(text(header, "bold"))
        out.print()
        for style, line in report.text_plan(result, verbose=verbose):
            out.print(text(line, style))
        if any(a.action != "noop" for a in result.actions) or verbose:
            out.print()
        out.print(text(report.summary_line(result), "bold"))


def _refuse(
    fmt: PlanFormat,
    error: str,
    *,
    valid: bool,
    state: DesiredState | None = None,
    problems: Sequence[Problem] = (),
) -> NoReturn:
    """No plan: say why in the chosen format, and exit 1.

    Machine formats still print a whole document on stdout (a JSON object, a Markdown
    report, annotations), so a CI step that posts or parses it never gets an empty file;
    the problems also go to stderr as text, for the job's log.
    """
    from reconciler.cli import report
    from reconciler.cli.term import error as error_line
    from reconciler.cli.validate import display_for, print_problems

    if state is not None:
        problems = state.problems
    display = display_for(state.root) if state is not None else str
    err = _console(stderr=True)
    if state is not None and not state.ok:
        print_problems(state, err, display)
        err.print(error_line("No plan: the desired state is invalid (nothing was touched)."))
    else:
        err.print(error_line(error))
    root = str(state.root) if state is not None else None
    if fmt is PlanFormat.json:
        sys.stdout.write(report.json_refusal(problems, error=error, valid=valid, root=root) + "\n")
    elif fmt is PlanFormat.markdown:
        sys.stdout.write(report.markdown_refusal(problems, display, error=error))
    elif fmt is PlanFormat.github:
        for line in report.github_annotations(problems, display):
            sys.stdout.write(line + "\n")
        sys.stdout.write(report.github_command("error", error, title="No plan") + "\n")
        _step_summary(report.markdown_refusal(problems, display, error=error))
    raise typer.Exit(1)


def _step_summary(markdown: str) -> None:
    """Append to the job summary GitHub Actions shows, when this runs there."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        from reconciler.cli.report import github_command

        message = f"could not append the plan to $GITHUB_STEP_SUMMARY ({target}): {exc}"
        sys.stdout.write(github_command("warning", message) + "\n")
