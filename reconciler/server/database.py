"""The store's two backends: an SQLite file (the embedded default) and PostgreSQL.

:class:`~reconciler.server.store.Store` writes its SQL once, in SQLite's dialect with ``?``
placeholders, and runs it through one of the two objects here.  Each gives the same three
things: :meth:`tx` (one write transaction), :meth:`query` (a read), and :meth:`migrate`.

Rules for SQL in the store (they keep one text valid on both):

- placeholders are ``?``; PostgreSQL gets ``%s`` (and a literal ``%`` doubled), translated
  once per statement text and cached;
- ``INSERT OR IGNORE`` becomes ``INSERT ... ON CONFLICT DO NOTHING`` and ``x IS ?`` becomes
  ``x IS NOT DISTINCT FROM %s``; anything else SQLite-only (``INSERT OR REPLACE``,
  ``last_insert_rowid()``, ``PRAGMA``, a sub-select in FROM without an alias) is not
  translated: write the portable form (``ON CONFLICT ... DO UPDATE``, ``RETURNING id``,
  ``(...) AS t``);
- the SQL functions the store defines (``is_audit``, ``json_remove`` with a ``$.key``
  path) exist on both: a Python function on SQLite, a SQL function on PostgreSQL;
- rows answer ``row["col"]`` and ``row[0]`` on both.

Transactions: SQLite's ``BEGIN IMMEDIATE`` makes writers take turns, and the store's
methods were written for that (some read, then write).  On PostgreSQL a transaction takes
the same turn with a transaction-scoped advisory lock (``pg_advisory_xact_lock``), shared by
every replica on the database, so a method body means the same on both.  A transaction
whose writes are safe without the turn (one conditional UPDATE, or an INSERT deduplicated
by a unique constraint: a delivery id, a bootstrap token) passes ``serial=False`` and runs
concurrently at READ COMMITTED, where the constraint or the row lock decides who wins.

Migrations are SQLite DDL too; :func:`postgres_ddl` translates the types (see its rules).
A migration that does not translate gets a per-version PostgreSQL text instead
(``pg_overrides``).  The schema version lives in ``PRAGMA user_version`` on SQLite and in a
one-row ``schema_version`` table on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.model.errors import ReconcilerError
from reconciler.model.redact import redact

if TYPE_CHECKING:  # psycopg is imported only when a PostgreSQL URL is used
    import psycopg
    import psycopg_pool

__all__ = [
    "Connection",
    "Cursor",
    "Database",
    "DatabaseError",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "is_postgres_url",
    "lock_key",
    "postgres_ddl",
    "postgres_sql",
    "redact_url",
]

#: Connections the PostgreSQL pool keeps per Store (replica): uvicorn runs the agents'
#: requests in up to 40 threads, but each holds a connection for a few milliseconds.
POOL_MAX = 10
POOL_MIN = 1
#: Seconds to wait for a connection (the pool's, and the first connect) before failing.
CONNECT_TIMEOUT = 10.0
#: TCP keepalives on the connections that hold a leadership lock or LISTEN, on both ends:
#: the client's (libpq) so a replica learns its connection is gone, the server's (the
#: session's ``tcp_keepalives_*``) so PostgreSQL frees the lock of a replica whose host
#: vanished without closing its socket, after 5 + 3 x 2 = 11 s.  A replica that dies on a
#: live host is noticed at once: the kernel closes its socket.
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
#: The server's side, added to the URL's own ``options`` (a search_path, say).
SERVER_KEEPALIVE = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
#: How often a watcher looks up from LISTEN to see whether it was stopped (seconds); a
#: notification itself is handed over as soon as it arrives.
WATCH_POLL = 0.25
#: A lost LISTEN connection is made again after this, doubling up to WATCH_BACKOFF_MAX.
WATCH_BACKOFF = 0.1
WATCH_BACKOFF_MAX = 5.0
#: NOTIFY payloads are at most 8000 bytes; a signal is a channel and a key (an agent id).
SIGNAL_MAX = 1000

log = logging.getLogger("reconciler.server")


class DatabaseError(ReconcilerError):
    """The database cannot be reached or used (wrong URL, server down, refused login).
    The message never carries the password."""


class Row(Protocol):
    """A result row: by column name or position (``sqlite3.Row`` is one)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a store method sees inside a transaction (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class Database(Protocol):
    kind: str  # "sqlite" | "postgresql"
    #: Exceptions that mean "the database did not answer" (``/readyz``).
    errors: tuple[type[Exception], ...]

    def tx(
        self, *, fsync: bool = True, serial: bool = True, turn: str | None = None
    ) -> contextlib.AbstractContextManager[Connection]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def define_function(
        self, name: str, nargs: int, fn: Callable[..., Any] | None, pg_sql: str
    ) -> None:
        """``fn`` as SQL function ``name`` on SQLite (None: SQLite has it built in), or
        ``pg_sql`` (``CREATE OR REPLACE FUNCTION ...``) run by each migrate on PostgreSQL."""
        ...

    def migrate(self, migrations: Sequence[str], pg_overrides: Mapping[int, str]) -> None: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


def redact_url(text: str) -> str:
    """``text`` with the userinfo of any URL in it and any ``password=`` value masked."""
    return _PASSWORD_PARAM.sub(r"\1***", redact(text))


class SchemaError(ReconcilerError):
    """The database was written by a newer version of the server, or is not ours."""


# --------------------------------------------------------------------------- SQLite


class SqliteDatabase:
    """One connection shared by all threads behind a lock (see the store's docstring for
    why), in WAL mode, ``synchronous`` FULL or NORMAL."""

    kind = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str, *, synchronous: str) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(synchronous)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network filesystem
            raise SchemaError(f"{path}: SQLite refused WAL mode (got {mode})")
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._synchronous = synchronous
        self._db.execute("PRAGMA foreign_keys = ON")

    def define_function(
        self, name: str, nargs: int, fn: Callable[..., Any] | None, pg_sql: str
    ) -> None:
        if fn is not None:
            self._db.create_function(name, nargs, fn, deterministic=True)

    @contextlib.contextmanager
    def tx(
        self, *, fsync: bool = True, serial: bool = True, turn: str | None = None
    ) -> Iterator[Connection]:
        """``BEGIN IMMEDIATE``: taken up front, so it never fails half-way on a lock
        upgrade (SQLite always serialises writers: ``serial`` and ``turn`` change nothing
        here)."""
        with self._lock:
            relaxed = not fsync and self._synchronous == "FULL"
            if relaxed:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if relaxed:
                    self._db.execute("PRAGMA synchronous = FULL")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def migrate(self, migrations: Sequence[str], pg_overrides: Mapping[int, str]) -> None:
        with self.tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            _check_version(version, len(migrations), self.path)
            if (
                version == 0
                and db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                ).fetchone()[0]
            ):
                raise SchemaError(f"{self.path} is an SQLite database, but not ours")
            for target in range(version + 1, len(migrations) + 1):
                for statement in migrations[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check_version(version: int, latest: int, where: str) -> None:
    if version > latest:
        raise SchemaError(
            f"{where} has schema version {version}, newer than this server's {latest}: it was "
            "written by a newer compose-reconciler; upgrade this one (or use a fresh database)"
        )


# ----------------------------------------------------------------------- PostgreSQL

# SQLite type names -> PostgreSQL.  REAL is 8 bytes in SQLite (timestamps from time.time()
# need all of them): DOUBLE PRECISION, never PostgreSQL's 4-byte REAL.  INTEGER is 8 bytes
# in SQLite too: BIGINT.  ``INTEGER PRIMARY KEY`` is SQLite's rowid alias, given a value
# when the INSERT names none: an identity column ("BY DEFAULT", so an explicit id still
# goes in, as plans' ``id = 1`` does).
_DDL_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\b", re.I), ")"),
)


