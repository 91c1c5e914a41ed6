"""Day-2 commands on one deployment: ``reconcile logs``, ``restart``, ``show``,
``history``, ``rollback``, ``credentials``, ``backup``; and ``reconcile events`` and
``reconcile agent list`` for the control plane.

On this host they call :mod:`agent.operations` directly (the state dir and the Docker
Engine here).  With ``--server URL`` they ask the control plane
(``RECONCILE_ADMIN_TOKEN``), which hands the operation to the deployment's agent as a
command and returns its answer (:mod:`reconciler.server.operations`).

``logs -f --server`` polls: every second it asks for the lines since the previous
chunk's ``until`` (the agent's clock).  A real stream would need a connection from the
server to the agent, which does not exist (agents poll); polling costs one command per
second, and a line written at a chunk's edge can show twice, never not at all.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reconciler.cli.app import StateDirOption, _console, app
from reconciler.cli.serve import ServerOption, _admin_token, _answer, _fail, agent_app
from reconciler.cli.term import error, plain, styled, text

if TYPE_CHECKING:
    import pathlib

    from pydantic import BaseModel

    from agent.executor import Executor
    from reconciler.model.day2 import (
        DeploymentDetail,
        HistoryEntry,
        OperationKind,
        OperationRequest,
        OperationResult,
    )

__all__ = ["remote_operation"]

FOLLOW_INTERVAL = 1.0  # seconds between two chunks of `logs -f --server`


class Day2Format(enum.StrEnum):
    text = "text"
    json = "json"


NameArgument = Annotated[str, typer.Argument(help="The deployment: its name or its dpl_ id.")]
FormatOption = Annotated[
    Day2Format, typer.Option("--format", "-f", help="text for people, json for machines.")
]


# ---------------------------------------------------------------- the two ways


def _state_dir(state_dir: pathlib.Path | None) -> pathlib.Path:
    from agent.statedir import default_state_dir

    return state_dir if state_dir is not None else default_state_dir()


def _local_executor(state_dir: pathlib.Path) -> Executor:
    from agent.compose import WhalesComposeDriver
    from agent.executor import Executor
    from agent.onion import TorSettings, TorSidecar
    from agent.operations import saved_proxy_config
    from agent.proxy import CaddyProxy, ProxySettings
    from agent.watch import DockerWatch

    config = saved_proxy_config(state_dir)
    return Executor(
        state_dir=state_dir,
        driver=WhalesComposeDriver(),
        proxy=CaddyProxy(ProxySettings.from_config(config, state_dir)),
        watch=DockerWatch(),
        onion=TorSidecar(TorSettings.from_env(state_dir, network=config.network)),
    )


def remote_operation(
    server: str, request: OperationRequest, *, timeout: float | None = None
) -> OperationResult:
    """Ask the control plane to run ``request`` on the deployment's agent; its answer.

    Raises :class:`OperationError` when the server refuses (unknown deployment, agent
    offline) or the agent does not answer in time; exits on a transport or HTTP error.
    """
    from reconciler.client.operations import ServerRefused, ServerUnreachable, run_operation

    token = _admin_token()
    if not token:
        raise _fail("--server needs RECONCILE_ADMIN_TOKEN in the environment", 2)
    try:
        return run_operation(server, token, request, timeout=timeout)
    except (ServerUnreachable, ServerRefused) as exc:
        raise _fail(str(exc)) from None


def _run(
    op: OperationKind,
    name: str,
    state_dir: pathlib.Path | None,
    server: str | None,
    **fields: Any,
) -> dict[str, Any]:
    """The operation's answer as JSON data, wherever it ran; exits 1 on an OperationError."""
    from reconciler.model.day2 import OperationError, OperationRequest

    try:
        if server is not None:
            request = OperationRequest(op=op, deployment=name, **fields)
            result = remote_operation(server, request)
            if not result.ok:
                raise OperationError(result.error or f"{op} failed")
            return dict(result.payload or {})
        value = _local(op, name, _state_dir(state_dir), **fields)
        return value.model_dump(mode="json")
    except OperationError as exc:
        raise _fail(str(exc)) from None


def _local(op: OperationKind, name: str, state_dir: pathlib.Path, **fields: Any) -> BaseModel:
    from agent import operations as ops
    from reconciler.model.day2 import HistoryList

    if op == "logs":
        return ops.logs(
            state_dir, name, service=fields.get("service"), tail=fields.get("tail"),
            since=fields.get("since"),
        )  # fmt: skip
    if op == "restart":
        return ops.restart(state_dir, name)
    if op == "show":
        from agent.watch import DockerWatch

        return ops.show(state_dir, name, DockerWatch())
    if op == "history":
        return HistoryList(entries=ops.history(state_dir, name))
    if op == "rollback":
        return ops.rollback(_local_executor(state_dir), name, to=fields.get("to"))
    if op == "release":
        released = ops.release_hold(state_dir, name)
        return ops.show(state_dir, released.id)
    if op == "credentials":
        return ops.credentials(state_dir, name)
    from agent.compose import WhalesComposeDriver

    return ops.backup(state_dir, WhalesComposeDriver(), name)


