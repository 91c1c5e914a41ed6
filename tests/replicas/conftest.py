"""Several replicas on one database: the database they share, from one fixture.

``shared_db`` is the seam for more backends: each param gives the URL every replica is
started with (``database:`` in ``server.yaml``), a way to open the store in the test, and
a way to hold the commands table still (to stop a leader between two commands).  Today
it is SQLite in WAL mode: one file, several processes, which is a real replica set on
one host.  The PostgreSQL param gives each test a fresh schema on the test server
(tests/server/postgres_helpers.py) and holds writers with the store's own write-turn lock.

Over it, the replica set the end-to-end tests start: ``reconcile serve`` processes on that
database (``start_replica``, the ``pair`` fixture) and an agent bootstrapped on one of them.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from agent.client import AgentClient, Credentials
from reconciler.model.agentapi import AgentReport
from reconciler.model.state import AgentState
from reconciler.server.store import Store
from tests.server.conftest import Remote
from tests.server.postgres_helpers import fresh_schema
from tests.server.serve_helpers import Serve

#: Short, so that a follower takes over within seconds of the leader's death.
LEASE_TTL = 2.0


@dataclass
class SharedDatabase:
    """The database of a replica set, as a test sees it."""

    url: str
    open_store: Callable[[], Store]
    #: A context manager: while inside it, no replica can create a command (the test's
    #: own transaction holds the write lock); a replica trying waits, it does not fail.
    hold_commands: Callable[[], contextlib.AbstractContextManager[None]]


def _sqlite(path: pathlib.Path) -> SharedDatabase:
    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=60)
        try:
            db.execute("BEGIN IMMEDIATE")  # SQLite: one writer; this is it
            yield
            db.execute("ROLLBACK")
        finally:
            db.close()

    return SharedDatabase(
        url=f"sqlite:///{path}", open_store=lambda: Store(path), hold_commands=hold
    )


def _postgres(url: str) -> SharedDatabase:
    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        import psycopg

        from reconciler.server.database import lock_key

        store = Store(url)
        schema = store.db.schema  # type: ignore[attr-defined]
        store.close()
        with psycopg.connect(url) as conn:  # one transaction, rolled back on leaving
            # Every store write takes this turn first (reconciler/server/database.py).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "store:serial"),))
            yield
            conn.rollback()

    return SharedDatabase(url=url, open_store=lambda: Store(url), hold_commands=hold)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[SharedDatabase]:
    if request.param == "sqlite":
        path = tmp_path / "shared" / "reconcile.db"
        path.parent.mkdir()
        Store(path).close()  # migrated once, before the replicas race to open it
        yield _sqlite(path)
        return
    with fresh_schema("replicas") as url:
        Store(url).close()  # migrated once, before the replicas race to open it
        yield _postgres(url)


@pytest.fixture
def sqlite_db(tmp_path: pathlib.Path) -> SharedDatabase:
    """The SQLite replica set alone, for what only it has: the lease row that runs out, the
    signals table, its schema text.  PostgreSQL's advisory lock and NOTIFY, which replace
    those, are tested in tests/server/test_store_postgres.py."""
    path = tmp_path / "shared" / "reconcile.db"
    path.parent.mkdir()
    Store(path).close()
    return _sqlite(path)


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> Remote:
    r = Remote(tmp_path)
    r.commit({"reconcile.yaml": "namespace: srv\n", "deployments/.keep": ""}, "empty repo")
    return r


def start_replica(remote: Remote, shared_db: SharedDatabase, data_dir: pathlib.Path) -> Serve:
    """One ``reconcile serve`` of the set, with its own data dir."""
    return Serve(
        remote.url,
        data_dir,
        # heartbeat 120: an agent's one report keeps it online for the whole test
        {"database": shared_db.url, "lease_ttl": LEASE_TTL, "heartbeat": 120},
    )


@pytest.fixture
def pair(
    remote: Remote, shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> Iterator[tuple[Serve, Serve]]:
    """Two replicas, A started first (so it holds the lease and leads), B following."""
    with contextlib.ExitStack() as stack:
        a = start_replica(remote, shared_db, tmp_path / "a")
        stack.callback(a.stop)
        b = start_replica(remote, shared_db, tmp_path / "b")
        stack.callback(b.stop)
        yield a, b


def agent_on(replica: Serve, shared_db: SharedDatabase) -> AgentClient:
    """A bootstrapped agent talking to ``replica`` (its token made in the shared store),
    online after its first report."""
    store = shared_db.open_store()
    try:
        token = store.create_bootstrap_token()
    finally:
        store.close()
    client = AgentClient(replica.url)
    boot = client.bootstrap(token, "h1")
    client.credentials = Credentials(server=replica.url, agent_id=boot.agent_id, secret=boot.secret)
    client.report(AgentReport(state=AgentState(agent=boot.agent_id), hostname="h1"))
    return client
