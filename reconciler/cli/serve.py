"""``reconcile serve`` (the control plane) and its helpers: ``reconcile agent token``,
``reconcile hook create``, and ``reconcile status --server URL``.

Secrets come only from the environment (``RECONCILE_ADMIN_TOKEN``,
``RECONCILE_WEBHOOK_SECRET``, ``RECONCILE_GITLAB_TOKEN``), or from the file each one's
``*_FILE`` variable names: flags end up in shell history, process lists and backups.  The
PostgreSQL URL of the store may carry a password: ``--database`` takes one without it (libpq
reads ``PGPASSWORD`` or ``~/.pgpass``), ``RECONCILE_DATABASE(_FILE)`` one with it.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Annotated, Any

import typer

from reconciler.cli.app import CatalogOption, _console, app
from reconciler.cli.term import error, text

__all__ = ["agent_token_command", "hook_create_command", "remote_status", "serve_command"]

agent_app = typer.Typer(help="Agents of the control plane.", no_args_is_help=True)
hook_app = typer.Typer(help="Deploy hooks of the control plane.", no_args_is_help=True)
# `reconcile serve` runs the server; `reconcile serve backup|restore` act on its store.
serve_app = typer.Typer()
app.add_typer(agent_app, name="agent")
app.add_typer(hook_app, name="hook")
app.add_typer(serve_app, name="serve")

DataDirOption = Annotated[
    pathlib.Path | None,
    typer.Option(
        "--data-dir",
        help="The server's data dir (default: $RECONCILE_DATA_DIR, else ./reconcile-data).",
        show_default=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="The store every replica shares: postgresql://user@host/db, or an SQLite "
        "file (default: $RECONCILE_DATABASE or the file $RECONCILE_DATABASE_FILE names; "
        "else <data dir>/reconcile.db). Put a password in those, not in this flag.",
        show_default=False,
    ),
]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="A running control plane's URL (uses RECONCILE_ADMIN_TOKEN).",
        show_default=False,
    ),
]


class LogFormatChoice(enum.StrEnum):
    text = "text"
    json = "json"


def _fail(message: str, code: int = 1) -> typer.Exit:
    _console(stderr=True).print(error(message))
    return typer.Exit(code)


@serve_app.callback(invoke_without_command=True)
def serve_command(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", help="Desired-state repository: git URL or directory.", show_default=False
        ),
    ] = None,
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch",
            help="Branch to deploy (default main; a local git repo: the branch its HEAD names).",
            show_default=False,
        ),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option("--path", help="The repository's directory inside it.", show_default=False),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8800).")] = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            "--poll-interval", help="Seconds between timed reconciles, +-10% (0: no timer)."
        ),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option("--heartbeat", help="Agent heartbeat seconds; offline after 3 missed."),
    ] = None,
    keep_alive: Annotated[
        int | None,
        typer.Option(
            "--keep-alive",
            min=1,
            help="Seconds an idle connection is kept open (default: max(75, 3 x heartbeat)).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--config", help="server.yaml with the same keys (flags win).", show_default=False
        ),
    ] = None,
    catalog: CatalogOption = None,
    dist_dir: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--dist-dir",
            help="Where the agent wheel for GET /install.sh is (default: <data dir>/dist).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
    log_format: Annotated[
        LogFormatChoice,
        typer.Option(
            "--log-format",
            help="text (for a terminal or journalctl) or json (one object per line, for a "
            "log shipper).",
        ),
    ] = LogFormatChoice.text,
) -> None:
    """Run the control plane: reconcile a repository onto agents, on webhooks and a timer."""
    if ctx.invoked_subcommand is not None:
        return
    from reconciler.model.errors import ReconcilerError
    from reconciler.model.redact import redact
    from reconciler.server.config import ServerSecrets, load_server_config

    database = shared_database(database)
    overrides = {
        "source": source,
        "branch": branch,
        "path": path,
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "database": database,
        "poll_interval": poll_interval,
        "heartbeat": heartbeat,
        "keep_alive": keep_alive,
        "catalog": catalog,
        "dist_dir": dist_dir,
    }
    try:
        settings = load_server_config(config, overrides)
    except ReconcilerError as exc:
        raise _fail(redact(str(exc)), 2) from None
    try:
        secrets = ServerSecrets.from_env()
    except ReconcilerError as exc:
        raise _fail(redact(str(exc)), 2) from None

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from reconciler.model.logformat import formatter
    from reconciler.server.app import build_control_plane
    from reconciler.server.database import redact_url
    from reconciler.server.runtime import tune_gc
    from reconciler.server.transport import TransportLimits, uvicorn_options

    logging.basicConfig(level=log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(log_format.value))
        handler.addFilter(redact_credentials)
    try:
        plane = build_control_plane(settings, secrets)
        spec, ref = plane.reconciler.source_spec()
        plane.reconciler.catalog()  # missing or empty: refuse to start, never plan with it
    except ReconcilerError as exc:
        raise _fail(redact(str(exc))) from None
    banner = (
        f"reconcile serve: {redact(spec)}" + (f" @ {ref}" if ref else "")
        + (f" path={settings.path}" if settings.path else "")
        + f", data dir {settings.data_dir}"
        + (f", database {redact_url(settings.database)}" if settings.database else "")
        + f", http://{settings.host}:{settings.port}"
    )  # fmt: skip
    open_api_warning = (
        "RECONCILE_ADMIN_TOKEN is not set: the status and admin API answers 401 to everyone"
    )
    if log_format is LogFormatChoice.json:  # every line of the process is JSON
        server_log = logging.getLogger("reconciler.server")
        server_log.info(banner)
        if not secrets.admin_token:
            server_log.warning(open_api_warning)
    else:
        err = _console(stderr=True)
        err.print(text(banner), highlight=False)
        if not secrets.admin_token:
            err.print(error(open_api_warning, "warning:", "yellow"))
    logging.getLogger("uvicorn.access").addFilter(redact_deploy_tokens)
    for name in ("uvicorn.error", "uvicorn.access"):
        # uvicorn's loggers have their own handlers: a logger's filter covers them.
        logging.getLogger(name).addFilter(redact_credentials)
    # Built, and nothing running yet: what exists now lives as long as the process
    # (reconciler.server.runtime), while no run's temporaries are there to be frozen too.
    tune_gc(settings.gc_young_threshold)
    plane.start()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn waits for open responses before the app's shutdown: end the event
            # streams first, so a stop is not held up by `status --follow` clients.
            plane.progress.close()
            super().handle_exit(sig, frame)

    try:
        server_config = uvicorn.Config(
            plane.app,
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            # json: uvicorn's own loggers propagate to the root handler, so every line
            # of the process is JSON; text keeps uvicorn's usual lines.
            log_config=None if log_format is LogFormatChoice.json else LOGGING_CONFIG,
            access_log=log_level.lower() == "debug",
            timeout_graceful_shutdown=5,
            **uvicorn_options(
                TransportLimits(
                    max_head_bytes=settings.max_head_bytes,
                    head_timeout=settings.head_timeout,
                    body_timeout=settings.body_timeout,
                    keep_alive=settings.keep_alive_seconds,
                    max_connections=settings.max_connections,
                    connection_reserve=settings.connection_reserve,
                )
            ),
        )
        Server(server_config).run()
    finally:
        plane.stop()
        plane.store.close()


def redact_deploy_tokens(record: logging.LogRecord) -> bool:
    """A deploy hook's URL *is* its secret: keep it out of the access log (``-v debug``)."""
    if isinstance(record.args, tuple) and "/hooks/deploy/" in str(record.args):
        record.args = tuple(
            _DEPLOY_TOKEN.sub("/hooks/deploy/<redacted>", a) if isinstance(a, str) else a
            for a in record.args
        )
    return True


