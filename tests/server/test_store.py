"""The store on both real backends: tokens, agents, deliveries, hooks, commands, migrations.

Every test taking ``store`` (or ``database``) runs twice: on an SQLite file and on a fresh
schema of the test PostgreSQL server (``postgres`` marker; see postgres_helpers).
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from reconciler.server.store import MIGRATIONS, SCHEMA_VERSION, SchemaError, Store
from tests.server.postgres_helpers import admin_connection, fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """Where a Store lives: an SQLite file's path, or a PostgreSQL URL (a fresh schema)."""
    if request.param == "sqlite":
        yield str(tmp_path / "reconcile.db")
    else:
        with fresh_schema("store") as url:
            yield url


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    opened = Store(database)
    yield opened
    opened.close()


def stored_bytes(store: Store) -> bytes:
    """Everything the database holds, as bytes: the SQLite file (WAL checkpointed by the
    close), or every row of every table of the store's PostgreSQL schema as text."""
    store.close()
    if store.path is not None:
        return store.path.read_bytes()
    schema = store.db.schema  # type: ignore[attr-defined]
    chunks: list[str] = []
    with admin_connection() as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f'SELECT row_to_json(t)::text FROM "{schema}"."{table}" t')
            chunks.extend(r[0] for r in rows)
    assert chunks, "nothing stored at all: the check would prove nothing"
    return "\n".join(chunks).encode()


class TestBootstrapTokens:
    def test_token_works_once(self, store: Store) -> None:
        token = store.create_bootstrap_token()
        assert store.consume_bootstrap_token(token)
        assert not store.consume_bootstrap_token(token)

    def test_token_expires_after_its_ttl(self, store: Store) -> None:
        now = 1_000_000.0
        token = store.create_bootstrap_token(now=now)
        assert not store.consume_bootstrap_token(token, now=now + 600.0)
        fresh = store.create_bootstrap_token(now=now)
        assert store.consume_bootstrap_token(fresh, now=now + 599.0)

    def test_unknown_token_is_refused(self, store: Store) -> None:
        assert not store.consume_bootstrap_token("rbt_nope")
        assert store.bootstrap_agent("rbt_nope") is None
        assert store.agents() == []

    def test_tokens_are_stored_hashed(self, store: Store) -> None:
        token = store.create_bootstrap_token()
        assert token.encode() not in stored_bytes(store)

    def test_exactly_once_across_threads_of_one_store(self, store: Store) -> None:
        token = store.create_bootstrap_token()
        barrier = threading.Barrier(32)

        def race(_: int) -> tuple[str, str] | None:
            barrier.wait()
            return store.bootstrap_agent(token, "racer")

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(race, range(32)))
        assert sum(r is not None for r in results) == 1
        assert len(store.agents()) == 1

    def test_exactly_once_across_connections(self, database: str) -> None:
        """Separate connections, as the server and `reconcile agent token --data-dir` (or,
        on PostgreSQL, eight replicas)."""
        stores = [Store(database) for _ in range(8)]
        tokens = [stores[0].create_bootstrap_token() for _ in range(5)]
        barrier = threading.Barrier(40)

        def race(i: int) -> list[bool]:
            barrier.wait()
            return [stores[i % 8].consume_bootstrap_token(t) for t in tokens]

        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(race, range(40)))
        for column in zip(*results, strict=True):
            assert sum(column) == 1
        for opened in stores:
            opened.close()


class TestAgents:
    def test_secret_checks(self, store: Store) -> None:
        created = store.bootstrap_agent(store.create_bootstrap_token(), "h1")
        assert created is not None
        agent_id, secret = created
        assert agent_id.startswith("agt_") and len(agent_id) == 20
        assert store.check_agent(agent_id, secret)
        assert not store.check_agent(agent_id, secret + "x")
        assert not store.check_agent("agt_0000000000000000", secret)
        row = store.agent(agent_id)
        assert row is not None and row.hostname == "h1" and row.last_seen is None

    def test_report_updates_last_seen_and_returns_the_previous(self, store: Store) -> None:
        created = store.bootstrap_agent(store.create_bootstrap_token())
        assert created is not None
        agent_id = created[0]
        assert store.record_report(agent_id, {"state": {}}, now=100.0).previous is None
        assert store.record_report(agent_id, {"state": {"x": 1}}, now=110.0).previous == 100.0
        row = store.agent(agent_id)
        assert row is not None and row.last_seen == 110.0 and row.report == {"state": {"x": 1}}

    def test_agents_seen_since_a_cutoff_are_counted(self, store: Store) -> None:
        ids = []
        for _ in range(3):
            created = store.bootstrap_agent(store.create_bootstrap_token())
            assert created is not None
            ids.append(created[0])
        store.record_report(ids[0], {"state": {}}, now=100.0)
        store.record_report(ids[1], {"state": {}}, now=130.0)
        # ids[2] never reported: never counted
        assert store.count_seen_since(0.0) == 2
        assert store.count_seen_since(100.0) == 2  # the cutoff itself is still online
        assert store.count_seen_since(100.5) == 1
        assert store.count_seen_since(131.0) == 0