def postgres_ddl(sql: str) -> str:
    """SQLite DDL as PostgreSQL DDL: the type names above, ``WITHOUT ROWID`` dropped.
    Everything else (``CREATE TABLE/INDEX``, ``ALTER TABLE ADD COLUMN``, partial and unique
    indexes, ``CHECK``, ``DEFAULT``) is the same in both."""
    for pattern, replacement in _DDL_RULES:
        sql = pattern.sub(replacement, sql)
    return sql


_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_IS_NOT_PARAM = re.compile(r"\bIS\s+NOT\s+\?", re.I)
_IS_PARAM = re.compile(r"\bIS\s+\?", re.I)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """One statement in the store's SQLite dialect as psycopg's PostgreSQL (rules in the
    module docstring).  ``?`` inside a quoted literal is left alone."""
    if _INSERT_OR_IGNORE.match(sql):
        sql = _INSERT_OR_IGNORE.sub("INSERT INTO", sql, count=1)
        returning = _RETURNING.search(sql)
        if returning:
            sql = f"{sql[: returning.start()]}ON CONFLICT DO NOTHING {sql[returning.start() :]}"
        else:
            sql = f"{sql.rstrip().rstrip(';')} ON CONFLICT DO NOTHING"
    sql = _IS_NOT_PARAM.sub("IS DISTINCT FROM ?", sql)
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