_DEPLOY_TOKEN = re.compile(r"/hooks/deploy/[^/?\s\"]+")


def redact_credentials(record: logging.LogRecord) -> bool:
    """No log line of the server carries a URL's credentials (a source URL in a clone
    error, say), traceback included."""
    import traceback

    from reconciler.model.redact import redact

    message = record.getMessage()
    if "://" in message:
        record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    return True


def _sync_cell(d: dict[str, Any]) -> Any:
    """ "applying" while the agent still works on a command: its containers may already
    run the new spec (serving starts before the settle gate and probe end)."""
    from rich.text import Text

    if (d.get("last_command") or {}).get("state") == "pending":
        return Text("applying", "cyan")
    return Text("yes", "green") if d.get("in_sync") else Text("no", "yellow")


# ------------------------------------------------------------- tokens and hooks


def shared_database(flag: str | None) -> str | None:
    """``--database``, else ``RECONCILE_DATABASE`` or the file ``RECONCILE_DATABASE_FILE``
    names: the store as ``reconcile serve`` finds it, for it and for every admin command
    that opens the store.  Both variables set, or an unreadable file: exit 2."""
    from reconciler.model.errors import ReconcilerError
    from reconciler.model.redact import redact
    from reconciler.server.config import database_from_env

    try:
        return flag or database_from_env()
    except ReconcilerError as exc:
        raise _fail(redact(str(exc)), 2) from None