class TestDeliveriesAndHooks:
    def test_delivery_is_new_once_and_survives_reopen(self, store: Store, database: str) -> None:
        assert store.remember_delivery("github", "d-1")
        assert not store.remember_delivery("github", "d-1")
        assert store.remember_delivery("gitlab", "d-1")  # ids are per provider
        store.close()
        again = Store(database)
        assert not again.remember_delivery("github", "d-1")
        again.close()

    def test_concurrent_replays_count_once(self, store: Store) -> None:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: store.remember_delivery("gitea", "x"), range(64)))
        assert results.count(True) == 1

    def test_deploy_hook_token_checks_and_rotates(self, store: Store) -> None:
        token = store.create_deploy_hook("prod")
        assert store.check_deploy_hook(token) == "prod"
        assert store.check_deploy_hook(token + "x") is None
        rotated = store.create_deploy_hook("prod")
        assert store.check_deploy_hook(rotated) == "prod"
        assert store.check_deploy_hook(token) is None
        assert rotated.encode() not in stored_bytes(store)


class TestCommands:
    def _make(
        self, store: Store, cid: str, *, kind: str = "install", spec: str = "h1"
    ) -> list[str]:
        return store.create_command(
            command_id=cid,
            agent="agt_1",
            deployment="dpl_1",
            kind=kind,
            spec_hash=spec,
            payload={"id": cid},
            created=time.time(),
            deadline=time.time() + 60,
        )

    def test_newer_command_supersedes_pending_ones(self, store: Store) -> None:
        assert self._make(store, "cmd_a") == []
        assert self._make(store, "cmd_b", kind="update", spec="h2") == ["cmd_a"]
        assert [c.id for c in store.pending_commands("agt_1")] == ["cmd_b"]
        row = store.command("cmd_a")
        assert row is not None and row.state == "superseded"

    def test_result_is_idempotent(self, store: Store) -> None:
        self._make(store, "cmd_a")
        row, dup = store.finish_command("cmd_a", "agt_1", {"ok": True, "message": "first"})
        assert row is not None and not dup and row.state == "done"
        row, dup = store.finish_command("cmd_a", "agt_1", {"ok": False, "message": "second"})
        assert row is not None and dup
        assert row.state == "done" and row.result == {"ok": True, "message": "first"}
        assert store.finish_command("cmd_a", "agt_2", {"ok": True}) == (None, False)
        assert store.pending_commands("agt_1") == []

    def test_expired_commands_leave_the_queue(self, store: Store) -> None:
        store.create_command(
            command_id="cmd_old",
            agent="agt_1",
            deployment="dpl_1",
            kind="install",
            spec_hash="h",
            payload={},
            created=0.0,
            deadline=10.0,
        )
        assert store.pending_commands("agt_1", now=11.0) == []
        assert [c.id for c in store.expire_commands(now=11.0)] == ["cmd_old"]
        row = store.command("cmd_old")
        assert row is not None and row.state == "expired"