class _PgRow(tuple[Any, ...]):
    """A row by position (a tuple) and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> _PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _PgRow]:
    names = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: _PgRow(values, names)


class _PgConnection:
    """A pooled psycopg connection that speaks the store's dialect (:func:`postgres_sql`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        cur = self._conn.cursor()
        cur.execute(postgres_sql(sql), tuple(parameters))
        return cur

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """One statement over many rows in one round trip batch (psycopg's pipeline):
        a row at a time cost a reconcile of 1,000 deployments 1,000 round trips."""
        cur = self._conn.cursor()
        cur.executemany(postgres_sql(sql), [tuple(p) for p in parameters])
        return cur


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key from text (PostgreSQL's lock ids are bigint)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresDatabase:
    """A psycopg 3 connection pool on one PostgreSQL database (and schema: the URL's
    ``options=-csearch_path=...`` puts two installations, or two tests, in one database).

    Parameters are bound on the client (``ClientCursor``), as SQLite binds them: the
    store's SQL has untyped parameters (``? IS NULL``, ``COALESCE(?, next_at)``) that
    PostgreSQL's server-side binding could not type.
    """

    kind = "postgresql"

    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        import psycopg
        import psycopg_pool

        self.url = url
        self.location = redact_url(url)
        self.errors: tuple[type[Exception], ...] = (psycopg.Error, psycopg_pool.PoolTimeout)
        self._psycopg = psycopg
        self._local = threading.local()
        self._pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=pool_max,
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            open=False,
            timeout=CONNECT_TIMEOUT,
            name="reconciler-store",
        )
        try:
            # One plain connection first: a wrong password or an unknown database fails here
            # at once with the server's reason, where the pool would retry it until timeout.
            psycopg.Connection.connect(url, **self._connect_kwargs()).close()
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            schema = self.query("SELECT current_schema()")[0][0]
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool.close()
            raise DatabaseError(
                f"cannot use the PostgreSQL database {self.location}: {self._why(exc)}"
            ) from exc
        if schema is None:
            self._pool.close()
            raise DatabaseError(
                f"{self.location}: no schema to write to (the search_path names none that exists)"
            )
        #: Advisory locks and NOTIFY channels are per database; the schema is part of their
        #: names, so two installations (or tests) in two schemas of one database never meet.
        self.schema = str(schema)
        self._serial_key = lock_key(self.schema, "store:serial")
        self._closed = False
        self._functions: list[str] = []
        # replicas: the leadership connection and what it holds, the watchers, and this
        # Store's id in its signals (a replica does not wake itself)
        self._lead_lock = threading.Lock()
        self._lead_conn: psycopg.Connection[Any] | None = None
        self._leading: dict[str, str] = {}
        self._watchers: list[Callable[[], None]] = []
        self._origin = secrets.token_hex(8)
        self._channel = "reconcile_" + hashlib.sha256(self.schema.encode()).hexdigest()[:16]

    def _connect_kwargs(self) -> dict[str, Any]:
        import psycopg

        return {
            "autocommit": True,
            "cursor_factory": psycopg.ClientCursor,
            "row_factory": _row_factory,
            "connect_timeout": int(CONNECT_TIMEOUT),
            "application_name": "reconcile-serve",
        }

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        """Python values as SQLite gives them back: a bool goes in as 0/1 (columns are
        integers), and an aggregate's NUMERIC (``sum()`` of BIGINT) comes out as int."""
        from psycopg.adapt import Loader
        from psycopg.types.numeric import IntDumper

        class _NumericLoader(Loader):
            def load(self, data: Any) -> Any:
                value = decimal.Decimal(bytes(data).decode())
                return int(value) if value == value.to_integral_value() else float(value)

        conn.adapters.register_dumper(bool, IntDumper)
        conn.adapters.register_loader("numeric", _NumericLoader)

    def _why(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        password = urllib.parse.urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return redact_url(text)

    def define_function(
        self, name: str, nargs: int, fn: Callable[..., Any] | None, pg_sql: str
    ) -> None:
        self._functions.append(pg_sql)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        held = getattr(self._local, "conn", None)
        if held is not None:  # a query inside this thread's transaction sees its writes
            yield held
            return
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def tx(
        self, *, fsync: bool = True, serial: bool = True, turn: str | None = None
    ) -> Iterator[Connection]:
        """One transaction on one pooled connection; ``serial``: in turn with every other
        serial transaction on this database (module docstring); ``turn``: in turn only with
        the transactions of that name instead (they commit in the order they took it);
        ``fsync=False``: committed without waiting for the WAL flush (``synchronous_commit
        = off``, this transaction only): the same promise as SQLite's NORMAL."""
        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError("Store transactions do not nest")
        with self._pool.connection() as conn, conn.transaction():
            self._local.conn = conn
            try:
                if turn is not None:
                    key = lock_key(self.schema, f"store:{turn}")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                elif serial:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._serial_key,))
                if not fsync:
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield _PgConnection(conn)
            finally:
                self._local.conn = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._connection() as conn:
            return conn.cursor().execute(postgres_sql(sql), tuple(params)).fetchall()

    def migrate(self, migrations: Sequence[str], pg_overrides: Mapping[int, str]) -> None:
        """Every migration not yet applied, in one transaction, in turn with any other
        replica migrating at the same moment (a transaction-scoped advisory lock)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, "migrate"),))
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
            if "schema_version" not in tables:
                if tables:
                    raise SchemaError(
                        f"{self.location} (schema {self.schema}) has tables, but not ours"
                    )
                conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0])
            _check_version(version, len(migrations), f"{self.location} (schema {self.schema})")
            for sql in self._functions:
                conn.execute(sql)
            for target in range(version + 1, len(migrations) + 1):
                text = pg_overrides.get(target) or postgres_ddl(migrations[target - 1])
                for statement in text.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = %s", (target,))

    def schema_version(self) -> int:
        return int(self.query("SELECT version FROM schema_version")[0][0])

    # ------------------------------------------------------------ replicas (issue 17)

    # Several replicas on one database: leadership with session advisory locks, wake-ups
    # with NOTIFY/LISTEN.  The Store's try_lead/resign/signal/watch dispatch here on
    # PostgreSQL (the portable versions use the leases and signals tables).

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (leadership, LISTEN): it lives as long
        as what it holds, with TCP keepalives (:data:`KEEPALIVE`)."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            options = str(conninfo_to_dict(self.url).get("options") or "")
            return self._psycopg.Connection.connect(
                self.url,
                **self._connect_kwargs(),
                **KEEPALIVE,
                options=f"{options} {SERVER_KEEPALIVE}".strip(),
            )
        except self._psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL {self.location}: {self._why(exc)}"
            ) from exc

    def try_lead(self, name: str, holder: str, *, ttl: float, now: float | None = None) -> bool:
        """Take or keep leadership ``name`` for ``holder``: True while ``holder`` leads.

        A session advisory lock (``pg_try_advisory_lock``) on a connection kept for it:
        the lock lasts exactly as long as that connection, so a replica that dies (or
        whose connection is cut) stops leading at once, whatever ``ttl`` says (it is the
        lease length of the portable version; unused here).  Each call checks that the
        connection still answers: a leader that lost it learns so on its next call.
        Never raises: a database that does not answer means "not leading".
        """
        key = lock_key(self.schema, "lead", name)
        with self._lead_lock:
            if self._closed:
                return False
            conn = self._lead_conn
            if conn is not None:
                try:
                    conn.execute("SELECT 1")
                except self._psycopg.Error as exc:
                    lost = sorted(self._leading)
                    log.warning(
                        "leadership connection lost (%s); no longer leading %s",
                        self._why(exc),
                        ", ".join(lost) or "anything",
                    )
                    self._drop_lead_conn()
                    conn = None
            current = self._leading.get(name)
            if current is not None:
                # Session locks are re-entrant: a second holder in this process must not
                # take it through the same connection.
                return current == holder and conn is not None
            try:
                if conn is None:
                    conn = self._lead_conn = self.connect()
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                got = row is not None and bool(row[0])
            except (DatabaseError, self._psycopg.Error) as exc:
                log.warning("cannot try leadership %s: %s", name, self._why(exc))
                self._drop_lead_conn()
                return False
            if got:
                self._leading[name] = holder
            return got

    def holder(self, name: str) -> str | None:
        """Who leads ``name`` through this process's connection (None: not this process)."""
        with self._lead_lock:
            return self._leading.get(name) if self._lead_conn is not None else None

    def resign(self, name: str, holder: str) -> None:
        """Give up ``name`` if ``holder`` leads it (another replica may take it at once)."""
        with self._lead_lock:
            if self._leading.get(name) != holder:
                return
            del self._leading[name]
            conn = self._lead_conn
            if conn is None:
                return
            try:
                conn.execute(
                    "SELECT pg_advisory_unlock(%s)", (lock_key(self.schema, "lead", name),)
                )
            except self._psycopg.Error:  # the connection is gone: so is the lock
                self._drop_lead_conn()

    def _drop_lead_conn(self) -> None:
        conn, self._lead_conn = self._lead_conn, None
        self._leading.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def signal(self, channel: str, key: str) -> None:
        """Tell the other replicas' watchers ``(channel, key)``.  Inside a store
        transaction on this thread it is sent when that transaction commits (and never if
        it rolls back): NOTIFY is transactional."""
        self.signal_many(channel, [key])

    def signal_many(self, channel: str, keys: Sequence[str]) -> None:
        """:meth:`signal` for each of ``keys``, in one statement."""
        payloads = [json.dumps([self._origin, channel, key]) for key in keys]
        for payload in payloads:
            if len(payload.encode()) > SIGNAL_MAX:
                raise ValueError(f"signal too long ({len(payload)} bytes): {channel!r}")
        with self._connection() as conn:
            conn.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (self._channel, payloads)
            )

    def watch(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``callback(channel, key)`` (from a thread of its own) for every signal
        another replica sends; returns the function that stops it.

        Returns once LISTEN is in place, so a signal sent after this call is seen.  A lost
        connection is made again (backoff :data:`WATCH_BACKOFF` to
        :data:`WATCH_BACKOFF_MAX`); signals sent meanwhile are lost, which the callers'
        own timers cover (a long poll ends, the reconcile timer fires).
        """
        stop = threading.Event()
        ready = threading.Event()
        failure: list[BaseException] = []

        def deliver(payload: str) -> None:
            try:
                origin, channel, key = json.loads(payload)
            except (ValueError, TypeError):
                log.warning("ignored a malformed signal on %s", self._channel)
                return
            if origin == self._origin:
                return
            try:
                callback(str(channel), str(key))
            except Exception:
                log.exception("signal watcher failed on (%s, %s)", channel, key)

        def run() -> None:
            from psycopg import sql

            backoff = WATCH_BACKOFF
            while not stop.is_set():
                try:
                    conn = self.connect()
                except DatabaseError as exc:
                    if not ready.is_set():
                        failure.append(exc)
                        ready.set()
                        return
                    log.warning("signal watcher: %s; retrying in %.1f s", exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, WATCH_BACKOFF_MAX)
                    continue
                try:
                    with conn:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                        ready.set()
                        backoff = WATCH_BACKOFF
                        while not stop.is_set():
                            for note in conn.notifies(timeout=WATCH_POLL):
                                deliver(note.payload)
                except self._psycopg.Error as exc:
                    if stop.is_set():
                        return
                    log.warning(
                        "signal watcher lost its connection (%s); listening again in %.1f s",
                        self._why(exc),
                        backoff,
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

        thread = threading.Thread(target=run, name="store-watch", daemon=True)
        thread.start()
        ready.wait(CONNECT_TIMEOUT * 2)
        if failure or not ready.is_set():
            stop.set()
            raise failure[0] if failure else DatabaseError(f"LISTEN on {self.location} timed out")

        def stop_watching() -> None:
            stop.set()
            thread.join(CONNECT_TIMEOUT)
            with self._lead_lock:
                if stop_watching in self._watchers:
                    self._watchers.remove(stop_watching)

        with self._lead_lock:
            self._watchers.append(stop_watching)
        return stop_watching

    def close(self) -> None:
        for stop_watching in list(self._watchers):
            stop_watching()
        with self._lead_lock:
            self._closed = True  # a closed store never leads again (try_lead says False)
            self._drop_lead_conn()
        self._pool.close()
