"""The host's state dir: where the agent keeps the authoritative record of each app.

Layout (one directory per deployment, named by its ``dpl_`` id)::

    <state dir>/apps/<dpl_id>/
        compose.yaml    the file ``docker compose -p <dpl_id>`` runs
        .env            literal and generated values (0600, written by the executor)
        state.json      an :class:`AppRecord`: what was applied, never a secret value
        data/           the app's bind-mounted data; kept on uninstall unless purged
        releases/       earlier working releases, for rollback

Container labels alone go stale (a ``docker rm`` loses them, a failed update leaves
old ones); ``state.json`` is what the agent believes it applied, and ``observe`` checks
it against the containers.  Every write is atomic (tmp file in the same directory +
fsync + rename + fsync of the directory), so a crash leaves the old file or the new one,
never half of either.  Reading is forgiving: a corrupt, oversized or foreign file is
logged and treated as absent, never a crash of the agent.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import pathlib
import re
import secrets
import stat
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.model.deployment import ProxyConfig
from reconciler.model.ids import DEPLOYMENT_ID_RE
from reconciler.model.state import Hold, SpecRecord
from reconciler.render.model import Hook

__all__ = [
    "HISTORY_FILE",
    "KEEP_HISTORY",
    "MAX_RECORD_BYTES",
    "RECORD_FORMAT_VERSION",
    "AppRecord",
    "AppStatus",
    "app_dir",
    "atomic_write",
    "default_state_dir",
    "ensure_app_dir",
    "list_records",
    "now_iso",
    "read_history",
    "read_record",
    "record_path",
    "save_proxy_config",
    "saved_proxy_config",
    "write_record",
]

log = logging.getLogger(__name__)

RECORD_FORMAT_VERSION = 1
HISTORY_FILE = "history.jsonl"  # one line per change of spec hash, status or hold
KEEP_HISTORY = 50  # lines; older ones are dropped when it is rewritten
MAX_RECORD_BYTES = 1024 * 1024  # a record is a few KiB; anything this big is not ours
AppStatus = Literal["running", "failed", "uninstalled"]

# SpecRecord.env maps keys to salted digests (reconciler.render.value_digest): never values.
_DIGEST_RE = re.compile(r"^[0-9a-f]{16,64}$")


def default_state_dir() -> pathlib.Path:
    """``RECONCILE_STATE_DIR``, else ``/var/lib/reconciler`` as root, else the XDG state dir."""
    env = os.environ.get("RECONCILE_STATE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    if os.geteuid() == 0:
        return pathlib.Path("/var/lib/reconciler")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".local" / "state"
    return base / "reconciler"


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. ``2026-11-25T10:15:00Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AppRecord(BaseModel):
    """``state.json``: what the agent applied for one deployment.  No secret values, ever."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    id: str = Field(pattern=DEPLOYMENT_ID_RE.pattern)
    name: str
    namespace: str
    spec_hash: str
    status: AppStatus = "running"
    services: list[str] = Field(default_factory=list)
    one_shot: list[str] = Field(default_factory=list)  # restart "no": exit 0 is success
    record: SpecRecord
    domain: str | None = None
    url: str | None = None
    # The onion service (agent.onion): its address, the upstream its proxy route goes to,
    # and every URL the app answers on (DOMAIN_URL, then http://<onion>).
    onion_address: str | None = None
    onion_upstream: str | None = None
    urls: list[str] = Field(default_factory=list)
    # The spec hash on the running containers' labels when an update changed only what the
    # proxy sees (domain, routes) and left them running (agent.executor); None: spec_hash.
    labels_spec_hash: str | None = None
    # Vars read from the applying host's environment: key -> (variable, digest of the value
    # written to .env).  The observer compares the environment now against the digest, so
    # a rotated value is seen as drift and repaired (the spec hash cannot know it).
    from_env: dict[str, tuple[str, str]] = Field(default_factory=dict)
    updated_at: str = Field(default_factory=now_iso)
    last_error: str | None = None  # the failed step and its message (never env values)
    hint: str | None = None  # what to do about last_error, when the executor knows
    # The manifest's lifecycle hooks, so ``uninstall`` (before ``down``) and ``backup`` can
    # run when the repository no longer has the deployment (agent.operations).
    hooks: dict[str, Hook] = Field(default_factory=dict)
    # Rolled back by hand (agent.operations.rollback): the planner leaves it alone until
    # git changes its spec.  A fresh apply writes a record without it.
    held: Hold | None = None
    revision: str | None = None  # the repository commit it was applied from, when known

    @field_validator("from_env")
    @classmethod
    def _from_env_is_digests(cls, value: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        bad = sorted(k for k, (_var, d) in value.items() if not _DIGEST_RE.match(d))
        if bad:
            raise ValueError(f"from_env values must be digests, not values: {', '.join(bad)}")
        return value

    @field_validator("record")
    @classmethod
    def _env_is_digests(cls, value: SpecRecord) -> SpecRecord:
        bad = sorted(k for k, v in value.env.items() if not _DIGEST_RE.match(v))
        if bad:
            raise ValueError(
                "record.env must hold value digests, never values "
                f"(keys with a non-digest value: {', '.join(bad)})"
            )
        return value


def _check_id(dpl_id: str) -> str:
    if not DEPLOYMENT_ID_RE.match(dpl_id):
        raise ValueError(f"not a deployment id: {dpl_id!r}")
    return dpl_id


def app_dir(state_dir: pathlib.Path, dpl_id: str) -> pathlib.Path:
    """``<state dir>/apps/<dpl_id>``; the id is checked, so it can never escape ``apps/``."""
    return pathlib.Path(state_dir) / "apps" / _check_id(dpl_id)


def record_path(state_dir: pathlib.Path, dpl_id: str) -> pathlib.Path:
    return app_dir(state_dir, dpl_id) / "state.json"


def ensure_app_dir(state_dir: pathlib.Path, dpl_id: str) -> pathlib.Path:
    """Create the app's directory with ``data/`` and ``releases/`` (0700); return it."""
    directory = app_dir(state_dir, dpl_id)
    for sub in (directory, directory / "data", directory / "releases"):
        sub.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write(path: pathlib.Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode`` (umask ignored).

    The bytes go to a fresh tmp file in the same directory, are fsynced, renamed over
    ``path`` and the directory is fsynced: after a crash at any point ``path`` holds the
    old content or the new, never a mix.  The tmp file is created with ``mode`` already,
    so a 0600 file is never readable by others, not even for a moment.  Missing parent
    directories are created (0700).
    """
    path = pathlib.Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777)
    try:
        try:
            os.fchmod(fd, mode & 0o7777)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_record(state_dir: pathlib.Path, record: AppRecord) -> pathlib.Path:
    """Write ``apps/<id>/state.json`` atomically (0644: it holds no secrets); return its path.

    A record that changes the spec hash, the status, the error or the hold also adds a
    line to ``history.jsonl`` (``reconcile history``): records are overwritten, and the
    releases keep only working applies, so failures would otherwise leave no trace.
    """
    path = record_path(state_dir, record.id)
    atomic_write(path, (record.model_dump_json(indent=2) + "\n").encode(), 0o644)
    with contextlib.suppress(OSError, ValueError):
        _append_history(path.parent, record)
    return path


def _history_line(record: AppRecord) -> dict[str, object]:
    status: str = record.status
    if record.held is not None:
        status = "held"
    elif record.last_error and "rolled back" in record.last_error:
        status = "rolled back"
    return {
        "at": record.updated_at,
        "spec_hash": record.spec_hash,
        "status": status,
        "revision": record.revision,
        "message": record.last_error,
    }


def read_history(state_dir: pathlib.Path, dpl_id: str) -> list[dict[str, object]]:
    """The app's history lines, oldest first; unreadable lines are skipped."""
    try:
        data = _read_bounded(app_dir(state_dir, dpl_id) / HISTORY_FILE)
    except (OSError, ValueError):
        return []
    out: list[dict[str, object]] = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def _append_history(directory: pathlib.Path, record: AppRecord) -> None:
    lines = read_history(directory.parent.parent, record.id)
    entry = _history_line(record)
    if lines:
        last = lines[-1]
        if all(last.get(k) == entry[k] for k in ("spec_hash", "status", "message")):
            return
    lines = [*lines, entry][-KEEP_HISTORY:]
    text = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)
    atomic_write(directory / HISTORY_FILE, text.encode(), 0o644)


def _read_bounded(path: pathlib.Path) -> bytes | None:
    """The file's bytes, or None when it is missing; refuses non-regular and huge files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    return data


def read_record(state_dir: pathlib.Path, dpl_id: str) -> AppRecord | None:
    """The app's record, or None when it is missing or unreadable (logged, never raised)."""
    try:
        path = record_path(state_dir, dpl_id)
    except ValueError as exc:
        log.warning("state dir: %s", exc)
        return None
    try:
        data = _read_bounded(path)
    except (OSError, ValueError) as exc:
        log.warning("state dir: ignoring %s: %s", path, exc)
        return None
    if data is None:
        return None
    try:
        record = AppRecord.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(file)"
        log.warning(
            "state dir: ignoring %s: not a valid record (%s: %s)", path, where, first["msg"]
        )
        return None
    if record.id != dpl_id:
        log.warning("state dir: ignoring %s: it is the record of %s", path, record.id)
        return None
    return record


def list_records(state_dir: pathlib.Path) -> list[AppRecord]:
    """Every readable record under ``apps/``, by id; a missing state dir is no records."""
    apps = pathlib.Path(state_dir) / "apps"
    try:
        names = sorted(entry.name for entry in os.scandir(apps) if entry.is_dir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("state dir: cannot list %s: %s", apps, exc)
        return []
    out = []
    for name in names:
        if not DEPLOYMENT_ID_RE.match(name):
            continue
        record = read_record(state_dir, name)
        if record is not None:
            out.append(record)
    return out


PROXY_CONFIG = "proxy-settings.json"  # the proxy: settings of the last local apply
AGENT_PROXY_CONFIG = "agent/proxy.json"  # ... of the agent's last command (agent.runner)


def save_proxy_config(state_dir: pathlib.Path, config: ProxyConfig) -> None:
    """Remember the repository's proxy settings (``reconcile apply`` does, as the agent
    does for its commands): a later ``reconcile rollback`` has no repository to read them
    from, and the proxy container is recreated when its settings differ.

    Unchanged settings are not written again: a no-op reconcile writes nothing (and
    waits for no fsync)."""
    path = pathlib.Path(state_dir) / PROXY_CONFIG
    data = config.model_dump_json().encode()
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    with contextlib.suppress(OSError):
        atomic_write(path, data, 0o600)


def saved_proxy_config(state_dir: pathlib.Path) -> ProxyConfig:
    """The proxy settings the last apply used here (a local apply's, else the agent's)."""
    for rel in (PROXY_CONFIG, AGENT_PROXY_CONFIG):
        try:
            return ProxyConfig.model_validate_json((pathlib.Path(state_dir) / rel).read_bytes())
        except (OSError, ValueError):
            continue
    return ProxyConfig()