def _one_target(
    data_dir: pathlib.Path | None, server: str | None, database: str | None = None
) -> None:
    """The admin commands work on one store: named by its data dir, by its database, or
    through a server, never two of them (which would win would be a guess)."""
    flags = (("--data-dir", data_dir), ("--database", database), ("--server", server))
    given = [flag for flag, value in flags if value is not None]
    if len(given) > 1:
        raise _fail(f"give one of --data-dir, --database, --server (not {' and '.join(given)})", 2)


def _local_store(data_dir: pathlib.Path | None, database: str | None = None) -> Any:
    """The store an admin command acts on: ``--database``, else ``--data-dir``'s file, else
    the database of the environment (``RECONCILE_DATABASE(_FILE)``, read as ``reconcile
    serve`` reads it), else the default data dir's file.  An SQLite file must exist: a
    token written into a new, empty file (a typo in the path) is one no server reads."""
    from reconciler.model.errors import ReconcilerError
    from reconciler.model.redact import redact
    from reconciler.server import config
    from reconciler.server.store import Store

    if database is None and data_dir is None:
        database = shared_database(None)
    try:
        location = config.store_location(database, data_dir or config.default_data_dir())
    except ReconcilerError as exc:
        raise _fail(redact(str(exc)), 2) from None
    if isinstance(location, pathlib.Path) and not location.is_file():
        if database is not None:
            raise _fail(f"no control-plane database at {location} (check --database)", 2)
        raise _fail(
            f"no control-plane database in {location.parent} (start `reconcile serve "
            f"--data-dir {location.parent}` once, or pass --data-dir / --database / --server)",
            2,
        )
    try:
        return Store(location)
    except ReconcilerError as exc:  # not ours, a newer schema, a database that refuses us
        raise _fail(redact(str(exc))) from None


def _admin_token() -> str | None:
    """RECONCILE_ADMIN_TOKEN, or the file RECONCILE_ADMIN_TOKEN_FILE names."""
    from reconciler.model.secretenv import SecretEnvError, secret_from_env

    try:
        return secret_from_env("RECONCILE_ADMIN_TOKEN")
    except SecretEnvError as exc:
        raise _fail(str(exc), 2) from None


def _admin_post(
    server: str, path: str, body: dict[str, Any] | None = None, *, method: str = "POST"
) -> dict[str, Any]:
    import httpx

    token = _admin_token()
    if not token:
        raise _fail("--server needs RECONCILE_ADMIN_TOKEN in the environment", 2)
    url = server.rstrip("/") + path
    try:
        response = httpx.request(
            method,
            url,
            json=body if method == "POST" else None,
            headers={"Authorization": f"Bearer {token}"},
            timeout=15.0,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"{url}: {exc}") from None
    return _answer(url, response)


