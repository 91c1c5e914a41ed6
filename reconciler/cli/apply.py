"""``reconcile apply [PATH]`` (and plain ``reconcile PATH``): reconcile onto this host.

The embedded default needs no server: the local Docker Engine is the agent ``local``.
One reconcile = load (refuse on any error: nothing on the host changes) -> render ->
observe -> plan -> show -> apply with progress -> summary.  ``--watch`` repeats it on
file changes, on a timer, and when one of our containers dies or is removed.
"""

from __future__ import annotations

import enum
import json
import pathlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

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
from reconciler.cli.term import error, styled, text

if TYPE_CHECKING:
    from rich.console import Console

    from agent.executor import ActionResult

__all__ = ["apply_command", "reconcile_once"]


class ApplyFormat(enum.StrEnum):
    text = "text"
    json = "json"


@app.command("apply")
def apply_command(
    path: SourceArgument = ".",
    ref: RefOption = None,
    subpath: SubpathOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    prune: PruneOption = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Uninstalls also delete data/ and volumes.")
    ] = False,
    allow_mass_prune: MassPruneOption = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Keep reconciling: on file changes, a timer, Docker events."),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="With --watch: seconds between timed runs.")
    ] = 60.0,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            help="Seconds a service without a healthcheck must run without a restart.",
        ),
    ] = 2.0,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            min=1,
            help="Deployments applied at once (uninstalls first; `docker compose up` is "
            "bounded apart, one per core). Default: 16 per core, at least 4.",
        ),
    ] = None,
    state_dir: StateDirOption = None,
    fmt: Annotated[ApplyFormat, typer.Option("--format", "-f")] = ApplyFormat.text,
    catalog: CatalogOption = None,
    no_fast_path: Annotated[
        bool,
        typer.Option(
            "--no-fast-path",
            help="Run the whole reconcile even when nothing changed since the last no-op "
            "(also RECONCILE_NO_FAST_PATH=1).",
        ),
    ] = False,
) -> None:
    """Reconcile the repository onto the local Docker host, behind the proxy.

    A run whose inputs (repository, environment, state dir, containers, proxy) are those
    of the last no-op prints that run's output again without loading the rest.
    """
    del no_fast_path  # read by reconciler.cli.fastpath, before this module is imported
    from agent.observe import docker_available
    from agent.statedir import default_state_dir

    err = _LazyConsole(stderr=True)
    if not docker_available():
        err.print(
            error(
                "no Docker daemon answers; start it "
                "(`bash scripts/setup.sh --docker`) or use `reconcile --dry-run`"
            )
        )
        raise typer.Exit(1)
    options = _Options(
        path=path,
        ref=ref,
        subpath=subpath,
        yes=yes,
        prune=prune,
        purge=purge,
        allow_mass_prune=allow_mass_prune,
        settle=settle,
        parallel=parallel,
        state_dir=state_dir or default_state_dir(),
        fmt=fmt,
        catalog=catalog,
    )
    if not watch:
        ok = reconcile_once(options)
        raise typer.Exit(0 if ok else 1)
    _watch(options, interval)