def _json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- commands


@app.command("logs")
def logs_command(
    name: NameArgument,
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="Only this service.", show_default=False)
    ] = None,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, help="Lines per service.")] = 100,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only newer lines: 10m, 1h30m, or an RFC 3339 time."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    state_dir: StateDirOption = None,
    server: ServerOption = None,
) -> None:
    """Print a deployment's container logs (docker compose logs)."""
    from reconciler.model.day2 import OperationError

    if follow and server is None:
        from agent.operations import follow_logs

        try:
            with follow_logs(
                _state_dir(state_dir), name, service=service, tail=tail, since=since
            ) as lines:
                for line in lines:
                    sys.stdout.write(plain(line))
                    sys.stdout.flush()
        except OperationError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            return
        return
    chunk = _run("logs", name, state_dir, server, service=service, tail=tail, since=since)
    sys.stdout.write(plain(chunk.get("text", "")))
    if not follow or server is None:
        return
    try:
        while True:
            sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL)
            chunk = _run(
                "logs", name, None, server, service=service, tail=None, since=chunk.get("until")
            )
            sys.stdout.write(plain(chunk.get("text", "")))
    except KeyboardInterrupt:
        return


@app.command("restart")
def restart_command(
    name: NameArgument, state_dir: StateDirOption = None, server: ServerOption = None
) -> None:
    """Restart a deployment's containers (the same containers: nothing is recreated)."""
    answer = _run("restart", name, state_dir, server)
    _console(stderr=True).print(text(answer.get("message") or f"restarted {name}"))


def _detail_lines(d: DeploymentDetail) -> list[Any]:
    lines: list[Any] = [
        styled((d.name, "bold"), f"  {d.id}  namespace {d.namespace}"),
        styled("  status:   ", (d.status, "cyan" if d.held else "")),
        text(f"  spec:     {d.spec_hash[:12]}  commit {(d.revision or '-')[:12]}"),
        text(f"  updated:  {d.updated_at}"),
    ]
    if d.urls:
        lines.append(text(f"  urls:     {', '.join(d.urls)}"))
    if d.held is not None:
        lines.append(
            text(
                f"  held:     rolled back to {d.held.release} at {d.held.at}; released by the "
                f"next change of its file in git, or `reconcile rollback --release {d.name}`",
                "cyan",
            )
        )
    if d.last_error:
        lines.append(styled(("  error:    ", "red"), d.last_error))
        if d.hint:
            lines.append(text(f"  hint:     {d.hint}"))
    for image in sorted(d.images.items()):
        lines.append(text(f"  image:    {image[0]}: {image[1]}"))
    if d.env_keys:
        lines.append(text(f"  env:      {', '.join(d.env_keys)}"))
    if d.hooks:
        lines.append(text(f"  hooks:    {', '.join(d.hooks)}"))
    for c in d.containers:
        health = "" if c.health == "none" else f" ({c.health})"
        lines.append(
            text(f"  service {c.service}: {c.status}{health}, {c.restarts} restarts, {c.name}")
        )
    if d.releases:
        lines.append(text("  releases (newest first):"))
        for r in d.releases:
            mark = " <- running" if r.status == "current" else ""
            lines.append(text(f"    {r.release}  {r.at}  commit {(r.revision or '-')[:12]}{mark}"))
    return lines


@app.command("show")
def show_command(
    name: NameArgument,
    fmt: FormatOption = Day2Format.text,
    state_dir: StateDirOption = None,
    server: ServerOption = None,
) -> None:
    """A deployment's spec, status, URLs, last error with its hint, and releases."""
    from reconciler.model.day2 import DeploymentDetail

    answer = _run("show", name, state_dir, server)
    if fmt is Day2Format.json:
        _json(answer)
        return
    out = _console()
    for line in _detail_lines(DeploymentDetail.model_validate(answer)):
        out.print(line)


def _history_table(name: str, entries: list[HistoryEntry]) -> Any:
    from rich.table import Table

    table = Table(title=f"History of {name} (newest first)", title_justify="left")
    for column in ("time", "result", "spec", "commit", "release", "message"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            text(e.at, newlines=False),
            text(e.status, "red" if e.status == "failed" else "", newlines=False),
            e.spec_hash[:12],
            (e.revision or "-")[:12],
            text(e.release or "-", newlines=False),
            text(e.message or "", newlines=False),
        )
    return table


@app.command("history")
def history_command(
    name: NameArgument,
    fmt: FormatOption = Day2Format.text,
    state_dir: StateDirOption = None,
    server: ServerOption = None,
) -> None:
    """A deployment's releases and applies: spec hash, commit, time and result."""
    from reconciler.model.day2 import HistoryList

    answer = _run("history", name, state_dir, server)
    if fmt is Day2Format.json:
        _json(answer)
        return
    _console().print(_history_table(name, HistoryList.model_validate(answer).entries))