def _answer(url: str, response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code >= 300:
        message = data.get("error") if isinstance(data, dict) else None
        raise _fail(f"{url}: HTTP {response.status_code}: {message or response.text[:200]}")
    if not isinstance(data, dict):
        raise _fail(f"{url}: unexpected answer")
    return data


@agent_app.command("token")
def agent_token_command(
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    server: ServerOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The control plane's URL as new hosts reach it, for the install one-liner "
            "(default: $RECONCILE_PUBLIC_URL; without either, only the token is printed, "
            "so `TOKEN=$(reconcile agent token ...)` keeps working).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a one-time agent bootstrap token (valid 10 minutes, usable once) and, when the
    server's URL is known, the one-liner that installs an agent on a new host with it."""
    _one_target(data_dir, server, database)
    # Not --server: the admin URL need not be the one new hosts reach, and a script that
    # reads the token alone must not get a second line it did not ask for.
    public = url or os.environ.get("RECONCILE_PUBLIC_URL") or None
    if public is not None and not re.match(r"^https?://[^\s/]+", public):
        raise _fail(f"--url must be an http(s) URL, not {public!r}", 2)
    if server is not None:
        token = str(_admin_post(server, "/v1/agent-tokens")["token"])
    else:
        store = _local_store(data_dir, database)
        try:
            token = store.create_bootstrap_token()
            store.record_event("agent.token", {"by": "cli"})
        finally:
            store.close()
    sys.stdout.write(token + "\n")
    if public is None:
        _console(stderr=True).print(
            "One-time agent bootstrap token (expires in 10 minutes): "
            "reconcile-agent --server URL --token TOKEN (pass --url URL for the install "
            "one-liner)",
            highlight=False,
        )
        return
    from reconciler.server.install import install_one_liner

    sys.stdout.write(install_one_liner(public, token) + "\n")
    _console(stderr=True).print(
        "One-time agent bootstrap token (expires in 10 minutes), then the command to run "
        "as root on the new host: it installs Python and Docker if missing, the agent and "
        "its systemd unit, and the host shows up online.",
        highlight=False,
    )


@agent_app.command("remove")
def agent_remove_command(
    agent_id: Annotated[str, typer.Argument(help="The agt_ id to forget.")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    server: ServerOption = None,
) -> None:
    """Forget an agent (host gone, or its secret leaked): its credentials stop working and
    its unfinished commands are cancelled.  Register the host again with a new token."""
    from reconciler.model.ids import AGENT_ID_RE

    _one_target(data_dir, server, database)
    if not AGENT_ID_RE.match(agent_id):
        raise _fail(f"{agent_id!r} is not an agent id (agt_ and 16 hex digits)", 2)
    if server is not None:
        _admin_post(server, f"/v1/agents/{agent_id}", method="DELETE")
    else:
        store = _local_store(data_dir, database)
        try:
            if not store.remove_agent(agent_id):
                raise _fail(f"no agent {agent_id} in {store.location}")
            store.record_event("agent.removed", {"agent": agent_id, "by": "cli"})
        finally:
            store.close()
    _console(stderr=True).print(
        f"agent {agent_id} removed; its deployments are blocked until `agents:` in "
        "reconcile.yaml names a registered agent",
        highlight=False,
    )


@hook_app.command("create")
def hook_create_command(
    name: Annotated[str, typer.Argument(help="The hook's name (rotates its token if it exists).")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    server: ServerOption = None,
) -> None:
    """Create (or rotate) a deploy hook: prints its token and URL path, shown only once."""
    from reconciler.model.ids import NAME_RE

    _one_target(data_dir, server, database)
    if not NAME_RE.match(name):
        raise _fail(f"hook name {name!r} must match {NAME_RE.pattern}", 2)
    if server is not None:
        token = str(_admin_post(server, "/v1/deploy-hooks", {"name": name})["token"])
        where = server.rstrip("/")
    else:
        store = _local_store(data_dir, database)
        try:
            token = store.create_deploy_hook(name)
            store.record_event("deploy_hook.created", {"name": name})
        finally:
            store.close()
        where = ""
    sys.stdout.write(f"{token}\n{where}/hooks/deploy/{token}\n")
    _console(stderr=True).print(
        f"Deploy hook {name!r}: POST to that path to trigger a reconcile (the token is "
        "shown only this once; run this again to rotate it).",
        highlight=False,
    )


# ------------------------------------------------------------------- status


def remote_status(server: str, as_json: bool) -> None:
    """``reconcile status --server URL``: the control plane's view of every deployment."""
    import httpx

    token = _admin_token()
    if not token:
        raise _fail("--server needs RECONCILE_ADMIN_TOKEN in the environment", 2)
    url = server.rstrip("/") + "/v1/deployments"
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)
    except httpx.HTTPError as exc:
        raise _fail(f"{url}: {exc}") from None
    data = _answer(url, response)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.table import Table

    out = _console()
    rows = data.get("deployments", [])
    rev = (data.get("revision") or "")[:12] or "-"
    title = f"Control plane {server} (revision {rev})"
    if not rows:
        out.print(text(f"{title}: no deployments.", "bold"))
        return
    table = Table(title=title, title_justify="left", title_style="bold")
    for column in ("name", "agent", "status", "in sync", "last command", "urls"):
        table.add_column(column, overflow="fold")
    for d in rows:
        last = d.get("last_command") or {}
        result = last.get("result") or {}
        verdict = (
            f"{last.get('kind')} {last.get('state')}"
            + (f": {result.get('message')}" if result.get("message") else "")
            if last
            else "-"
        )
        agent = f"{d.get('agent')}" + ("" if d.get("agent_online") else " (offline)")
        # Everything in a row came from the server, most of it from hosts: plain text,
        # one line per field (a message must not fake a row of its own).
        table.add_row(
            text(d["name"], newlines=False),
            text(agent, "" if d.get("agent_online") else "red", newlines=False),
            text(d.get("status") or "-", newlines=False),
            _sync_cell(d),
            text(verdict, newlines=False),
            "\n".join(d.get("urls") or [u for u in [d.get("url")] if u]) or "-",
        )
    out.print(table)


#: Seconds without a byte before `status --follow` gives up on the stream: the server
#: sends a keep-alive comment every 15 s, so this means it is gone.
FOLLOW_READ_TIMEOUT = 60.0


def follow_events(server: str, as_json: bool, *, deployment: str | None = None) -> None:
    """``reconcile status --server URL --follow``: the live steps, one plain line each."""
    import httpx

    token = _admin_token()
    if not token:
        raise _fail("--server needs RECONCILE_ADMIN_TOKEN in the environment", 2)
    url = server.rstrip("/") + "/v1/events/stream"
    params = {"deployment": deployment} if deployment else {}
    out = _console()
    err = _console(stderr=True)
    timeout = httpx.Timeout(15.0, read=FOLLOW_READ_TIMEOUT)
    if not as_json:
        err.print(text(f"following {url} (Ctrl-C to stop)", "dim"), highlight=False)
    try:
        with httpx.stream(
            "GET",
            url,
            params=params,
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                response.read()
                _answer(url, response)
                raise _fail(f"{url}: HTTP {response.status_code}")
            ended = None
            for kind, payload in _sse_events(response.iter_lines()):
                if kind == "end":
                    ended = payload
                    break
                if as_json:
                    sys.stdout.write(payload + "\n")
                    sys.stdout.flush()
                else:
                    out.print(text(event_line(json.loads(payload)), newlines=False), soft_wrap=True)
    except KeyboardInterrupt:
        return
    except httpx.HTTPError as exc:
        raise _fail(f"{url}: {exc}") from None
    err.print(text(f"stream ended: {ended or 'the server closed it'}", "dim"), highlight=False)


def _sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(kind, data) per Server-Sent Event; ("end", why) for the server's closing comment."""
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            if line.startswith(": end:"):
                yield "end", line[len(": end:") :].strip()
                return
            continue
        if line == "":
            if data:
                yield "event", "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def event_line(event: dict[str, Any]) -> str:
    """One line per stream event, e.g. ``12:00:01 blog step up: 2 containers``."""
    import datetime as dt

    when = event.get("time")
    stamp = (
        dt.datetime.fromtimestamp(float(when), dt.UTC).strftime("%H:%M:%S")
        if isinstance(when, int | float)
        else "--:--:--"
    )
    name = event.get("deployment") or "-"
    kind = event.get("type")
    if kind == "step":
        detail = f": {event['detail']}" if event.get("detail") else ""
        return f"{stamp} {name} {event.get('step')}{detail}"
    if kind == "command.sent":
        return (
            f"{stamp} {name} {event.get('kind')} sent to {event.get('agent')} "
            f"({event.get('command')}): {event.get('reason') or 'no reason given'}"
        )
    if kind == "command.result":
        verdict = "ok" if event.get("ok") else "FAILED"
        rolled = "; rolled back" if event.get("rolled_back") else ""
        message = f": {event['message']}" if event.get("message") else ""
        return f"{stamp} {name} {event.get('kind')} {verdict}{rolled}{message}"
    return f"{stamp} {name} {kind}"