class _LazyConsole:
    """A rich Console made on first use: a ``-f json`` run that prints nothing through rich
    never imports it (~25 ms of a no-op's start-up)."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            self._console = _console(stderr=self._stderr)
        return self._console

    def print(self, *args: Any, **kwargs: Any) -> None:
        self.get().print(*args, **kwargs)


@dataclass
class _Options:
    path: str
    ref: str | None
    subpath: str | None
    yes: bool
    prune: bool | None
    purge: bool
    allow_mass_prune: bool
    settle: float
    parallel: int | None
    state_dir: pathlib.Path
    fmt: ApplyFormat
    catalog: pathlib.Path | None


def reconcile_once(opts: _Options, *, interactive: bool = True) -> bool:
    """One reconcile.  True when the host matches the repository afterwards."""
    from agent.compose import WhalesComposeDriver
    from agent.executor import Executor, ExecutorSettings, default_parallel
    from agent.observe import observe_local
    from agent.onion import TorSettings, TorSidecar
    from agent.proxy import CaddyProxy, ProxySettings
    from agent.statedir import save_proxy_config
    from agent.watch import DockerWatch
    from reconciler.cli.validate import print_problems
    from reconciler.load.desired import load_desired
    from reconciler.model.errors import ReconcilerError
    from reconciler.model.ids import LOCAL_AGENT
    from reconciler.model.state import ActualState
    from reconciler.plan import PlanOptions, plan, report
    from reconciler.render import RenderContext, render_all

    out = _LazyConsole()
    err = _LazyConsole(stderr=True)
    machine = opts.fmt is ApplyFormat.json
    try:
        desired = load_desired(
            opts.path, ref=opts.ref, subpath=opts.subpath, catalog=_catalog(opts.catalog)
        )
    except ReconcilerError as exc:
        err.print(error(f"{exc}; nothing applied"))
        return False
    state = desired.state
    if not state.ok:
        print_problems(state, err.get())
        refused = "Nothing applied: the desired state is invalid; the host was not touched."
        err.print(text(refused, "bold red"))
        return False
    config = state.config
    actual = ActualState(
        source="local", agents={"local": observe_local(state_dir=opts.state_dir, agent="local")}
    )
    # Rendered against the actual state: an auto domain someone else serves moves on.
    rendered = render_all(
        state,
        RenderContext(
            config=config, source_revision=desired.revision, git_revisions=desired.git_revisions
        ),
        actual=actual,
    )
    options = PlanOptions(
        prune=config.prune if opts.prune is None else opts.prune,
        allow_mass_prune=opts.allow_mass_prune,
        max_prune_share=config.max_prune_share,
    )
    result = plan(
        rendered,
        actual,
        namespace=config.namespace,
        options=options,
        unresolved=desired.unresolved,
    )
    if not machine:
        for style, line in report.text_plan(result):
            out.print(text(line, style))
        out.print(text(report.summary_line(result), "bold"))

    try:
        proxy = CaddyProxy(ProxySettings.from_config(config.proxy, opts.state_dir))
    except ReconcilerError as exc:
        err.print(error(f"{exc}; nothing applied"))
        return False
    save_proxy_config(opts.state_dir, config.proxy)  # for `reconcile rollback` (no repository)
    settings = ExecutorSettings(settle_seconds=opts.settle, purge=opts.purge)

    executor = Executor(
        state_dir=opts.state_dir,
        driver=WhalesComposeDriver(),
        proxy=proxy,
        watch=DockerWatch(),
        settings=settings,
        onion=TorSidecar(TorSettings.from_env(opts.state_dir, network=config.proxy.network)),
        max_parallel=opts.parallel or default_parallel(),
    )
    to_do = [a for a in result.actions if a.action in ("install", "update", "repair", "uninstall")]
    if to_do and interactive and not opts.yes:
        if not sys.stdin.isatty():
            err.print(error("changes need confirmation: pass --yes"))
            return False
        if not typer.confirm("Apply these changes?", default=False):
            err.print("Nothing applied.")
            return False
    results: list[ActionResult] = []
    started = time.monotonic()
    pushes = executor.host.pushes
    if to_do and machine:
        results = executor.run(result, rendered, state.root)
    elif to_do:
        from reconciler.cli.progress import Progress

        console = out.get()
        local = [a for a in to_do if a.agent == LOCAL_AGENT]
        with Progress(console, local, live=console.is_terminal) as progress:
            executor.on_event = progress.on_event
            results = executor.run(result, rendered, state.root)
    # A batch that pushed and all went well left the proxy and Tor serving exactly the
    # records (its pushes carried them): repairing again would only repeat the check.
    pushed = executor.host.pushes > pushes and all(r.ok for r in results)
    if (any(d.routes or d.onion for d in rendered) or to_do) and not pushed:
        # Routes are repaired on every reconcile: a hand-edited or recreated proxy heals;
        # so is the Tor sidecar (nothing to do, and no Docker call, without onion apps).
        executor.repair_host()
    executor.host.close()
    blocked = [a for a in result.actions if a.action == "blocked"]
    ok = all(r.ok or r.skipped for r in results) and not blocked
    if (
        ok
        and not results
        and all(a.action == "noop" for a in result.actions)
        and not desired.git_revisions
        and not desired.unresolved
        and not any(d.onion for d in rendered)
    ):
        from reconciler.cli import fastpath

        fastpath.mark_noop()  # this run's output may be replayed while nothing changes
    if machine:
        sys.stdout.write(_json_summary(result, results, time.monotonic() - started) + "\n")
    else:
        _summary_table(out.get(), result, results)
    return ok


def _summary_table(out: Console, plan: Any, results: list[ActionResult]) -> None:
    from rich.table import Table

    if not results:
        blocked = [a for a in plan.actions if a.action == "blocked"]
        for a in blocked:
            out.print(styled(("blocked", "bold red"), f" {a.deployment}: {a.reason}"))
        return
    table = Table(title="Result", title_justify="left")
    for col in ("deployment", "action", "result", "url", "time"):
        table.add_column(col)
    for r in results:
        verdict = (
            ("ok", "green") if r.ok else ("skipped", "dim") if r.skipped else ("failed", "red")
        )
        table.add_row(
            r.action.deployment,
            r.action.action,
            styled(verdict, " ", _one_line(r)),
            r.url or "",
            f"{r.seconds:.1f}s",
        )
    out.print(table)
    for r in results:
        if not r.ok and r.logs:
            out.print(styled((r.action.deployment, "bold red"), " last log lines:"))
            out.print(r.logs)


def _one_line(r: ActionResult) -> str:
    """The classified reason on one line; the full text is in ``-f json`` and status."""
    if r.failure is None:
        return r.message.splitlines()[0] if r.message else ""
    return r.failure.headline() + ("; rolled back" if r.rolled_back else "")


def _json_summary(plan: Any, results: list[ActionResult], seconds: float) -> str:
    return json.dumps(
        {
            "format_version": 1,
            "plan": plan.model_dump(mode="json"),
            "results": [
                {
                    "deployment": r.action.deployment,
                    "id": r.action.id,
                    "action": r.action.action,
                    "ok": r.ok,
                    "skipped": r.skipped,
                    "rolled_back": r.rolled_back,
                    "message": r.message,
                    # classified: step, kind, reason, hint and the output's last lines
                    "failure": r.failure.as_dict() if r.failure is not None else None,
                    "url": r.url,
                    "seconds": round(r.seconds, 3),
                }
                for r in results
            ],
            "seconds": round(seconds, 3),
        },
        indent=2,
    )


def _watch(opts: _Options, interval: float) -> None:
    """Level-triggered loop: any trigger means 'reconcile now', bursts coalesce."""
    err = _LazyConsole(stderr=True)
    wake = threading.Event()
    stop = threading.Event()

    def files() -> None:
        from watchfiles import watch as watch_files

        if not pathlib.Path(opts.path).is_dir():
            return  # a git source: the timer (and a webhook, with the server) fetches it
        for _changes in watch_files(opts.path, stop_event=stop, debounce=300, step=100):
            wake.set()

    def docker_events() -> None:
        from agent.engine import local_engine
        from reconciler.model.ids import LABEL_DEPLOYMENT

        filters = {
            "type": "container",
            "label": LABEL_DEPLOYMENT,
            "event": ["die", "destroy", "oom", "kill"],
        }
        while not stop.is_set():
            try:
                # A local socket: the stdlib stream (the SDK would add ~9 MB resident).
                engine = local_engine()
                if engine is not None:
                    events: Any = engine.events(filters=filters)
                else:
                    import docker

                    events = docker.from_env().events(decode=True, filters=filters)
                for _event in events:
                    wake.set()
                    if stop.is_set():
                        return
            except Exception:
                time.sleep(1)

    for target in (files, docker_events):
        threading.Thread(target=target, daemon=True).start()
    try:
        while True:
            wake.clear()
            try:
                reconcile_once(opts, interactive=False)
            except Exception as exc:
                err.print(error(exc, "reconcile failed:"))
            wake.wait(timeout=interval)
            time.sleep(0.2)  # let a burst of events land in one run
    except KeyboardInterrupt:
        stop.set()