@app.command("rollback")
def rollback_command(
    name: NameArgument,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The release to run (a name from `reconcile history`, or a spec hash prefix); "
            "default: the one before the running one.",
            show_default=False,
        ),
    ] = None,
    release: Annotated[
        bool,
        typer.Option("--release", help="Lift the hold instead: git decides again."),
    ] = False,
    state_dir: StateDirOption = None,
    server: ServerOption = None,
) -> None:
    """Run an earlier release again and hold the deployment there until its file changes
    in git (or until `reconcile rollback --release NAME`)."""
    err = _console(stderr=True)
    if release:
        if to is not None:
            raise _fail("--release lifts the hold; it takes no --to", 2)
        _run("release", name, state_dir, server)
        err.print(
            text(
                f"{name}: hold lifted; the next reconcile applies what git says"
                + ("" if server else " (`reconcile apply`)")
            )
        )
        return
    answer = _run("rollback", name, state_dir, server, to=to)
    err.print(text(answer.get("message") or f"{name} rolled back"))


@app.command("credentials")
def credentials_command(
    name: NameArgument,
    fmt: FormatOption = Day2Format.text,
    state_dir: StateDirOption = None,
    server: ServerOption = None,
) -> None:
    """Reveal a deployment's generated secrets (admin only; every reveal is recorded)."""
    answer = _run("credentials", name, state_dir, server)
    values = dict(answer.get("values") or {})
    if fmt is Day2Format.json:
        _json(values)
        return
    if not values:
        _console(stderr=True).print(text(f"{name} has no generated secrets"))
        return
    for key in sorted(values):
        sys.stdout.write(f"{plain(key)}={plain(values[key], newlines=False)}\n")


@app.command("backup")
def backup_command(
    name: NameArgument, state_dir: StateDirOption = None, server: ServerOption = None
) -> None:
    """Run the manifest's backup hook; its output is kept in the app's state dir."""
    answer = _run("backup", name, state_dir, server)
    err = _console(stderr=True)
    if answer.get("output_tail"):
        sys.stdout.write(plain(str(answer["output_tail"])) + "\n")
    code = int(answer.get("exit_code", 1))
    if code != 0:
        err.print(error(f"the backup hook exited {code}; its output: {answer.get('path')}"))
        raise typer.Exit(1)
    err.print(text(f"backup of {name}: output kept in {answer.get('path')}"))


# ---------------------------------------------------------------- the control plane


def _admin_get(server: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    token = _admin_token()
    if not token:
        raise _fail("--server needs RECONCILE_ADMIN_TOKEN in the environment", 2)
    url = server.rstrip("/") + path
    try:
        response = httpx.get(
            url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=15.0
        )
    except httpx.HTTPError as exc:
        raise _fail(f"{url}: {exc}") from None
    return _answer(url, response)


ServerRequired = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="RECONCILE_SERVER",
        help="The control plane's URL (uses RECONCILE_ADMIN_TOKEN).",
        show_default=False,
    ),
]


@app.command("events")
def events_command(
    server: ServerRequired,
    fmt: FormatOption = Day2Format.text,
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing new events.")] = False,
    after: Annotated[int, typer.Option("--after", min=0, help="Only events after this id.")] = 0,
) -> None:
    """The control plane's event log (webhooks, reconciles, commands, audit)."""
    out = _console()
    last = after
    try:
        while True:
            data = _admin_get(server, "/v1/events", {"after": last, "limit": 1000})
            for e in data.get("events", []):
                if fmt is Day2Format.json:
                    sys.stdout.write(json.dumps(e) + "\n")
                else:
                    fields = json.dumps(e.get("fields") or {}, sort_keys=True)
                    out.print(styled((f"{e['time']} ", "dim"), (e["kind"], "bold"), f" {fields}"))
            last = int(data.get("last", last))
            if not follow:
                return
            sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return


@agent_app.command("list")
def agent_list_command(server: ServerRequired, fmt: FormatOption = Day2Format.text) -> None:
    """The control plane's agents: online or not, version, deployments, last heartbeat."""
    from rich.table import Table

    agents = _admin_get(server, "/v1/agents").get("agents", [])
    if fmt is Day2Format.json:
        _json(agents)
        return
    table = Table(title=f"Agents of {server}", title_justify="left")
    for column in ("id", "hostname", "state", "version", "deployments", "last seen"):
        table.add_column(column, overflow="fold")
    for a in agents:
        state = "online" if a.get("online") else f"offline ({a.get('reason') or '?'})"
        table.add_row(
            text(a.get("id"), newlines=False),
            text(a.get("hostname") or "-", newlines=False),
            text(state, "" if a.get("online") else "red", newlines=False),
            text(a.get("version") or "-", newlines=False),
            str(a.get("deployments", 0)),
            text(a.get("last_seen") or "-", newlines=False),
        )
    _console().print(table)