class TestMigrations:
    def test_fresh_database_is_at_the_current_version_in_wal_mode(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "reconcile.db")
        assert store.schema_version() == SCHEMA_VERSION
        assert store.path is not None
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_an_older_database_is_migrated_and_keeps_its_data(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "reconcile.db"
        db = sqlite3.connect(path)
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO agents (id, secret_hash, hostname, created) "
            "VALUES ('agt_00000000000000a1', 'x', 'old-host', 1.0)"
        )
        db.execute(
            "INSERT INTO deployments (id, name, agent, updated) "
            "VALUES ('dpl_1', 'api', 'agt_00000000000000a1', 1.0)"
        )
        db.commit()
        db.close()
        store = Store(path)
        assert store.schema_version() == SCHEMA_VERSION
        [agent] = store.agents()
        assert agent.hostname == "old-host" and agent.version == ""
        [dep] = store.deployments()
        assert dep.name == "api" and dep.desired

    def test_a_newer_database_is_refused_clearly(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "reconcile.db"
        Store(path).close()
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
        db.close()
        with pytest.raises(SchemaError, match="newer than this server"):
            Store(path)

    def test_someone_elses_database_is_refused(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "other.db"
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        with pytest.raises(SchemaError, match="not ours"):
            Store(path)


class TestAppendedMigrations:
    """The rule for the next migrations: SQLite DDL appended to MIGRATIONS runs on both
    backends (PostgreSQL gets it translated), and what it makes behaves the same."""

    NEXT = """
    CREATE TABLE next_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE next_signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE next_bundles (
        id TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        size INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX next_one_pending ON commands (deployment, agent)
        WHERE state = 'pending';
    """

    def test_sqlite_ddl_appended_runs_on_both_backends(
        self, database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        Store(database).close()  # at today's version first: the new one is an upgrade
        monkeypatch.setattr("reconciler.server.store.MIGRATIONS", (*MIGRATIONS, self.NEXT))
        store = Store(database)
        try:
            assert store.schema_version() == SCHEMA_VERSION + 1
            with store._tx() as db:
                for channel in ("command", "command", "bundle"):
                    db.execute(
                        "INSERT INTO next_signals (channel, key, created) VALUES (?, ?, ?)",
                        (channel, "agt_1", 1_733_333_333.25),
                    )
                db.execute(
                    "INSERT INTO next_bundles (id, body, size) VALUES (?, ?, ?)",
                    ("b1", b"\x00\xffbundle", 8),
                )
                taken = db.execute(
                    "INSERT INTO next_leases (name, holder, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                    "expires = excluded.expires "
                    "WHERE next_leases.holder = excluded.holder OR next_leases.expires < ?",
                    ("reconcile:main", "replica-a", 100.0, 50.0),
                ).rowcount
            rows = store._query("SELECT seq, channel, created FROM next_signals ORDER BY seq")
            assert [(r["seq"], r[1], r["created"]) for r in rows] == [
                (1, "command", 1_733_333_333.25),
                (2, "command", 1_733_333_333.25),
                (3, "bundle", 1_733_333_333.25),
            ]
            [bundle] = store._query("SELECT body, size FROM next_bundles")
            assert bytes(bundle["body"]) == b"\x00\xffbundle" and bundle["size"] == 8
            assert taken == 1
            with store._tx() as db:  # another holder while the lease runs: not taken
                assert (
                    db.execute(
                        "INSERT INTO next_leases (name, holder, expires) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder "
                        "WHERE next_leases.holder = excluded.holder OR next_leases.expires < ?",
                        ("reconcile:main", "replica-b", 130.0, 60.0),
                    ).rowcount
                    == 0
                )
            # the partial unique index: one pending command per (deployment, agent)
            TestCommands()._make(store, "cmd_a")
            with pytest.raises(store.db.errors):
                store.create_command(
                    command_id="cmd_b",
                    agent="agt_1",
                    deployment="dpl_1",
                    kind="install",
                    spec_hash="h",
                    payload={},
                    created=time.time(),
                    deadline=time.time() + 60,
                    supersede=False,
                )
        finally:
            store.close()


class TestEventsAndPlan:
    def test_events_page_by_id(self, store: Store) -> None:
        ids = [store.record_event("e", {"n": n}) for n in range(5)]
        page = store.events(after=ids[1], limit=2)
        assert [e.fields["n"] for e in page] == [2, 3]

    def test_plan_and_deployment_rows(self, store: Store) -> None:
        plan = {"actions": [{"id": "dpl_1", "action": "install", "reason": "new deployment"}]}
        store.save_plan(plan, revision="abc", desired=[("dpl_1", "api", "agt_1", "h", None)])
        found = store.last_plan()
        assert found is not None and found[0] == plan and found[1] == "abc"
        [row] = store.deployments()
        assert (row.last_action, row.last_reason) == ("install", "new deployment")
        store.save_plan({"actions": []}, revision="def", desired=[])
        assert store.deployments() == []
        assert [r.name for r in store.deployments(desired_only=False)] == ["api"]
