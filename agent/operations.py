"""Day-2 operations on one deployment of this host: logs, restart, show, history,
rollback (and lifting its hold), credentials and the backup hook.

Plain functions returning the values of :mod:`reconciler.model.day2`, so the CLI, the
agent (a command of kind ``operation``), the MCP server and the dashboard all call the
same code.  A deployment is named by its name or its ``dpl_`` id; anything that cannot
be done as asked raises :class:`OperationError` before anything changes.

Rollback reuses the executor's own restore of a kept release
(:meth:`agent.executor.Executor.restore_release`, what a failed update runs), under the
app's lock, and then marks the record ``held``: git stays the truth, so the planner
leaves the deployment alone only until its desired spec hash differs from the one it
was held at (its file changed in git), or until ``release_hold``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import os
import pathlib
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from agent.statedir import (
    AppRecord,
    app_dir,
    atomic_write,
    list_records,
    now_iso,
    read_history,
    read_record,
    save_proxy_config,
    saved_proxy_config,
    write_record,
)
from reconciler.model.day2 import (
    BackupResult,
    Credentials,
    DeploymentDetail,
    HistoryEntry,
    HistoryList,
    LogChunk,
    OperationError,
    OperationRequest,
    OperationResult,
    RestartResult,
    RollbackResult,
)
from reconciler.model.errors import ReconcilerError
from reconciler.model.ids import DEPLOYMENT_ID_RE
from reconciler.model.state import ContainerState, Hold

if TYPE_CHECKING:
    from agent.compose import ComposeDriver
    from agent.executor import ContainerWatch, Executor

__all__ = [
    "AUDIT_FILE",
    "MAX_LOG_BYTES",
    "backup",
    "credentials",
    "find",
    "follow_logs",
    "history",
    "logs",
    "perform",
    "release_hold",
    "releases",
    "restart",
    "rollback",
    "save_proxy_config",
    "saved_proxy_config",
    "show",
]

MAX_LOG_BYTES = 1024 * 1024  # one answer of `reconcile logs`; a follow streams instead
MAX_WIRE_LOG_CHARS = 60 * 1024  # one chunk sent through the control plane (its cap: 64 KiB)
AUDIT_FILE = "audit.jsonl"  # <state dir>/audit.jsonl: every credentials reveal on this host
COMPOSE_TIMEOUT = 120.0  # seconds for `docker compose restart` / `logs` (not a follow)
BACKUP_TAIL = 20  # lines of the backup hook's output returned (all of it is kept)

# What `docker compose logs --since` accepts: a Go duration (10m, 1h30m), a unix time,
# or an RFC 3339 date/time.  Checked here so a typo is a clear error, not compose's.
_SINCE_RE = re.compile(
    r"^(?:(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+"
    r"|\d+(?:\.\d+)?"
    r"|\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?)$"
)


def find(state_dir: pathlib.Path, deployment: str) -> AppRecord:
    """The record of the deployment named ``deployment`` (a name or a ``dpl_`` id)."""
    if DEPLOYMENT_ID_RE.match(deployment):
        record = read_record(state_dir, deployment)
        if record is not None:
            return record
    matches = [r for r in list_records(state_dir) if r.name == deployment]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(r.id for r in matches)
        raise OperationError(
            f"{deployment!r} names deployments of several namespaces here ({ids}); "
            "name it by its dpl_ id"
        )
    known = ", ".join(sorted({r.name for r in list_records(state_dir)})) or "none"
    raise OperationError(f"no deployment {deployment!r} on this host (known: {known})")


def _compose_argv(state_dir: pathlib.Path, record: AppRecord) -> list[str]:
    directory = app_dir(state_dir, record.id)
    if not (directory / "compose.yaml").exists():
        raise OperationError(f"{record.name} has no compose file here (status {record.status})")
    # Pinned like every other compose call (agent.compose): -p, -f and the project dir.
    return [
        "docker",
        "compose",
        "-p",
        record.id,
        "-f",
        str(directory / "compose.yaml"),
        "--project-directory",
        str(directory),
    ]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


def _logs_argv(
    state_dir: pathlib.Path,
    record: AppRecord,
    service: str | None,
    tail: int | None,
    since: str | None,
    follow: bool,
) -> list[str]:
    if service is not None and service not in record.services:
        known = ", ".join(record.services) or "none"
        raise OperationError(f"{record.name} has no service {service!r} (services: {known})")
    if since is not None and not _SINCE_RE.match(since):
        raise OperationError(
            f"--since {since!r}: give a duration (10m, 1h30m), a unix time or an RFC 3339 time"
        )
    if tail is not None and tail < 0:
        raise OperationError(f"--tail {tail}: give a number of lines, 0 or more")
    argv = [*_compose_argv(state_dir, record), "logs", "--no-color"]
    if tail is not None:
        argv += ["--tail", str(tail)]
    if since is not None:
        argv += ["--since", since]
    if follow:
        argv.append("--follow")
    if service is not None:
        argv.append(service)
    return argv


def _rfc3339_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def logs(
    state_dir: pathlib.Path,
    deployment: str,
    *,
    service: str | None = None,
    tail: int | None = 100,
    since: str | None = None,
) -> LogChunk:
    """The deployment's container logs (at most :data:`MAX_LOG_BYTES`, the newest kept).

    ``until`` is read before the logs are: passed back as ``since`` it gives the next
    chunk of a follow that polls (through the control plane); a line written in between
    can come twice, never not at all.
    """
    record = find(state_dir, deployment)
    argv = _logs_argv(state_dir, record, service, tail, since, follow=False)
    until = _rfc3339_now()
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=COMPOSE_TIMEOUT, env=_clean_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"docker compose logs: {exc}") from None
    if proc.returncode != 0:
        raise OperationError(f"docker compose logs: {proc.stderr.decode(errors='replace')[-500:]}")
    data = proc.stdout[-MAX_LOG_BYTES:]
    return LogChunk(text=data.decode("utf-8", "replace"), until=until)


@contextlib.contextmanager
def follow_logs(
    state_dir: pathlib.Path,
    deployment: str,
    *,
    service: str | None = None,
    tail: int | None = 100,
    since: str | None = None,
) -> Iterator[Iterator[str]]:
    """``docker compose logs --follow`` as lines, until the caller stops reading (the
    process is ended when the ``with`` block is left)."""
    record = find(state_dir, deployment)
    argv = _logs_argv(state_dir, record, service, tail, since, follow=True)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_clean_env(), text=True
    )
    try:
        yield iter(proc.stdout or ())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def restart(state_dir: pathlib.Path, deployment: str) -> RestartResult:
    """``docker compose restart``: the same containers (same ids) stopped and started
    again; nothing is recreated, so the files and the spec hash stay as they are."""
    record = find(state_dir, deployment)
    argv = [*_compose_argv(state_dir, record), "restart"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, env=_clean_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"docker compose restart: {exc}") from None
    if proc.returncode != 0:
        raise OperationError(f"docker compose restart: {(proc.stderr or proc.stdout)[-500:]}")
    return RestartResult(restarted=list(record.services), message=f"restarted {record.name}")


def releases(state_dir: pathlib.Path, record: AppRecord) -> list[tuple[str, AppRecord]]:
    """The kept releases of a deployment, oldest first: (name, the record it ran with)."""
    directory = app_dir(state_dir, record.id) / "releases"
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
        try:
            out.append(
                (path.name, AppRecord.model_validate_json((path / "state.json").read_text()))
            )
        except (OSError, ValueError):
            continue
    return out


def history(state_dir: pathlib.Path, deployment: str) -> list[HistoryEntry]:
    """What happened to the deployment on this host, newest first: every apply, failure,
    rollback and hold, each with the kept release that can be rolled back to."""
    record = find(state_dir, deployment)
    kept = {rec.spec_hash: name for name, rec in releases(state_dir, record)}
    entries = []
    for line in reversed(read_history(state_dir, record.id)):
        spec = str(line.get("spec_hash") or "")
        entries.append(
            HistoryEntry(
                at=str(line.get("at") or ""),
                spec_hash=spec,
                status=str(line.get("status") or ""),
                revision=_str_or_none(line.get("revision")),
                message=_str_or_none(line.get("message")),
                release=kept.get(spec),
            )
        )
    if not entries:  # applied before history.jsonl existed: the releases are the history
        for name, rec in reversed(releases(state_dir, record)):
            entries.append(
                HistoryEntry(
                    at=rec.updated_at,
                    spec_hash=rec.spec_hash,
                    status="running",
                    revision=rec.revision,
                    release=name,
                )
            )
    return entries


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def show(
    state_dir: pathlib.Path, deployment: str, watch: ContainerWatch | None = None
) -> DeploymentDetail:
    """Spec, status, URLs, the last error with its hint, containers and releases."""
    record = find(state_dir, deployment)
    containers: list[ContainerState] = []
    if watch is not None:
        containers = watch.containers(record.id)
    kept = releases(state_dir, record)
    return DeploymentDetail(
        id=record.id,
        name=record.name,
        namespace=record.namespace,
        status="held" if record.held is not None else record.status,
        spec_hash=record.spec_hash,
        revision=record.revision,
        domain=record.domain,
        urls=list(record.urls) or ([record.url] if record.url else []),
        updated_at=record.updated_at,
        last_error=record.last_error,
        hint=record.hint,
        held=record.held,
        services=list(record.services),
        containers=containers,
        images=dict(record.record.images),
        env_keys=sorted(record.record.env),
        hooks=sorted(record.hooks),
        releases=[
            HistoryEntry(
                at=rec.updated_at,
                spec_hash=rec.spec_hash,
                status="current" if rec.spec_hash == record.spec_hash else "kept",
                revision=rec.revision,
                release=name,
            )
            for name, rec in reversed(kept)
        ],
    )


def _pick_release(
    kept: list[tuple[str, AppRecord]], record: AppRecord, to: str | None
) -> tuple[str, AppRecord]:
    names = ", ".join(name for name, _ in kept) or "none"
    if to is not None:
        found = [
            (name, rec)
            for name, rec in kept
            if name == to or name.startswith(to) or (len(to) >= 6 and rec.spec_hash.startswith(to))
        ]
        exact = [(n, r) for n, r in found if n == to]
        if exact:
            return exact[0]
        if len(found) == 1:
            return found[0]
        if not found:
            raise OperationError(f"{record.name} has no release {to!r} (kept: {names})")
        raise OperationError(f"{to!r} names several releases of {record.name}: {names}")
    # The release before the one running now: the newest with another spec hash, older
    # than the newest one of the current spec (or simply the newest other one).
    current = [i for i, (_n, rec) in enumerate(kept) if rec.spec_hash == record.spec_hash]
    end = current[-1] if current else len(kept)
    earlier = [item for item in kept[:end] if item[1].spec_hash != record.spec_hash]
    if not earlier:
        raise OperationError(
            f"{record.name} has no earlier release to roll back to (kept: {names})"
        )
    return earlier[-1]


def rollback(executor: Executor, deployment: str, *, to: str | None = None) -> RollbackResult:
    """Run a kept release again and hold the deployment there (see the module doc)."""
    state_dir = executor.state_dir
    record = find(state_dir, deployment)
    with executor.locked(record.id):
        record = find(state_dir, record.id)
        kept = releases(state_dir, record)
        name, target = _pick_release(kept, record, to)
        # Rolled back twice: the hold still waits for the spec git wanted the first time.
        held_at = record.held.spec_hash if record.held is not None else record.spec_hash
        release_dir = app_dir(state_dir, record.id) / "releases" / name
        hold = Hold(
            release=name, release_spec_hash=target.spec_hash, spec_hash=held_at, at=now_iso()
        )
        if not executor.restore_release(record.id, release_dir, None, hold=hold):
            raise OperationError(
                f"release {name} of {record.name} could not be started again; "
                "see `reconcile logs` and `reconcile show`"
            )
    return RollbackResult(
        release=name,
        spec_hash=target.spec_hash,
        held=hold,
        message=f"{record.name} runs release {name} again; held until its file changes in git",
    )


def release_hold(state_dir: pathlib.Path, deployment: str) -> AppRecord:
    """Lift the hold: the next reconcile applies what git says again."""
    record = find(state_dir, deployment)
    if record.held is None:
        raise OperationError(f"{record.name} is not held")
    released = record.model_copy(update={"held": None, "updated_at": now_iso()})
    write_record(state_dir, released)
    return released


def credentials(state_dir: pathlib.Path, deployment: str, *, who: str | None = None) -> Credentials:
    """The generated secret values (``secrets.json``, 0600: only its owner, the admin of
    this host, can read it).  Every reveal is appended to ``<state dir>/audit.jsonl``."""
    record = find(state_dir, deployment)
    path = app_dir(state_dir, record.id) / "secrets.json"
    try:
        loaded = json.loads(path.read_text()) if path.exists() else {}
    except PermissionError:
        raise OperationError(
            f"{path} is readable by its owner only: run as the state dir's owner (root)"
        ) from None
    except (OSError, ValueError) as exc:
        raise OperationError(f"cannot read {path}: {exc}") from None
    values = {str(k): str(v) for k, v in dict(loaded).items()}
    _audit(
        state_dir,
        {
            "at": now_iso(),
            "event": "credentials.revealed",
            "deployment": record.name,
            "id": record.id,
            "keys": sorted(values),
            "by": who or _user(),
        },
    )
    return Credentials(values=values)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


def _audit(state_dir: pathlib.Path, event: dict[str, object]) -> None:
    path = pathlib.Path(state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(json.dumps(event, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def backup(state_dir: pathlib.Path, driver: ComposeDriver, deployment: str) -> BackupResult:
    """Run the manifest's ``lifecycle.backup`` in its service; all of its output is kept
    in ``apps/<id>/backups/<time>.log`` (0600: a dump may hold secrets)."""
    from agent.compose import ComposeProject

    record = find(state_dir, deployment)
    hook = record.hooks.get("backup")
    if hook is None:
        raise OperationError(f"{record.name}'s manifest declares no lifecycle.backup hook")
    directory = app_dir(state_dir, record.id)
    _compose_argv(state_dir, record)  # refuses an app without a compose file
    code, output = driver.exec(
        ComposeProject(record.id, directory), hook.service, hook.run, float(hook.timeout)
    )
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / "backups" / f"{stamp}.log"
    atomic_write(path, output.encode(), 0o600)
    tail = "\n".join(output.rstrip().splitlines()[-BACKUP_TAIL:])
    return BackupResult(exit_code=code, path=str(path), output_tail=tail)


def perform(
    request: OperationRequest,
    state_dir: pathlib.Path,
    make_executor: Callable[[], Executor],
) -> OperationResult:
    """One operation an agent was sent (a command of kind ``operation``), as the value it
    answers with.  ``logs --follow`` is not an operation: a follow through the control
    plane polls ``logs`` with ``since`` set to the last chunk's ``until``."""
    from agent.compose import WhalesComposeDriver
    from agent.watch import DockerWatch

    name = request.deployment
    value: BaseModel
    try:
        if request.op == "logs":
            chunk = logs(
                state_dir, name, service=request.service, tail=request.tail, since=request.since
            )
            value = chunk.model_copy(update={"text": chunk.text[-MAX_WIRE_LOG_CHARS:]})
        elif request.op == "restart":
            value = restart(state_dir, name)
        elif request.op == "show":
            value = show(state_dir, name, DockerWatch())
        elif request.op == "history":
            value = HistoryList(entries=history(state_dir, name))
        elif request.op == "rollback":
            value = rollback(make_executor(), name, to=request.to)
        elif request.op == "release":
            released = release_hold(state_dir, name)
            value = show(state_dir, released.id)
        elif request.op == "credentials":
            value = credentials(state_dir, name, who="control plane admin")
        elif request.op == "backup":
            value = backup(state_dir, WhalesComposeDriver(), name)
        else:  # pragma: no cover - OperationKind is closed
            raise OperationError(f"unknown operation {request.op!r}")
    except OperationError as exc:
        return OperationResult(ok=False, error=str(exc))
    except ReconcilerError as exc:
        return OperationResult(ok=False, error=f"{request.op}: {exc}")
    return OperationResult(ok=True, payload=value.model_dump(mode="json"))
