"""The control plane's durable state: one SQLite file in WAL mode, or a PostgreSQL database.

The SQL below is written once, in SQLite's dialect; :mod:`reconciler.server.database` runs it
on either backend (its docstring has the rules that keep a statement portable).  What
follows about connections and fsync describes SQLite; on PostgreSQL each transaction takes a
pooled connection, and ``fsync=False`` is ``synchronous_commit = off`` for that transaction.

Everything the server needs to carry on after a crash or a restart lives here (agents
and their secrets' hashes, one-time tokens, commands and their results, webhook delivery
ids, the last plan, the event log); nothing of it lives only in memory.  Every write is
committed before the method returns, so an HTTP answer given after a store call never
claims something the disk does not hold.

Connection choice: one connection per :class:`Store`, shared by all threads behind a
lock.  SQLite serialises writers anyway, the queries here are point lookups of a few
microseconds, and one connection keeps transactions simple (``BEGIN IMMEDIATE`` ...
``COMMIT`` under the lock, never a half-visible write).  Other *processes* (``reconcile
agent token --data-dir``) open their own connection; WAL lets them write while the
server runs, and ``busy_timeout`` makes a short wait instead of an error.  Several
``reconcile serve`` replicas may share the file the same way: the leases, signals,
bundles and shared values at the end of this class are what they coordinate through
(:mod:`reconciler.server.replicas`).

``synchronous=FULL``: in WAL mode that fsyncs the log on every commit, so a committed
token, agent, command or result survives a power cut too, not only a process crash.
The webhook path (delivery ids, event rows) and heartbeats commit with
``synchronous=NORMAL`` instead: the commit is in the WAL before the answer, so it
survives a crash of the server process, and the next FULL commit (a command, a result, a
token) or WAL checkpoint fsyncs it too; only an OS crash or a power cut inside that
window can lose one (a heartbeat is sent again within its interval).  Losing one
costs nothing that matters (a replay of that delivery triggers one more reconcile,
which is idempotent; a log line is missing), while an fsync per delivery (two, with its
event) capped webhook intake at ~690 deliveries/s on this disk against ~1,100 without
(``benchmarks/webhooks.py``).

Secrets (agent secrets, bootstrap tokens, deploy-hook tokens) are stored as SHA-256
digests and compared with :func:`hmac.compare_digest`.  They are 32 random bytes each:
with 256 bits of entropy nobody can guess one whatever the hash speed, so a slow KDF
(which protects *low*-entropy passwords) would only make every agent request slower.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import pathlib
import secrets
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.model.errors import InvalidSpec
from reconciler.model.redact import redact
from reconciler.server.database import (
    Connection,
    Database,
    PostgresDatabase,
    Row,
    SchemaError,
    SqliteDatabase,
    is_postgres_url,
)

log = logging.getLogger("reconciler.server")

__all__ = [
    "AUDIT_KINDS",
    "BUNDLE_CHUNK",
    "DB_NAME",
    "MAX_BUNDLE_BYTES",
    "MIGRATIONS",
    "PROGRESS",
    "PROGRESS_RETENTION",
    "SCHEMA_VERSION",
    "AgentRow",
    "BundleTooLarge",
    "CommandRow",
    "CommitStatusRow",
    "DeploymentRow",
    "EventRow",
    "Issued",
    "NewCommand",
    "OutboxRouter",
    "OutboxRow",
    "ReportSeen",
    "SchemaError",
    "Store",
    "hash_secret",
    "new_agent_id",
    "secure_dir",
    "secure_files",
]

DB_NAME = "reconcile.db"
#: Bundles are stored in chunks of this size: streamed out one row at a time, never whole
#: in memory, and no single value near a backend's limit (SQLite's default is 1 GB).
BUNDLE_CHUNK = 1024 * 1024
#: The largest bundle stored (the agent refuses more: a build context is at most 100 MB,
#: a bundle adds the deployment's other directories).
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
#: A bundle whose command is no longer pending is kept this long (it is stored just
#: before its command is: the grace covers that gap).
BUNDLE_GRACE = 60.0
#: Signals are read by the other replicas within ~100 ms; kept a minute, then pruned.
SIGNAL_RETENTION = 60.0
SIGNAL_POLL = 0.1
#: Live progress events kept in the store for the other replicas (twice the events each
#: replica's hub keeps in memory for replay); older ones are pruned as new ones come.
PROGRESS_RETENTION = 2000
PROGRESS_BATCH = 100  # rows per INSERT (and the pruning period, in ids)
#: The signal (PostgreSQL: NOTIFY) that tells the other replicas a progress event is in.
PROGRESS = "progress"
TOKEN_TTL = 600.0  # bootstrap tokens: 10 minutes
DELIVERY_RETENTION = 30 * 86400.0
EVENT_RETENTION = 10_000  # events kept (the newest), audit events apart
AUDIT_RETENTION = 10_000  # audit events kept (the newest), whatever else happens
#: Security and admin events (who joined or left, which credentials were made, which
#: guard was lifted): the audit trail.  Kept apart from the rest (webhooks, reconciles),
#: so that no volume of noise, forged deliveries included, can push them out.
AUDIT_KINDS = ("agent.", "deploy_hook.", "mass_prune.", "credential.")


def is_audit(kind: str) -> int:
    """1 for an audit event kind (SQLite's ``is_audit(kind)``), else 0."""
    return int(kind.startswith(AUDIT_KINDS))


# Ordered; entry N-1 takes the schema from version N-1 to N.  Never edit a shipped
# entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        hostname TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        last_seen REAL,
        report TEXT
    );
    CREATE TABLE bootstrap_tokens (
        hash TEXT PRIMARY KEY,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        used_at REAL
    );
    CREATE TABLE deploy_hooks (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE deliveries (
        provider TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (provider, delivery_id)
    ) WITHOUT ROWID;
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        deployment TEXT NOT NULL,
        kind TEXT NOT NULL,
        spec_hash TEXT,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        created REAL NOT NULL,
        deadline REAL NOT NULL,
        result TEXT,
        finished REAL
    );
    CREATE INDEX commands_agent_state ON commands (agent, state);
    CREATE INDEX commands_deployment ON commands (deployment, agent, state);
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        agent TEXT NOT NULL,
        spec_hash TEXT,
        last_action TEXT,
        last_reason TEXT,
        last_command TEXT,
        last_result TEXT,
        url TEXT,
        updated REAL NOT NULL
    );
    CREATE TABLE plans (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        plan TEXT NOT NULL,
        revision TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        fields TEXT NOT NULL
    );
    """,
    # 2: what the agent says about itself; whether a deployment is still desired
    """
    ALTER TABLE agents ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE deployments ADD COLUMN desired INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: events out: the outbox, the commit statuses, and which agents were announced offline
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        event_id TEXT NOT NULL,
        delivery_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        delivered REAL,
        dead REAL,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (target, delivered, dead, next_at);
    CREATE TABLE commit_statuses (
        sha TEXT PRIMARY KEY,
        repo TEXT,
        state TEXT,
        commands TEXT NOT NULL DEFAULT '[]',
        updated REAL NOT NULL
    );
    ALTER TABLE agents ADD COLUMN offline_announced INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: exactly-once commands and O(1) heartbeats.  The state travels apart from the rest
    # of the report (a heartbeat with an unchanged digest rewrites neither), ``reports``
    # counts the reports that told the current state, and a finished command keeps that
    # count (``finish_mark``): see Store.create_commands.  At most one pending deploy
    # command per (agent, deployment): older duplicates are superseded first.
    """
    ALTER TABLE agents ADD COLUMN state TEXT;
    ALTER TABLE agents ADD COLUMN state_digest TEXT;
    ALTER TABLE agents ADD COLUMN reports INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE commands ADD COLUMN finish_mark INTEGER;
    UPDATE commands SET state = 'superseded' WHERE state = 'pending' AND kind != 'operation'
        AND EXISTS (SELECT 1 FROM commands newer WHERE newer.agent = commands.agent
        AND newer.deployment = commands.deployment AND newer.state = 'pending'
        AND newer.kind != 'operation' AND (newer.created > commands.created
        OR (newer.created = commands.created AND newer.id > commands.id)));
    CREATE UNIQUE INDEX commands_one_pending ON commands (agent, deployment)
        WHERE state = 'pending' AND kind != 'operation';
    CREATE INDEX deployments_agent ON deployments (agent, desired);
    """,
    # 5: several replicas on one database: leases, signals, and what lived in one process
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        origin TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE bundle_blobs (
        digest TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (digest, seq)
    );
    CREATE TABLE bundles (
        command_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX bundles_digest ON bundles (digest);
    CREATE TABLE shared (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        version TEXT NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 6: live progress shared by the replicas (the last PROGRESS_RETENTION events)
    """
    CREATE TABLE progress (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        body TEXT NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: PostgreSQL's text of a migration (by version) where translating the SQLite text above
#: (``database.postgres_ddl``: REAL -> DOUBLE PRECISION, INTEGER -> BIGINT, BLOB -> BYTEA,
#: INTEGER PRIMARY KEY [AUTOINCREMENT] -> an identity column) would not do.  Most migrations
#: need none: write portable DDL and append it to MIGRATIONS only.
PG_MIGRATIONS: dict[int, str] = {}

# The SQL functions the store's queries use, on PostgreSQL (SQLite runs the Python ones).
_PG_IS_AUDIT = (
    "CREATE OR REPLACE FUNCTION is_audit(kind TEXT) RETURNS BIGINT LANGUAGE sql IMMUTABLE "
    "AS $$ SELECT CASE WHEN "
    + " OR ".join(f"starts_with(kind, '{prefix}')" for prefix in AUDIT_KINDS)
    + " THEN 1 ELSE 0 END $$"
)
# SQLite's json_remove(doc, '$.a.b') for the ``$.key`` paths the store uses.
_PG_JSON_REMOVE = (
    "CREATE OR REPLACE FUNCTION json_remove(doc TEXT, path TEXT) RETURNS TEXT "
    "LANGUAGE sql IMMUTABLE AS $$ SELECT (doc::jsonb #- string_to_array(substr(path, 3), '.'))"
    "::text $$"
)


class BundleTooLarge(InvalidSpec):
    """A command's bundle is larger than an agent accepts: fix the repository."""


def secure_dir(directory: pathlib.Path) -> None:
    """The data dir, created 0700, and repaired to it when it is wider: it holds secret
    var values (the last plan, bundles) and the database."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        directory.chmod(0o700)


def secure_files(db: pathlib.Path) -> None:
    """The database and its WAL and shm files 0600 (repairs a database that an older
    version, or a wide umask, left readable to others)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_agent_id() -> str:
    return f"agt_{secrets.token_hex(8)}"


@dataclass(frozen=True)
class AgentRow:
    id: str
    hostname: str
    created: float
    last_seen: float | None
    report: dict[str, Any] | None  # the last report, its last known ``state`` included
    version: str
    state_digest: str | None = None
    #: Reports so far that told the server the agent's current state (a full one, or a
    #: digest equal to the one held): the clock of :meth:`Store.create_commands`.
    reports: int = 0


@dataclass(frozen=True)
class NewCommand:
    """A command to issue (see :meth:`Store.create_commands`)."""

    id: str
    agent: str
    deployment: str
    kind: str
    spec_hash: str | None
    payload: dict[str, Any]
    created: float
    deadline: float


@dataclass(frozen=True)
class Issued:
    """A command the store accepted, and the pending ones it superseded."""

    command: NewCommand
    superseded: list[str]


@dataclass(frozen=True)
class ReportSeen:
    """What :meth:`Store.record_report` found and did."""

    previous: float | None  # the previous ``last_seen`` (None: the first report)
    digest: str | None  # the state digest the server now holds for the agent
    changed: bool  # the report brought a state other than the one held
    known: bool  # the server holds the agent's current state (full, or digest equal)


@dataclass(frozen=True)
class CommandRow:
    id: str
    agent: str
    deployment: str
    kind: str
    spec_hash: str | None
    payload: dict[str, Any]
    state: str
    created: float
    deadline: float
    result: dict[str, Any] | None
    finished: float | None


@dataclass(frozen=True)
class DeploymentRow:
    id: str
    name: str
    agent: str
    spec_hash: str | None
    last_action: str | None
    last_reason: str | None
    last_command: str | None
    last_result: dict[str, Any] | None
    url: str | None
    updated: float
    desired: bool


@dataclass(frozen=True)
class EventRow:
    id: int
    time: float
    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    """One delivery still owed (or made) to one target: its bytes are fixed when the event
    is written, so every retry sends the same body under the same delivery id."""

    id: int
    target: str
    event_id: str
    delivery_id: str
    kind: str
    body: str
    created: float
    attempts: int
    next_at: float
    delivered: float | None
    dead: float | None
    last_error: str | None


@dataclass(frozen=True)
class CommitStatusRow:
    sha: str
    repo: str | None
    state: str | None  # None: a push named it, no reconcile has judged it yet
    commands: list[str]
    updated: float


class OutboxRouter(Protocol):
    """What an event owes to whom: the outbox rows written with it, in its transaction."""

    def wants(self, kind: str) -> bool:
        """Whether an event of this kind may owe a delivery (then it is fsynced)."""
        ...

    def route(
        self, kind: str, fields: dict[str, Any], event_id: str, now: float
    ) -> list[tuple[str, str, str]]:
        """``[(target, public kind, body)]``; bodies are fixed here, once."""
        ...


#: Outbox rows kept once delivered (or given up on): the newest ones, for the status API.
OUTBOX_RETENTION = 10_000


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """The server's database: SQLite (a file) or PostgreSQL (a URL, for several replicas).
    Thread-safe; every write commits before returning."""

    def __init__(self, path: pathlib.Path | str, *, synchronous: str = "FULL") -> None:
        """``path``: the SQLite file, or a ``postgresql://`` URL (module docstring of
        :mod:`reconciler.server.database`); ``synchronous`` is SQLite's."""
        self._router: OutboxRouter | None = None
        self._on_outbox: Callable[[], None] = lambda: None
        self.db: Database
        if isinstance(path, str) and is_postgres_url(path):
            self.path: pathlib.Path | None = None
            self.db = PostgresDatabase(path)
            self.location = self.db.location
        else:
            self.path = pathlib.Path(path)
            self.location = str(self.path)
            secure_dir(self.path.parent)
            # Created 0600 before SQLite opens it: SQLite gives the WAL and shm files the
            # database file's mode, so none of the three is ever readable by others.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self.db = SqliteDatabase(str(self.path), synchronous=synchronous)
            secure_files(self.path)
        self.db.define_function("is_audit", 1, is_audit, _PG_IS_AUDIT)
        self.db.define_function("json_remove", 2, None, _PG_JSON_REMOVE)  # SQLite's own
        try:
            self._migrate()
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def in_dir(cls, data_dir: pathlib.Path | str) -> Store:
        return cls(pathlib.Path(data_dir) / DB_NAME)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ plumbing

    def _tx(
        self, *, fsync: bool = True, serial: bool = True, turn: str | None = None
    ) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction, taken up front so it never fails half-way on a lock
        upgrade; committed when the block ends (fsynced unless ``fsync=False``: see the
        module docstring for which writes may skip it).  ``serial=False``: on PostgreSQL,
        not in turn with the other writers; only for a transaction whose outcome a unique
        constraint or one conditional UPDATE decides (:mod:`reconciler.server.database`);
        ``turn``: in turn only with the transactions of that name."""
        return self.db.tx(fsync=fsync, serial=serial, turn=turn)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.db.query(sql, params)

    def _migrate(self) -> None:
        self.db.migrate(MIGRATIONS, PG_MIGRATIONS)

    def schema_version(self) -> int:
        return self.db.schema_version()

    def ping(self) -> bool:
        """Whether the database answers a query (``/readyz``)."""
        try:
            self._query("SELECT 1 FROM plans LIMIT 1")
        except self.db.errors:
            return False
        return True

    # ----------------------------------------------------------- bootstrap tokens

    def create_bootstrap_token(self, ttl: float = TOKEN_TTL, *, now: float | None = None) -> str:
        token = f"rbt_{secrets.token_urlsafe(32)}"
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO bootstrap_tokens (hash, created, expires) VALUES (?, ?, ?)",
                (hash_secret(token), now, now + ttl),
            )
        return token

    def consume_bootstrap_token(self, token: str, *, now: float | None = None) -> bool:
        """True exactly once per valid token, however many callers race for it.

        One conditional UPDATE: SQLite applies it atomically, so of all concurrent
        callers (threads or processes) only one sees a changed row.  On PostgreSQL the
        losers wait for the winner's row lock, then re-check the WHERE and change nothing.
        """
        with self._tx(serial=False) as db:
            return self._consume(db, token, time.time() if now is None else now)

    @staticmethod
    def _consume(db: Connection, token: str, now: float) -> bool:
        cur = db.execute(
            "UPDATE bootstrap_tokens SET used_at = ? "
            "WHERE hash = ? AND used_at IS NULL AND expires > ?",
            (now, hash_secret(token), now),
        )
        return cur.rowcount == 1

    # -------------------------------------------------------------------- agents

    def bootstrap_agent(
        self, token: str, hostname: str = "", *, now: float | None = None
    ) -> tuple[str, str] | None:
        """Consume ``token`` and register a new agent in one transaction: ``(id, secret)``,
        or None when the token is unknown, used or expired."""
        now = time.time() if now is None else now
        agent_id = new_agent_id()
        secret = f"ras_{secrets.token_urlsafe(32)}"
        with self._tx(serial=False) as db:  # the conditional UPDATE decides
            if not self._consume(db, token, now):
                return None
            db.execute(
                "INSERT INTO agents (id, secret_hash, hostname, created) VALUES (?, ?, ?, ?)",
                (agent_id, hash_secret(secret), hostname[:255], now),
            )
        return agent_id, secret

    _DUMMY_HASH = hash_secret("no such agent")

    def check_agent(self, agent_id: str, secret: str) -> bool:
        rows = self._query("SELECT secret_hash FROM agents WHERE id = ?", (agent_id,))
        stored = rows[0][0] if rows else self._DUMMY_HASH
        # Compare even for an unknown id: the answer takes the same time either way.
        ok = hmac.compare_digest(stored, hash_secret(secret))
        return ok and bool(rows)

    def record_report(
        self,
        agent_id: str,
        report: dict[str, Any],
        *,
        state: dict[str, Any] | None = None,
        digest: str | None = None,
        hostname: str = "",
        version: str = "",
        now: float | None = None,
    ) -> ReportSeen:
        """Store the heartbeat: one row update, whatever the fleet's size.

        ``report`` without its state; ``state`` (None: unchanged, says the agent) with
        its ``digest``.  A report without a state tells the current state only when its
        digest is the one held; only such reports (and full ones) count in ``reports``.
        A ``state`` key inside ``report`` (callers from before) is taken as the state.
        """
        now = time.time() if now is None else now
        if state is None and "state" in report:
            report = dict(report)
            state = report.pop("state")
        # Not fsynced: a heartbeat lost to a power cut is sent again within one interval,
        # and at 5,000 agents one fsync per heartbeat (500 a second, each under the store's
        # lock) was what the heartbeat tail waited for.  The next fsynced commit (a command,
        # a result, a token) or WAL checkpoint makes it durable with everything before it.
        with self._tx(fsync=False) as db:
            row = db.execute(
                "SELECT last_seen, state_digest FROM agents WHERE id = ?", (agent_id,)
            ).fetchone()
            previous = None if row is None else row[0]
            held = None if row is None else row[1]
            known = state is not None or (digest is not None and digest == held)
            full = state is not None
            db.execute(
                "UPDATE agents SET last_seen = ?, report = ?, version = ?, offline_announced = 0, "
                "hostname = CASE WHEN ? != '' THEN ? ELSE hostname END, "
                "reports = reports + ?, state = CASE WHEN ? = 1 THEN ? ELSE state END, "
                "state_digest = CASE WHEN ? = 1 THEN ? ELSE state_digest END WHERE id = ?",
                (
                    now,
                    json.dumps(report),
                    version[:100],
                    hostname,
                    hostname[:255],
                    int(known),
                    int(full),
                    json.dumps(state) if full else None,
                    int(full),
                    digest,
                    agent_id,
                ),
            )
            changed = full and (digest is None or digest != held)
            if full:
                held = digest
        return ReportSeen(
            previous=None if previous is None else float(previous),
            digest=held,
            changed=changed,
            known=known,
        )

    def remove_agent(self, agent_id: str, *, now: float | None = None) -> bool:
        """Forget an agent (a host decommissioned, or its secret leaked): its credentials
        stop working at once and its unfinished commands are cancelled, in one
        transaction.  Its deployments are left to the next plan (blocked: unknown agent).
        False when there was no such agent."""
        now = time.time() if now is None else now
        with self._tx() as db:
            gone = db.execute("DELETE FROM agents WHERE id = ?", (agent_id,)).rowcount
            if gone:
                db.execute(
                    "UPDATE commands SET state = 'superseded', finished = ? "
                    "WHERE agent = ? AND state = 'pending'",
                    (now, agent_id),
                )
        return bool(gone)

    def agents(self) -> list[AgentRow]:
        return [self._agent(r) for r in self._query("SELECT * FROM agents ORDER BY id")]

    def count_seen_since(self, since: float) -> int:
        """Agents whose last report is at or after ``since`` (the online ones, for a cutoff
        of now minus the offline delay), counted by the database, not parsed row by row."""
        rows = self._query("SELECT COUNT(*) FROM agents WHERE last_seen >= ?", (since,))
        return int(rows[0][0])

    def agent(self, agent_id: str) -> AgentRow | None:
        rows = self._query("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return self._agent(rows[0]) if rows else None

    @staticmethod
    def _agent(r: Row) -> AgentRow:
        report = _loads(r["report"])
        if r["state"] is not None:  # else a report from before migration 4 holds it
            report = {**(report or {}), "state": json.loads(r["state"])}
        return AgentRow(
            r["id"],
            r["hostname"],
            r["created"],
            r["last_seen"],
            report,
            r["version"],
            state_digest=r["state_digest"],
            reports=int(r["reports"]),
        )

    # --------------------------------------------------------------- deploy hooks

    def create_deploy_hook(self, name: str, *, now: float | None = None) -> str:
        """A new token for hook ``name`` (replacing its old one: that is how to rotate)."""
        token = secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute(
                "INSERT INTO deploy_hooks (name, token_hash, created) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, "
                "created = excluded.created",
                (name, hash_secret(token), time.time() if now is None else now),
            )
        return token

    def check_deploy_hook(self, token: str) -> str | None:
        # Looked up by digest: an index probe on a value an attacker cannot steer.
        rows = self._query(
            "SELECT name, token_hash FROM deploy_hooks WHERE token_hash = ?", (hash_secret(token),)
        )
        if rows and hmac.compare_digest(rows[0][1], hash_secret(token)):
            return str(rows[0][0])
        return None

    # ----------------------------------------------------------------- deliveries

    def remember_delivery(
        self, provider: str, delivery_id: str, *, now: float | None = None
    ) -> bool:
        """True when this delivery is new (and now remembered), False on a replay."""
        with self._tx(fsync=False, serial=False) as db:  # the primary key decides
            cur = db.execute(
                # The insert is the check: of two replicas racing on one delivery, the
                # primary key lets exactly one insert it.
                "INSERT INTO deliveries (provider, delivery_id, received) VALUES (?, ?, ?) "
                "ON CONFLICT (provider, delivery_id) DO NOTHING",
                (provider, delivery_id[:200], time.time() if now is None else now),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------- commands

    def create_command(
        self,
        *,
        command_id: str,
        agent: str,
        deployment: str,
        kind: str,
        spec_hash: str | None,
        payload: dict[str, Any],
        created: float,
        deadline: float,
        supersede: bool = True,
    ) -> list[str]:
        """Insert one pending command, superseding the deployment's other pending ones on
        that agent (returned); ``supersede=False`` (day-2 operations) leaves them be.
        Unlike :meth:`create_commands`, an equivalent command on its way does not stop it."""
        new = NewCommand(command_id, agent, deployment, kind, spec_hash, payload, created, deadline)
        with self._tx() as db:
            return self._insert_command(db, new, supersede=supersede)

    def create_commands(
        self,
        commands: Sequence[NewCommand],
        *,
        seen: Mapping[str, int] | None = None,
        event: Callable[[Issued], tuple[str, dict[str, Any]]] | None = None,
    ) -> list[Issued]:
        """Issue deploy commands in one transaction: see :meth:`_issue`."""
        with self._tx() as db:
            issued, queued = self._issue(db, commands, seen, event)
        if queued:
            self._on_outbox()
        return issued

    def _issue(
        self,
        db: Connection,
        commands: Sequence[NewCommand],
        seen: Mapping[str, int] | None,
        event: Callable[[Issued], tuple[str, dict[str, Any]]] | None,
    ) -> tuple[list[Issued], int]:
        """Each command unless an equivalent one (same deployment, agent, kind and spec)
        is still on its way, which is decided here, inside the writing transaction, so
        two reconciles (or two replicas) can never both issue it:

        - a pending one is on its way (and the partial unique index
          ``commands_one_pending`` makes a second pending one impossible);
        - a done one is on its way until the planner's view of the agent (``seen``: the
          agent's ``reports`` count the plan was made from; default: the current count)
          holds two reports counted after the result.  The first may have been observed
          before the command finished and arrived after it; the agent sends its reports
          one at a time, so the second was observed after the first was answered, hence
          after the result: whatever it shows (the new spec, or an app gone since) is the
          truth, and only then may the same spec be issued again.
        - a failed, expired or superseded one is not: retrying is the caller's policy.

        Other pending commands of the deployment on that agent are superseded, and each
        issued command's ``event`` (with its outbox rows) is written in this transaction.
        Returns what was issued and how many outbox rows were queued.
        """
        issued: list[Issued] = []
        queued = 0
        reports: dict[str, int] = dict(seen or {})
        for new in commands:
            if new.agent not in reports:
                row = db.execute("SELECT reports FROM agents WHERE id = ?", (new.agent,)).fetchone()
                reports[new.agent] = 0 if row is None else int(row[0])
            same = db.execute(
                "SELECT 1 FROM commands WHERE agent = ? AND deployment = ? AND kind = ? "
                "AND COALESCE(spec_hash, '') = ? AND (state = 'pending' OR (state = 'done' "
                "AND COALESCE(finish_mark, -2) + 2 > ?)) LIMIT 1",
                (new.agent, new.deployment, new.kind, new.spec_hash or "", reports[new.agent]),
            ).fetchone()
            if same is not None:
                continue
            done = Issued(new, self._insert_command(db, new, supersede=True))
            issued.append(done)
            if event is not None:
                kind, fields = event(done)
                queued += self._insert_event(db, kind, fields, new.created)[1]
        return issued, queued

    @staticmethod
    def _insert_command(db: Connection, new: NewCommand, *, supersede: bool) -> list[str]:
        superseded: list[str] = []
        if supersede:
            superseded = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM commands WHERE deployment = ? AND agent = ? "
                    "AND state = 'pending' AND kind != 'operation'",
                    (new.deployment, new.agent),
                )
            ]
            db.execute(
                "UPDATE commands SET state = 'superseded', finished = ? "
                "WHERE deployment = ? AND agent = ? AND state = 'pending' "
                "AND kind != 'operation'",
                (new.created, new.deployment, new.agent),
            )
        db.execute(
            "INSERT INTO commands (id, agent, deployment, kind, spec_hash, payload, state, "
            "created, deadline) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (
                new.id,
                new.agent,
                new.deployment,
                new.kind,
                new.spec_hash,
                json.dumps(new.payload),
                new.created,
                new.deadline,
            ),
        )
        return superseded

    def pending_commands(self, agent: str, *, now: float | None = None) -> list[CommandRow]:
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT * FROM commands WHERE agent = ? AND state = 'pending' AND deadline > ? "
            "ORDER BY created, id",
            (agent, now),
        )
        return [self._command(r) for r in rows]

    def has_pending(self, agent: str, *, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return bool(
            self._query(
                "SELECT 1 FROM commands WHERE agent = ? AND state = 'pending' AND deadline > ? "
                "LIMIT 1",
                (agent, now),
            )
        )

    def in_flight(
        self,
        deployment: str,
        agent: str,
        spec_hash: str | None,
        kind: str,
        *,
        seen: int | None = None,
    ) -> CommandRow | None:
        """An equivalent command still on its way, by the rule of :meth:`_issue` (``seen``:
        the agent's ``reports`` count of the caller's view; default: the current one).  A
        read, so only a hint: :meth:`create_commands` decides again as it writes."""
        if seen is None:
            rows = self._query("SELECT reports FROM agents WHERE id = ?", (agent,))
            seen = int(rows[0][0]) if rows else 0
        rows = self._query(
            "SELECT * FROM commands WHERE deployment = ? AND agent = ? AND kind = ? "
            "AND COALESCE(spec_hash, '') = ? AND (state = 'pending' OR (state = 'done' "
            "AND COALESCE(finish_mark, -2) + 2 > ?)) ORDER BY created DESC LIMIT 1",
            (deployment, agent, kind, spec_hash or "", seen),
        )
        return self._command(rows[0]) if rows else None

    def failures(
        self, deployment: str, agent: str, spec_hash: str | None, kind: str
    ) -> tuple[int, float]:
        """Consecutive failed results of this very command (same spec, same kind) since
        the last success or change, and when the latest one came: for retry backoff."""
        rows = self._query(
            "SELECT kind, spec_hash, result, finished FROM commands WHERE deployment = ? "
            "AND agent = ? AND result IS NOT NULL ORDER BY finished DESC LIMIT 50",
            (deployment, agent),
        )
        count, last = 0, 0.0
        for r in rows:
            if r["kind"] != kind or r["spec_hash"] != spec_hash or json.loads(r["result"])["ok"]:
                break
            count += 1
            last = max(last, float(r["finished"]))
        return count, last

    def pending_deployments(self, agent: str) -> set[str]:
        rows = self._query(
            "SELECT DISTINCT deployment FROM commands WHERE agent = ? AND state = 'pending'",
            (agent,),
        )
        return {r[0] for r in rows}

    def command(self, command_id: str) -> CommandRow | None:
        rows = self._query("SELECT * FROM commands WHERE id = ?", (command_id,))
        return self._command(rows[0]) if rows else None

    def commands(self, *, limit: int = 100) -> list[CommandRow]:
        rows = self._query("SELECT * FROM commands ORDER BY created DESC, id LIMIT ?", (limit,))
        return [self._command(r) for r in rows]

    def last_command(self, deployment: str) -> CommandRow | None:
        rows = self._query(
            "SELECT * FROM commands WHERE deployment = ? ORDER BY created DESC, id LIMIT 1",
            (deployment,),
        )
        return self._command(rows[0]) if rows else None

    def finish_command(
        self,
        command_id: str,
        agent: str,
        result: dict[str, Any],
        *,
        event: Callable[[CommandRow], tuple[str, dict[str, Any]]] | None = None,
        now: float | None = None,
    ) -> tuple[CommandRow | None, bool]:
        """Record the agent's result: ``(command, duplicate)``; ``(None, False)`` when the
        agent has no such command.  The first result wins; later ones change nothing.

        A result for a superseded or expired command is still recorded (the agent did
        act), so the deployment's last result says what really happened.  ``event``
        builds the event that reports it, written (with its outbox rows) in the same
        transaction: a crash cannot keep the result and lose its notification.
        """
        now = time.time() if now is None else now
        queued = 0
        state = "done" if result.get("ok") else "failed"
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM commands WHERE id = ? AND agent = ?", (command_id, agent)
            ).fetchone()
            if row is None:
                return None, False
            if row["result"] is not None:
                return self._command(row), True
            db.execute(
                "UPDATE commands SET state = CASE WHEN state = 'pending' THEN ? ELSE state END, "
                "result = ?, finished = ?, finish_mark = (SELECT reports FROM agents "
                "WHERE id = ?) WHERE id = ?",
                (state, json.dumps(result), now, agent, command_id),
            )
            db.execute(
                "UPDATE deployments SET last_command = ?, last_result = ?, "
                "url = COALESCE(?, url), updated = ? WHERE id = ?",
                (command_id, json.dumps(result), result.get("url"), now, row["deployment"]),
            )
            fresh = db.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
            if event is not None:
                kind, fields = event(self._command(fresh))
                queued = self._insert_event(db, kind, fields, now)[1]
        if queued:
            self._on_outbox()
        return self._command(fresh), False

    def forget_result_payload(self, command_id: str) -> None:
        """Drop the payload of a command's result (a credentials reveal, once read)."""
        with self._tx() as db:
            db.execute(
                "UPDATE commands SET result = json_remove(result, '$.payload') "
                "WHERE id = ? AND result IS NOT NULL",
                (command_id,),
            )

    def expire_commands(self, *, now: float | None = None) -> list[CommandRow]:
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM commands WHERE state = 'pending' AND deadline <= ?", (now,)
            ).fetchall()
            db.execute(
                "UPDATE commands SET state = 'expired', finished = ? "
                "WHERE state = 'pending' AND deadline <= ?",
                (now, now),
            )
        return [self._command(r) for r in rows]

    def active_command_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT id FROM commands WHERE state = 'pending'")}

    @staticmethod
    def _event(r: Row) -> EventRow:
        return EventRow(r["id"], r["time"], r["kind"], json.loads(r["fields"]))

    @staticmethod
    def _command(r: Row) -> CommandRow:
        return CommandRow(
            id=r["id"],
            agent=r["agent"],
            deployment=r["deployment"],
            kind=r["kind"],
            spec_hash=r["spec_hash"],
            payload=json.loads(r["payload"]),
            state=r["state"],
            created=r["created"],
            deadline=r["deadline"],
            result=_loads(r["result"]),
            finished=r["finished"],
        )

    # ---------------------------------------------------------------- deployments

    def save_plan(
        self,
        plan: dict[str, Any],
        *,
        revision: str | None,
        desired: Sequence[tuple[str, str, str, str | None, str | None]],
        commands: Sequence[NewCommand] = (),
        seen: Mapping[str, int] | None = None,
        event: Callable[[Issued], tuple[str, dict[str, Any]]] | None = None,
        now: float | None = None,
    ) -> list[Issued]:
        """Store the plan, each action's deployment row and the plan's commands, in one
        transaction: nobody ever sees the new plan without its commands (a heartbeat in
        between would look like drift), and a crash keeps both or neither.

        ``desired``: ``(id, name, agent, spec_hash, url)`` of every desired deployment;
        rows of deployments no longer desired stay (their last result is history) but
        are flagged ``desired = 0``.  ``commands``, ``seen``, ``event``: as in
        :meth:`create_commands`.
        """
        now = time.time() if now is None else now
        actions = {a["id"]: a for a in plan.get("actions", []) if a.get("action") != "uninstall"}
        with self._tx() as db:
            db.execute(
                "INSERT INTO plans (id, plan, revision, created) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, "
                "revision = excluded.revision, created = excluded.created",
                (json.dumps(plan), revision, now),
            )
            db.execute("UPDATE deployments SET desired = 0")
            # One statement over every row (one round-trip batch on PostgreSQL).
            db.executemany(
                "INSERT INTO deployments (id, name, agent, spec_hash, last_action, "
                "last_reason, url, updated, desired) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "agent = excluded.agent, spec_hash = excluded.spec_hash, "
                "last_action = excluded.last_action, last_reason = excluded.last_reason, "
                "url = COALESCE(excluded.url, deployments.url), updated = excluded.updated, "
                "desired = 1",
                [
                    (
                        dpl_id,
                        name,
                        agent,
                        spec_hash,
                        actions.get(dpl_id, {}).get("action"),
                        actions.get(dpl_id, {}).get("reason"),
                        url,
                        now,
                    )
                    for dpl_id, name, agent, spec_hash, url in desired
                ],
            )
            issued, queued = self._issue(db, commands, seen, event)
        if queued:
            self._on_outbox()
        return issued

    def last_plan(self) -> tuple[dict[str, Any], str | None, float] | None:
        rows = self._query("SELECT plan, revision, created FROM plans WHERE id = 1")
        if not rows:
            return None
        return json.loads(rows[0][0]), rows[0][1], float(rows[0][2])

    def deployments(self, *, desired_only: bool = True) -> list[DeploymentRow]:
        sql = "SELECT * FROM deployments"
        if desired_only:
            sql += " WHERE desired = 1"
        return [self._deployment(r) for r in self._query(sql + " ORDER BY name, id")]

    def agent_deployments(self, agent: str) -> list[DeploymentRow]:
        """The desired deployments of one agent (an index probe: a heartbeat's drift check
        must not read the whole fleet's rows)."""
        rows = self._query(
            "SELECT * FROM deployments WHERE agent = ? AND desired = 1 ORDER BY name, id",
            (agent,),
        )
        return [self._deployment(r) for r in rows]

    def recently_failed(self, agent: str, *, since: float) -> set[str]:
        """Deployments of ``agent`` whose newest command finished after ``since`` and failed."""
        rows = self._query(
            "SELECT deployment, state FROM commands WHERE agent = ? AND finished > ? "
            "ORDER BY created, id",
            (agent, since),
        )
        newest = {r[0]: r[1] for r in rows}
        return {deployment for deployment, state in newest.items() if state == "failed"}

    @staticmethod
    def _deployment(r: Row) -> DeploymentRow:
        return DeploymentRow(
            id=r["id"],
            name=r["name"],
            agent=r["agent"],
            spec_hash=r["spec_hash"],
            last_action=r["last_action"],
            last_reason=r["last_reason"],
            last_command=r["last_command"],
            last_result=_loads(r["last_result"]),
            url=r["url"],
            updated=r["updated"],
            desired=bool(r["desired"]),
        )

    # --------------------------------------------------------------------- events

    def route_events(self, router: OutboxRouter, on_outbox: Callable[[], None]) -> None:
        """Every event from now on also writes the outbox rows ``router`` names, in its own
        transaction; ``on_outbox`` (fast, thread-safe) is called after such a commit."""
        self._router = router
        self._on_outbox = on_outbox

    def record_event(self, kind: str, fields: dict[str, Any], *, now: float | None = None) -> int:
        # The log, not a record the server acts on: see the module docstring on fsync.
        # An event that owes a delivery is fsynced: the outbox promises at least once.
        now = time.time() if now is None else now
        routed = self._router is not None and self._router.wants(kind)
        with self._tx(fsync=routed) as db:
            event_id, queued = self._insert_event(db, kind, fields, now)
        if queued:
            self._on_outbox()
        return event_id

    def _insert_event(
        self, db: Connection, kind: str, fields: dict[str, Any], now: float
    ) -> tuple[int, int]:
        """The event row and its outbox rows: ``(event row id, outbox rows written)``."""
        cur = db.execute(
            "INSERT INTO events (time, kind, fields) VALUES (?, ?, ?) RETURNING id",
            (
                now,
                kind,
                # Events are served to operators and kept for long: never a credential.
                redact(json.dumps(fields, default=str)),
            ),
        )
        row_id = int(cur.fetchone()[0])
        if self._router is None or not self._router.wants(kind):
            return row_id, 0
        clean = json.loads(redact(json.dumps(fields, default=str)))
        event_id = f"evt_{secrets.token_hex(8)}"
        rows = self._router.route(kind, clean, event_id, now)
        for target, public_kind, body in rows:
            self._enqueue(db, target, public_kind, event_id, body, now)
        return row_id, len(rows)

    @staticmethod
    def _enqueue(
        db: Connection, target: str, kind: str, event_id: str, body: str, now: float
    ) -> None:
        db.execute(
            "INSERT INTO outbox (target, event_id, delivery_id, kind, body, created, next_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (target, event_id, f"dlv_{secrets.token_hex(8)}", kind, body, now, now),
        )

    def events(
        self, *, after: int = 0, limit: int = 100, audit: bool | None = None
    ) -> list[EventRow]:
        """Events after ``after``, oldest first; ``audit``: only the audit trail (True),
        only the rest (False), or both (None)."""
        wanted = None if audit is None else int(audit)
        rows = self._query(
            "SELECT * FROM events WHERE id > ? AND (? IS NULL OR is_audit(kind) = ?) "
            "ORDER BY id LIMIT ?",
            (after, wanted, wanted, max(1, limit)),
        )
        return [self._event(r) for r in rows]

    # --------------------------------------------------------------------- outbox

    def due_outbox(self, target: str, *, now: float, limit: int = 20) -> list[OutboxRow]:
        """Deliveries owed to ``target`` whose time has come, oldest first."""
        rows = self._query(
            "SELECT * FROM outbox WHERE target = ? AND delivered IS NULL AND dead IS NULL "
            "AND next_at <= ? ORDER BY id LIMIT ?",
            (target, now, limit),
        )
        return [self._outbox(r) for r in rows]

    def next_outbox_at(self, target: str) -> float | None:
        rows = self._query(
            "SELECT min(next_at) FROM outbox WHERE target = ? AND delivered IS NULL "
            "AND dead IS NULL",
            (target,),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def outbox(self, *, limit: int = 100) -> list[OutboxRow]:
        rows = self._query("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [self._outbox(r) for r in rows]

    def outbox_delivered(self, row_id: int, *, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET delivered = ?, attempts = attempts + 1, last_error = NULL "
                "WHERE id = ?",
                (now, row_id),
            )

    def outbox_failed(self, row_id: int, error: str, *, now: float, retry_at: float | None) -> None:
        """One failed attempt: tried again at ``retry_at``, or given up on (None)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                "next_at = COALESCE(?, next_at), dead = CASE WHEN ? IS NULL THEN ? END "
                "WHERE id = ?",
                (error[:500], retry_at, retry_at, now, row_id),
            )

    @staticmethod
    def _outbox(r: Row) -> OutboxRow:
        return OutboxRow(
            id=r["id"],
            target=r["target"],
            event_id=r["event_id"],
            delivery_id=r["delivery_id"],
            kind=r["kind"],
            body=r["body"],
            created=r["created"],
            attempts=r["attempts"],
            next_at=r["next_at"],
            delivered=r["delivered"],
            dead=r["dead"],
            last_error=r["last_error"],
        )

    def announce_offline(self, *, cutoff: float, now: float) -> list[str]:
        """Agents last seen before ``cutoff`` and not yet announced: each gets one
        ``agent.offline`` event (with its outbox rows), in one transaction."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, hostname, last_seen FROM agents WHERE last_seen IS NOT NULL "
                "AND last_seen < ? AND offline_announced = 0",
                (cutoff,),
            ).fetchall()
            queued = 0
            for r in rows:
                db.execute("UPDATE agents SET offline_announced = 1 WHERE id = ?", (r["id"],))
                queued += self._insert_event(
                    db,
                    "agent.offline",
                    {"agent": r["id"], "hostname": r["hostname"], "last_seen": r["last_seen"]},
                    now,
                )[1]
        if queued:
            self._on_outbox()
        return [r["id"] for r in rows]

    # ------------------------------------------------------------ commit statuses

    def remember_push(self, sha: str, repo: str | None, *, now: float | None = None) -> None:
        """A push named this commit (and its repository): the next reconcile of it sets
        its status.  A commit already judged keeps its status."""
        with self._tx(fsync=False) as db:
            db.execute(
                "INSERT INTO commit_statuses (sha, repo, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (sha) DO UPDATE SET repo = COALESCE(commit_statuses.repo, "
                "excluded.repo) WHERE commit_statuses.state IS NULL",
                (sha[:64], repo, time.time() if now is None else now),
            )

    def commit_status(self, sha: str) -> CommitStatusRow | None:
        rows = self._query("SELECT * FROM commit_statuses WHERE sha = ?", (sha,))
        return self._status(rows[0]) if rows else None

    def pending_commit_statuses(self) -> list[CommitStatusRow]:
        rows = self._query("SELECT * FROM commit_statuses WHERE state = 'pending' ORDER BY sha")
        return [self._status(r) for r in rows]

    def set_commit_status(
        self,
        sha: str,
        repo: str,
        state: str,
        *,
        commands: Sequence[str] = (),
        request: str,
        only_if: str | None = "any",
        now: float | None = None,
    ) -> bool:
        """Record the commit's new state and owe the forge ``request`` (outbox target
        ``forge``), in one transaction.  ``only_if``: the state it must have now (None: not
        judged yet; ``"any"``: whatever it is); False when it had another, and nothing
        changed (two threads settling one commit send one status)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT state FROM commit_statuses WHERE sha = ?", (sha,)).fetchone()
            current = None if row is None else row[0]
            if only_if != "any" and current != only_if:
                return False
            db.execute(
                "INSERT INTO commit_statuses (sha, repo, state, commands, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha) DO UPDATE SET repo = excluded.repo, "
                "state = excluded.state, commands = excluded.commands, "
                "updated = excluded.updated",
                (sha, repo, state, json.dumps(list(commands)), now),
            )
            self._enqueue(
                db, "forge", f"commit_status.{state}", f"evt_{secrets.token_hex(8)}", request, now
            )
        self._on_outbox()
        return True

    @staticmethod
    def _status(r: Row) -> CommitStatusRow:
        return CommitStatusRow(
            sha=r["sha"],
            repo=r["repo"],
            state=r["state"],
            commands=json.loads(r["commands"]),
            updated=r["updated"],
        )

    def newest_events(self, limit: int) -> list[EventRow]:
        """The newest ``limit`` events, oldest first (the dashboard's tail of the log)."""
        rows = self._query(
            "SELECT * FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) AS newest ORDER BY id",
            (max(1, limit),),
        )
        return [self._event(r) for r in rows]

    # ------------------------------------------------------------------ retention

    def prune_history(self, *, now: float | None = None) -> None:
        """Forget what no longer matters: old delivery ids, the oldest events (the newest
        ``EVENT_RETENTION`` of the rest and ``AUDIT_RETENTION`` audit events are kept)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("DELETE FROM deliveries WHERE received < ?", (now - DELIVERY_RETENTION,))
            for audit, keep in ((0, EVENT_RETENTION), (1, AUDIT_RETENTION)):
                db.execute(
                    "DELETE FROM events WHERE is_audit(kind) = ? AND id < COALESCE(("
                    "SELECT id FROM events WHERE is_audit(kind) = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?), 0)",
                    (audit, audit, keep - 1),
                )
            db.execute("DELETE FROM bootstrap_tokens WHERE expires < ?", (now - 86400,))
            db.execute(
                "DELETE FROM outbox WHERE (delivered IS NOT NULL OR dead IS NOT NULL) AND "
                "id < COALESCE((SELECT id FROM outbox ORDER BY id DESC LIMIT 1 OFFSET ?), 0)",
                (OUTBOX_RETENTION - 1,),
            )

    # ---------------------------------------------------------------- replicas
    # Several ``reconcile serve`` processes on one database: leadership (one reconcile
    # worker per source), signals between them (wake-ups, forwarded triggers), and what
    # a run leaves for every replica (bundles, rendered deployments, one-shot approvals).
    # The portable versions, on the tables of migration 4; a backend with better tools
    # (PostgreSQL: advisory locks, LISTEN/NOTIFY) may answer the same calls its own way.

    @functools.cached_property
    def replica_id(self) -> str:
        """This process's name in leases and signals: host, pid and a random part (a pid
        is reused after a restart, the random part is not)."""
        return (
            f"{socket.gethostname()[:64]}:{os.getpid()}:{_pid_namespace()}.{secrets.token_hex(4)}"
        )

    def try_lead(self, name: str, holder: str, *, ttl: float, now: float | None = None) -> bool:
        """Take or keep leadership ``name`` for ``holder``; True while ``holder`` leads.

        One statement, so two replicas racing for a free or expired lease cannot both
        win: the row is inserted, or updated only when ``holder`` already holds it or it
        has expired.  Called again (well) within ``ttl`` to keep it.
        """
        if isinstance(self.db, PostgresDatabase):  # an advisory lock: see its try_lead
            return self.db.try_lead(name, holder, ttl=ttl, now=now)
        now = time.time() if now is None else now
        # Not fsynced: after an OS crash every replica on this host restarts anyway.
        with self._tx(fsync=False) as db:
            row = db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
            # A holder that died on this host (a restart of the only server, a replica killed)
            # gives way at once: waiting out its lease would hold every reconcile up for ttl.
            dead = str(row[0]) if row is not None and _dead_here(str(row[0]), holder) else ""
            cur = db.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires "
                "WHERE leases.holder = excluded.holder OR leases.expires < ? "
                "OR leases.holder = ?",
                (name, holder, now + ttl, now, dead),
            )
            return cur.rowcount == 1

    def resign(self, name: str, holder: str) -> None:
        """Give leadership up at once (a clean stop): another replica takes it at its next
        try instead of after the lease runs out."""
        if isinstance(self.db, PostgresDatabase):
            self.db.resign(name, holder)
            return
        with self._tx(fsync=False) as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def leader(self, name: str, *, now: float | None = None) -> str | None:
        """Who holds leadership ``name`` now (None: nobody, or the lease ran out).  On
        PostgreSQL an advisory lock names no holder: only this process's own is known."""
        if isinstance(self.db, PostgresDatabase):
            return self.db.holder(name)
        now = time.time() if now is None else now
        rows = self._query("SELECT holder FROM leases WHERE name = ? AND expires >= ?", (name, now))
        return str(rows[0][0]) if rows else None

    _signals_pruned = 0.0

    def signal(self, channel: str, key: str, *, now: float | None = None) -> None:
        """Tell the other replicas (``channel`` "command", ``key`` an agent id, say), after
        the change it announces has committed.  Not fsynced: a signal is a hint that
        saves a wait, the data it points at is already durable."""
        self.signal_many(channel, [key], now=now)

    def signal_many(self, channel: str, keys: Sequence[str], *, now: float | None = None) -> None:
        """:meth:`signal` for each of ``keys``, in one transaction (one round trip on
        PostgreSQL)."""
        if not keys:
            return
        if isinstance(self.db, PostgresDatabase):  # NOTIFY, sent at commit
            self.db.signal_many(channel[:100], [key[:200] for key in keys])
            return
        now = time.time() if now is None else now
        with self._tx(fsync=False) as db:
            for key in keys:
                db.execute(
                    "INSERT INTO signals (channel, key, origin, created) VALUES (?, ?, ?, ?)",
                    (channel[:100], key[:200], self.replica_id, now),
                )
            if now - self._signals_pruned > SIGNAL_RETENTION / 4:
                self._signals_pruned = now
                db.execute("DELETE FROM signals WHERE created < ?", (now - SIGNAL_RETENTION,))

    def watch(
        self, callback: Callable[[str, str], None], *, interval: float = SIGNAL_POLL
    ) -> Callable[[], None]:
        """Deliver ``(channel, key)`` signals of the other replicas to ``callback``, from a
        thread, from now on; returns the function that stops watching.

        Polls every ``interval`` (an index range scan that finds nothing, most of the
        time).  Signals are numbered in commit order (SQLite has one writer at a time),
        so reading past the last number seen never skips one.
        """
        if isinstance(self.db, PostgresDatabase):  # LISTEN: no polling, no seq gaps
            return self.db.watch(callback)
        stop = threading.Event()
        last = int(self._query("SELECT COALESCE(max(seq), 0) FROM signals")[0][0])

        def loop() -> None:
            nonlocal last
            while not stop.wait(interval):
                try:
                    rows = self._query(
                        "SELECT seq, channel, key, origin FROM signals WHERE seq > ? "
                        "ORDER BY seq LIMIT 1000",
                        (last,),
                    )
                except sqlite3.ProgrammingError:  # the store was closed: nothing to watch
                    return
                except sqlite3.Error:
                    log.warning("watching signals", exc_info=True)
                    continue
                for row in rows:
                    seq, channel, key = int(row["seq"]), str(row["channel"]), str(row["key"])
                    last = max(last, seq)
                    if row["origin"] == self.replica_id:
                        continue
                    try:
                        callback(channel, key)
                    except Exception:  # one bad callback must not end the watch
                        log.exception("signal %s %s", channel, key)

        thread = threading.Thread(target=loop, name="store-signals", daemon=True)
        thread.start()

        def stop_watching() -> None:
            stop.set()
            if thread is not threading.current_thread():
                thread.join(5.0)

        return stop_watching

    def append_progress(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Store live progress events ``(kind, body)`` for every replica's stream, in one
        transaction (a reconcile announces its whole batch of commands at once); returns
        their ids, in the same order.

        Ids follow commit order (SQLite has one writer; on PostgreSQL these inserts take a
        turn of their own, not the store-wide one), so a replica that reads past the last
        id it has seen never skips one that commits later.  Not fsynced: progress is live
        only, and what it reports is durable elsewhere.  On PostgreSQL the insert also
        notifies the other replicas (at commit) under :data:`PROGRESS`.
        """
        rows = [
            (kind[:100], json.dumps(body, separators=(",", ":"), default=str))
            for kind, body in events
        ]
        ids: list[int] = []
        with self._tx(fsync=False, serial=False, turn=PROGRESS) as db:
            for start in range(0, len(rows), PROGRESS_BATCH):
                chunk = rows[start : start + PROGRESS_BATCH]
                cur = db.execute(
                    "INSERT INTO progress (kind, body) VALUES "  # noqa: S608 (placeholders only)
                    + ", ".join("(?, ?)" for _ in chunk)
                    + " RETURNING id",
                    [value for row in chunk for value in row],
                )
                # A multi-row VALUES numbers its rows in order; RETURNING's order is not
                # promised, so the ids are sorted back into it.
                ids.extend(sorted(int(r[0]) for r in cur.fetchall()))
            if not ids:
                return ids
            if isinstance(self.db, PostgresDatabase):
                self.db.signal(PROGRESS, "")
            if ids[-1] // PROGRESS_BATCH != (ids[0] - 1) // PROGRESS_BATCH:  # now and then
                db.execute("DELETE FROM progress WHERE id <= ?", (ids[-1] - PROGRESS_RETENTION,))
        return ids

    def progress_between(
        self, after: int, before: int | None = None, *, limit: int = PROGRESS_RETENTION
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """The progress events with ``after < id < before``, oldest first:
        ``(id, kind, body)``."""
        rows = self._query(
            "SELECT id, kind, body FROM progress WHERE id > ? AND id < ? ORDER BY id LIMIT ?",
            (after, 2**63 - 1 if before is None else before, limit),
        )
        return [(int(r[0]), str(r[1]), dict(json.loads(r[2]))) for r in rows]

    def last_progress_id(self) -> int:
        return int(self._query("SELECT COALESCE(max(id), 0) FROM progress")[0][0])

    def put_bundle(self, command_id: str, source: pathlib.Path, *, now: float | None = None) -> str:
        """Store the bundle file ``source`` as command ``command_id``'s: every replica can
        then serve it.  Content-addressed (sha256), so a bundle that did not change is
        kept once however many commands ship it.  Raises :class:`BundleTooLarge` past
        :data:`MAX_BUNDLE_BYTES`; returns the digest."""
        now = time.time() if now is None else now
        size = source.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleTooLarge(
                f"the bundle of {command_id} is {size // (1024 * 1024)} MiB, more than the "
                f"{MAX_BUNDLE_BYTES // (1024 * 1024)} MiB an agent accepts: ship less (a "
                ".dockerignore in the build context, or a smaller directory)"
            )
        sha = hashlib.sha256()
        with open(source, "rb") as fh:
            for chunk in iter(lambda: fh.read(BUNDLE_CHUNK), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
        with self._tx() as db, open(source, "rb") as fh:
            seq = 0
            while True:
                chunk = fh.read(BUNDLE_CHUNK)
                if chunk or seq == 0:
                    # Written again even when present: a blob is never half there, and
                    # a prune racing this insert cannot leave the command without one.
                    db.execute(
                        "INSERT INTO bundle_blobs (digest, seq, data) VALUES (?, ?, ?) "
                        "ON CONFLICT (digest, seq) DO NOTHING",
                        (digest, seq, chunk),
                    )
                if len(chunk) < BUNDLE_CHUNK:
                    break
                seq += 1
            db.execute(
                "INSERT INTO bundles (command_id, digest, size, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (command_id) DO UPDATE SET digest = excluded.digest, "
                "size = excluded.size, created = excluded.created",
                (command_id, digest, size, now),
            )
        return digest

    def bundle_size(self, command_id: str) -> int | None:
        """The size of command ``command_id``'s stored bundle (None: it has none)."""
        rows = self._query("SELECT size FROM bundles WHERE command_id = ?", (command_id,))
        return int(rows[0][0]) if rows else None

    def read_bundle(self, command_id: str) -> Iterator[bytes]:
        """The bundle's bytes, one chunk (one short query) at a time."""
        rows = self._query("SELECT digest FROM bundles WHERE command_id = ?", (command_id,))
        if not rows:
            return
        digest = rows[0][0]
        seq = 0
        while True:
            found = self._query(
                "SELECT data FROM bundle_blobs WHERE digest = ? AND seq = ?", (digest, seq)
            )
            if not found:
                return
            chunk = bytes(found[0][0])
            if chunk:
                yield chunk
            if len(chunk) < BUNDLE_CHUNK:
                return
            seq += 1

    def prune_bundles(self, *, now: float | None = None) -> int:
        """Forget the bundles no pending command needs; returns how many went.  Stored
        just before its command: a bundle younger than :data:`BUNDLE_GRACE` stays."""
        now = time.time() if now is None else now
        with self._tx(fsync=False) as db:
            gone = db.execute(
                "DELETE FROM bundles WHERE created < ? AND command_id NOT IN "
                "(SELECT id FROM commands WHERE state = 'pending')",
                (now - BUNDLE_GRACE,),
            ).rowcount
            if gone:
                db.execute(
                    "DELETE FROM bundle_blobs WHERE digest NOT IN (SELECT digest FROM bundles)"
                )
        return int(gone)

    def drop_bundle(self, command_id: str) -> None:
        """Forget one command's bundle now (its command was superseded)."""
        with self._tx(fsync=False) as db:
            db.execute("DELETE FROM bundles WHERE command_id = ?", (command_id,))
            db.execute("DELETE FROM bundle_blobs WHERE digest NOT IN (SELECT digest FROM bundles)")

    def put_shared(self, name: str, value: str, *, now: float | None = None) -> str:
        """Set the shared value ``name`` (what one replica's run leaves for all: the
        rendered deployments, an approval); returns its new version."""
        version = secrets.token_hex(8)
        with self._tx() as db:
            db.execute(
                "INSERT INTO shared (name, value, version, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "version = excluded.version, updated = excluded.updated",
                (name, value, version, time.time() if now is None else now),
            )
        return version

    def shared_version(self, name: str) -> str | None:
        """The version of ``name`` alone: a cheap look before reading a large value."""
        rows = self._query("SELECT version FROM shared WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def shared(self, name: str) -> tuple[str, str] | None:
        """``(value, version)`` of the shared value ``name``, None when unset."""
        rows = self._query("SELECT value, version FROM shared WHERE name = ?", (name,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def take_shared(self, name: str) -> bool:
        """Remove ``name``; True for the one caller that removed it (a one-shot approval
        is used by one run, whichever replica runs it)."""
        with self._tx() as db:
            return db.execute("DELETE FROM shared WHERE name = ?", (name,)).rowcount == 1


def _pid_namespace() -> int:
    """The inode of this process's PID namespace (0 where there is none to read): two
    processes with one hostname but in different containers have different ones."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _dead_here(holder: str, me: str) -> bool:
    """Whether lease holder ``holder`` (a :attr:`Store.replica_id`) is a process of this
    host and PID namespace that no longer runs (gone, or a zombie nobody reaped).  Any
    doubt (another host or namespace, an id of another shape) is "alive": then the lease
    runs out as usual."""
    try:
        host, pid_text, rest = holder.split(":", 2)
        my_host, _, my_rest = me.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if holder == me or host != my_host or rest.split(".")[0] != my_rest.split(".")[0]:
        return False
    if rest.split(".")[0] == "0" or pid == os.getpid():
        return False  # no namespace to compare, or our own pid (a reused one): not sure
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")
