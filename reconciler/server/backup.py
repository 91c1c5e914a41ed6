"""Online backup and offline restore of the control plane's store.

Why the SQLite backup API and not ``cp``: the server keeps writing while a backup runs
(webhooks, heartbeats), and in WAL mode the newest commits live in ``reconcile.db-wal``
until a checkpoint, so a copy of the main file alone misses them and a copy of both
files taken at slightly different moments can be torn.  ``sqlite3.Connection.backup``
with ``pages=-1`` copies every page in one step inside one read transaction: the copy is
the database exactly as it was at one commit, whatever arrives meanwhile (WAL readers
never block the writer, so the server keeps answering webhooks during the copy).

The copy is written beside its destination, switched out of WAL mode (one
self-contained file), checked (``PRAGMA quick_check``), fsynced and renamed into place,
so a crash never leaves half a backup under the final name.

A restore is offline (stop the server first): it checks the file is ours and not from a
newer schema *before* touching the data dir, keeps the database it replaces beside it,
and runs the migrations, so a backup made by an older release comes back upgraded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from reconciler.model.errors import ReconcilerError
from reconciler.server.database import is_postgres_url, redact_url
from reconciler.server.store import DB_NAME, SCHEMA_VERSION, SchemaError, Store

__all__ = [
    "BackupResult",
    "RestoreResult",
    "SqliteOnly",
    "backup_store",
    "restore_store",
    "sqlite_file",
]


class SqliteOnly(ReconcilerError):
    """The store is on PostgreSQL: a file copy cannot back it up.  Use PostgreSQL's own
    tools; the message says which."""


def sqlite_file(location: pathlib.Path | str) -> pathlib.Path:
    """The SQLite file of a store ``location`` (a path, or what
    :func:`reconciler.server.config.store_location` answers).  Raises :class:`SqliteOnly`
    for a PostgreSQL URL: copying some SQLite file instead would give a backup that
    restores nothing."""
    if isinstance(location, str) and is_postgres_url(location):
        raise SqliteOnly(
            f"the store is on PostgreSQL ({redact_url(location)}), and `reconcile serve "
            "backup|restore` copy only an SQLite store. Use PostgreSQL's tools: `pg_dump "
            "--format=custom --file=reconcile.dump <url>` (online, consistent) and "
            "`pg_restore --clean --if-exists --dbname=<url> reconcile.dump` with every "
            'replica stopped (see README, "Choosing a database")'
        )
    return pathlib.Path(location)


# Tables every schema version since the first has: a file without them is not ours.
_CORE_TABLES = frozenset({"agents", "commands", "deployments", "events", "deliveries"})


@dataclass(frozen=True)
class BackupResult:
    path: pathlib.Path
    schema_version: int
    size: int
    counts: dict[str, int]


@dataclass(frozen=True)
class RestoreResult:
    path: pathlib.Path
    from_version: int
    schema_version: int
    replaced: pathlib.Path | None  # where the previous database was kept


def backup_store(
    data_dir: pathlib.Path, dest: pathlib.Path, *, file: pathlib.Path | None = None
) -> BackupResult:
    """Copy ``<data_dir>/reconcile.db`` (or the SQLite ``file`` replicas share, given with
    ``--database``) to ``dest`` while the server may be writing to it.

    Raises :class:`SchemaError` when there is no database or it is not ours, and
    ``OSError`` when ``dest`` cannot be written.
    """
    source = file if file is not None else data_dir / DB_NAME
    if not source.is_file():
        where = f"at {source}" if file is not None else f"in {data_dir} ({source} is missing)"
        raise SchemaError(f"no control-plane database {where}")
    dest = dest.absolute()
    if dest.exists() and dest.resolve() == source.resolve():
        raise SchemaError(f"{dest} is the live database itself: back up to another file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _connect(source) as src:
        version = _check_ours(src, source)
        fd, tmp_str = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = pathlib.Path(tmp_str)
        try:
            with _connect(tmp) as dst:
                src.backup(dst)  # pages=-1: one step, one read transaction, one commit's view
                dst.execute("PRAGMA journal_mode = DELETE")
                _check_integrity(dst, tmp)
                counts = _counts(dst)
            tmp.chmod(0o600)  # agent reports, hashed secrets: not for other users
            _fsync(tmp)
            os.replace(tmp, dest)
            _fsync(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return BackupResult(dest, version, dest.stat().st_size, counts)


def restore_store(
    backup: pathlib.Path,
    data_dir: pathlib.Path,
    *,
    force: bool = False,
    file: pathlib.Path | None = None,
) -> RestoreResult:
    """Make ``backup`` the server's database in ``data_dir``, or the SQLite ``file`` the
    replicas share (the server must be stopped).

    Refuses, changing nothing, a file that is not a control-plane database, is damaged,
    or comes from a newer schema than this release knows (:class:`SchemaError`), and an
    existing database unless ``force`` (then it is kept as
    ``reconcile.db.before-restore-<unix time>``).
    """
    if not backup.is_file():
        raise SchemaError(f"{backup}: no such file")
    target = file.absolute() if file is not None else data_dir / DB_NAME
    data_dir = target.parent
    with _connect(backup, read_only=True) as src:
        from_version = _check_ours(src, backup)
        if from_version > SCHEMA_VERSION:
            raise SchemaError(
                f"{backup} has schema version {from_version}, newer than this release's "
                f"{SCHEMA_VERSION}: it was made by a newer compose-reconciler; restore it "
                "with that version (or newer)"
            )
        _check_integrity(src, backup)
        if target.exists() and not force:
            raise SchemaError(
                f"{target} exists: stop the server, then pass --force to replace it "
                "(the current database is kept beside it)"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_str = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".restore", dir=data_dir)
        os.close(fd)
        tmp = pathlib.Path(tmp_str)
        try:
            with _connect(tmp) as dst:
                src.backup(dst)
            Store(tmp).close()  # the migrations: an older backup comes back upgraded
            with _connect(tmp) as dst:
                dst.execute("PRAGMA journal_mode = DELETE")  # fold the WAL into the file
            tmp.chmod(0o600)
            replaced = _set_aside(target) if target.exists() else None
            os.replace(tmp, target)
            _fsync(data_dir)
        except BaseException:
            for leftover in (tmp, *_sidecars(tmp)):
                leftover.unlink(missing_ok=True)
            raise
    return RestoreResult(target, from_version, SCHEMA_VERSION, replaced)


# ----------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _connect(path: pathlib.Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"{path.absolute().as_uri()}?mode=ro" if read_only else str(path)
    try:
        db = sqlite3.connect(uri, uri=read_only, timeout=30.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise SchemaError(f"{path}: cannot open as an SQLite database: {exc}") from None
    try:
        db.execute("PRAGMA busy_timeout = 30000")
        yield db
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    finally:
        db.close()


def _check_ours(db: sqlite3.Connection, path: pathlib.Path) -> int:
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path} is not an SQLite database ({exc})") from None
    if version == 0 or not tables >= _CORE_TABLES:
        raise SchemaError(f"{path} is not a compose-reconciler control-plane database")
    return version


def _check_integrity(db: sqlite3.Connection, path: pathlib.Path) -> None:
    verdict = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
    if verdict != ["ok"]:
        raise SchemaError(f"{path} is damaged: {'; '.join(verdict[:3])}")


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    sql = "SELECT count(*) FROM {}"  # our fixed table names, never input
    return {t: int(db.execute(sql.format(t)).fetchone()[0]) for t in sorted(_CORE_TABLES)}


def _sidecars(db: pathlib.Path) -> tuple[pathlib.Path, ...]:
    return (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))


def _set_aside(target: pathlib.Path) -> pathlib.Path:
    """Keep the database being replaced, WAL content included (a consistent copy)."""
    aside = target.with_name(f"{target.name}.before-restore-{int(time.time())}")
    backup_store(target.parent, aside, file=target)
    for path in (target, *_sidecars(target)):
        path.unlink(missing_ok=True)
    return aside


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
