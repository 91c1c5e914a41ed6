"""``reconcile status``: what runs on this host, as a table or as an actual-state snapshot.

``--format json`` writes the same :class:`ActualState` value that
``reconcile plan --against snapshot:FILE`` reads, so a host's state can be captured
once and planned against elsewhere (CI, a laptop) without touching Docker there.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import StateDirOption, _console, app
from reconciler.cli.term import error, styled

if TYPE_CHECKING:
    from reconciler.model.state import DeployedApp

__all__ = ["StatusFormat", "app_urls", "health_summary", "status_command"]


class StatusFormat(enum.StrEnum):
    text = "text"
    json = "json"


@app.command("status")
def status_command(
    state_dir: StateDirOption = None,
    fmt: Annotated[
        StatusFormat,
        typer.Option("--format", "-f", help="text: a table; json: an actual-state snapshot."),
    ] = StatusFormat.text,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Ask a control plane (GET /v1/deployments, RECONCILE_ADMIN_TOKEN) instead.",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="With --server: then print the commands' steps as the agents report them "
            "(GET /v1/events/stream), until interrupted. With -f json, one event per line.",
        ),
    ] = False,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment",
            help="With --follow: only this deployment's events (its name or dpl_ id).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show the deployments on this host: status, container health, URL, spec hash."""
    if (follow or deployment is not None) and server is None:
        _console(stderr=True).print(error("--follow and --deployment need --server URL"))
        raise typer.Exit(2)
    if server is not None:
        from reconciler.cli.serve import follow_events, remote_status

        remote_status(server, fmt is StatusFormat.json)
        if follow:
            follow_events(server, fmt is StatusFormat.json, deployment=deployment)
        return
    from agent.observe import docker_available, observe_local
    from agent.statedir import default_state_dir, list_records
    from reconciler.model.ids import LOCAL_AGENT
    from reconciler.model.state import ActualState

    err = _console(stderr=True)
    directory = state_dir if state_dir is not None else default_state_dir()
    if not docker_available():
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        err.print(
            error(
                f"no Docker daemon answers ({where}); start it "
                "(`bash scripts/setup.sh --docker`) or plan with `--against snapshot:FILE`"
            )
        )
        raise typer.Exit(1)
    local = observe_local(state_dir=directory, agent=LOCAL_AGENT)
    if not local.online:
        err.print(error(f"the local host is {local.reason}"))
        raise typer.Exit(1)
    if fmt is StatusFormat.json:
        snapshot = ActualState(source="local", agents={LOCAL_AGENT: local})
        sys.stdout.write(snapshot.model_dump_json(indent=2) + "\n")
        return

    from rich.table import Table
    from rich.text import Text

    records = {r.id: r for r in list_records(directory)}
    out = _console()
    apps = sorted(local.deployments.values(), key=lambda a: (a.namespace, a.name, a.id))
    title = f"Local host (state dir {directory})"
    if not apps:
        out.print(Text(f"{title}: no deployments.", style="bold"))
        return
    table = Table(title=title, title_justify="left", title_style="bold", show_lines=False)
    for column in ("name", "namespace", "id", "status", "health", "urls", "spec"):
        table.add_column(column, overflow="fold")
    for a in apps:
        rec = records.get(a.id)
        health, ok = health_summary(a, rec.one_shot if rec else ())
        status_style = {"running": "green", "failed": "red", "uninstalled": "dim"}[a.status]
        table.add_row(
            a.name,
            a.namespace or "-",
            a.id,
            Text(a.status + ("" if a.record is not None else " (labels only)"), status_style),
            Text(health, "green" if ok else "yellow" if a.status == "uninstalled" else "red"),
            "\n".join(app_urls(a, rec.url if rec else None)) or "-",
            a.spec_hash[:12] or "-",
        )
    out.print(table)
    counts = {
        s: sum(1 for a in apps if a.status == s) for s in ("running", "failed", "uninstalled")
    }
    out.print(
        Text(
            f"{len(apps)} deployment{'s' if len(apps) != 1 else ''}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
            style="bold",
        )
    )
    for a in apps:
        if a.status == "failed" and a.last_error:
            # Plain Text: the output of docker compose is never read as markup.
            out.print(styled((f"{a.name} failed: ", "bold red"), a.last_error))
    if local.free_networks is not None:
        out.print(
            Text(
                f"Networks: the Docker daemon can create {local.free_networks} more "
                "(default-address-pools); each new deployment needs one."
            )
        )


def app_urls(app_state: DeployedApp, record_url: str | None = None) -> list[str]:
    """Where an app answers: ``DeployedApp.urls`` (its ``DOMAIN_URL`` -- ``https://domain``,
    or ``http://domain:port`` with ``tls: off`` -- then ``http://<address>.onion``), else
    what the record knows.  Nothing for an uninstalled app: its routes are gone."""
    if app_state.status == "uninstalled":
        return []
    urls = list(app_state.urls)
    if not urls and record_url:
        urls.append(record_url)  # a record written before ``urls`` existed
    onion = app_state.onion_address
    if onion and f"http://{onion}" not in urls:
        urls.append(f"http://{onion}")
    return urls


def health_summary(app_state: DeployedApp, one_shot: Sequence[str] = ()) -> tuple[str, bool]:
    """``"2/2 running"`` plus what is wrong, and whether all is well.

    Long-running services count as up when a container of theirs runs (and is not
    unhealthy); one-shot services (``restart: "no"``) are fine once they exited 0.
    """
    if app_state.status == "uninstalled":
        extra = f", {len(app_state.containers)} containers left" if app_state.containers else ""
        return "uninstalled" + extra, not app_state.containers
    one = set(one_shot) | {c.service for c in app_state.containers if c.one_shot}
    services = sorted(set(app_state.services) | {c.service for c in app_state.containers})
    long_running = [s for s in services if s not in one]
    problems: list[str] = []
    up = 0
    for service in long_running:
        mine = [c for c in app_state.containers if c.service == service]
        if not mine:
            problems.append(f"{service} missing")
            continue
        running = [c for c in mine if c.status == "running"]
        if running and all(c.health != "unhealthy" for c in running):
            up += 1
        for c in mine:
            if c.status == "running" and c.health == "unhealthy":
                problems.append(f"{service} unhealthy")
            elif c.status == "running" and c.health == "starting":
                problems.append(f"{service} starting")
            elif c.status == "restarting":
                problems.append(f"{service} restarting ({c.restarts} restarts)")
            elif c.status != "running":
                code = f" ({c.exit_code})" if c.exit_code is not None else ""
                problems.append(f"{service} {c.status}{code}")
    for service in sorted(one & set(services)):
        for c in app_state.containers:
            if c.service != service:
                continue
            if c.status == "exited" and c.exit_code not in (0, None):
                problems.append(f"{service} exit {c.exit_code}")
            elif c.status in ("dead", "restarting"):
                problems.append(f"{service} {c.status}")
    text = f"{up}/{len(long_running)} running"
    if problems:
        text += ", " + ", ".join(problems)
    starting_only = all(p.endswith(" starting") for p in problems)
    return text, up == len(long_running) and (not problems or starting_only)
