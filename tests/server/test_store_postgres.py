"""The PostgreSQL backend against the real server: migrations, two replicas (two Store
objects on one database) racing from many threads, leadership by advisory lock with
fail-over, and NOTIFY/LISTEN between replicas.  The dialect translation has pure unit
tests at the end; the rest runs on the test PostgreSQL (``postgres`` marker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from reconciler.server.database import (
    DatabaseError,
    PostgresDatabase,
    lock_key,
    postgres_ddl,
    postgres_sql,
    redact_url,
)
from reconciler.server.store import MIGRATIONS, SCHEMA_VERSION, SchemaError, Store
from tests.conftest import REPO_ROOT
from tests.server.postgres_helpers import (
    admin_connection,
    fresh_schema,
    postgres_dsn,
    terminate_backend,
)

#: Generous bounds for things that happen in milliseconds; a test fails only if they never do.
EVENTUALLY = 15.0


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_schema("pgstore") as fresh:
        yield fresh


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[Store, Store]]:
    """Two Store objects on one database: two `reconcile serve` replicas."""
    a, b = Store(url), Store(url)
    yield a, b
    a.close()
    b.close()


def pg(store: Store) -> PostgresDatabase:
    assert isinstance(store.db, PostgresDatabase)
    return store.db


def schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]


def advisory_holder(key: int) -> int | None:
    """The server process (pid) holding the session advisory lock ``key``, from pg_locks."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    with admin_connection() as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
    return None if row is None else int(row[0])


def wait_for(predicate: Any, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after EVENTUALLY."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > EVENTUALLY:
            pytest.fail(f"{what}: not within {EVENTUALLY} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.postgres
class TestMigrations:
    def test_a_fresh_schema_is_at_the_current_version(self, url: str) -> None:
        store = Store(url)
        assert store.schema_version() == SCHEMA_VERSION
        with admin_connection() as conn:
            types = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = 'commands'",
                    (schema_of(url),),
                ).fetchall()
            )
        # time.time() needs 8 bytes: a 4-byte REAL would round every timestamp
        assert types["created"] == "double precision"
        store.record_report("agt_x", {}, now=1_733_333_333.123456)  # no such agent: no-op
        store.create_command(
            command_id="c",
            agent="a",
            deployment="d",
            kind="install",
            spec_hash=None,
            payload={},
            created=1_733_333_333.123456,
            deadline=1_733_333_999.5,
        )
        row = store.command("c")
        assert row is not None and row.created == 1_733_333_333.123456
        store.close()

    def test_an_older_schema_is_migrated_and_keeps_its_data(self, url: str) -> None:
        with admin_connection() as conn:
            schema = schema_of(url)
            conn.execute(f'SET search_path = "{schema}"')
            for statement in postgres_ddl(MIGRATIONS[0]).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (1)")
            conn.execute(
                "INSERT INTO agents (id, secret_hash, hostname, created) "
                "VALUES ('agt_00000000000000a1', 'x', 'old-host', 1.0)"
            )
        store = Store(url)
        assert store.schema_version() == SCHEMA_VERSION
        [agent] = store.agents()
        assert agent.hostname == "old-host" and agent.version == ""
        assert store.record_event("agent.joined", {"agent": agent.id}) >= 1
        store.close()

    def test_a_newer_schema_is_refused_clearly(self, url: str) -> None:
        Store(url).close()
        with admin_connection() as conn:
            conn.execute(
                f'UPDATE "{schema_of(url)}".schema_version SET version = %s',
                (SCHEMA_VERSION + 1,),
            )
        with pytest.raises(SchemaError, match="newer than this server"):
            Store(url)

    def test_someone_elses_tables_are_refused_and_left_alone(self, url: str) -> None:
        with admin_connection() as conn:
            conn.execute(f'CREATE TABLE "{schema_of(url)}".invoices (x int)')
        with pytest.raises(SchemaError, match="not ours"):
            Store(url)
        with admin_connection() as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema_of(url),),
            ).fetchall()
        assert tables == [("invoices",)]

    def test_replicas_starting_together_migrate_once(self, url: str) -> None:
        barrier = threading.Barrier(6)

        def start(_: int) -> int:
            barrier.wait()
            store = Store(url)
            try:
                return store.schema_version()
            finally:
                store.close()

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(start, range(6))) == [SCHEMA_VERSION] * 6


@pytest.mark.postgres
class TestConnectionErrors:
    def test_an_unreachable_server_is_a_typed_error_without_the_password(self) -> None:
        with pytest.raises(DatabaseError) as caught:
            Store("postgresql://admin:s3cr3t-pw@127.0.0.1:1/reconcile?connect_timeout=2")
        message = str(caught.value)
        assert "s3cr3t-pw" not in message and "***" in message and "127.0.0.1:1" in message

    def test_a_wrong_password_is_refused_without_echoing_it(self) -> None:
        admin_connection().close()  # the server is up: the refusal is the login's
        dsn = postgres_dsn().replace("reconciler:reconciler@", "reconciler:Wr0ngPassw0rd@")
        assert "Wr0ngPassw0rd" in dsn
        with pytest.raises(DatabaseError) as caught:
            Store(dsn)
        message = str(caught.value)
        assert "Wr0ngPassw0rd" not in message and "password authentication failed" in message

    def test_redact_url_masks_userinfo_and_password_parameters(self) -> None:
        assert redact_url("postgresql://u:pw@h/db") == "postgresql://***@h/db"
        assert redact_url("postgresql://h/db?password=pw&sslmode=require") == (
            "postgresql://h/db?password=***&sslmode=require"
        )


@pytest.mark.postgres
class TestTwoReplicas:
    def test_a_delivery_id_is_accepted_once_across_replicas(
        self, replicas: tuple[Store, Store]
    ) -> None:
        ids = [f"delivery-{n}" for n in range(20)]
        barrier = threading.Barrier(24)

        def race(i: int) -> list[bool]:
            barrier.wait()
            return [replicas[i % 2].remember_delivery("github", d) for d in ids]

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(race, range(24)))
        for column in zip(*results, strict=True):
            assert sum(column) == 1

    def test_a_bootstrap_token_makes_one_agent_across_replicas(
        self, replicas: tuple[Store, Store]
    ) -> None:
        tokens = [replicas[0].create_bootstrap_token() for _ in range(10)]
        barrier = threading.Barrier(20)

        def race(i: int) -> list[bool]:
            barrier.wait()
            return [replicas[i % 2].bootstrap_agent(t, f"h{i}") is not None for t in tokens]

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(race, range(20)))
        for column in zip(*results, strict=True):
            assert sum(column) == 1
        assert len(replicas[1].agents()) == 10

    def test_events_from_both_replicas_go_through_one_outbox(
        self, replicas: tuple[Store, Store]
    ) -> None:
        class Router:
            def wants(self, kind: str) -> bool:
                return kind.startswith("agent.")

            def route(
                self, kind: str, fields: dict[str, Any], event_id: str, now: float
            ) -> list[tuple[str, str, str]]:
                return [("hook", kind, json.dumps({"id": event_id, **fields}))]

        woken = [0, 0]
        for i, store in enumerate(replicas):
            store.route_events(Router(), lambda i=i: woken.__setitem__(i, woken[i] + 1))

        def emit(n: int) -> None:
            replicas[n % 2].record_event("agent.online", {"n": n}, now=1000.0 + n)
            replicas[n % 2].record_event("reconcile.ok", {"n": n}, now=1000.0 + n)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(emit, range(60)))
        a, b = replicas
        assert woken == [30, 30]
        due_a, due_b = (
            a.due_outbox("hook", now=2000.0, limit=100),
            b.due_outbox("hook", now=2000.0, limit=100),
        )
        assert due_a == due_b and len(due_a) == 60
        assert sorted(json.loads(r.body)["n"] for r in due_a) == list(range(60))
        assert len({r.delivery_id for r in due_a}) == 60
        events = a.events(limit=500)
        assert len(events) == 120 and [e.id for e in events] == sorted(e.id for e in events)
        # a delivery made through one replica is done for the other
        b.outbox_delivered(due_a[0].id, now=2001.0)
        assert len(a.due_outbox("hook", now=2002.0, limit=100)) == 59

    def test_a_transaction_sees_its_own_writes_and_a_failure_leaves_nothing(
        self, replicas: tuple[Store, Store]
    ) -> None:
        a, b = replicas

        def insert_then_fail() -> None:
            with a._tx() as db:
                db.execute(
                    "INSERT INTO deploy_hooks (name, token_hash, created) VALUES (?, ?, ?)",
                    ("x", "h", 1.0),
                )
                assert [r["name"] for r in a._query("SELECT name FROM deploy_hooks")] == ["x"]
                assert b._query("SELECT name FROM deploy_hooks") == []  # not committed yet
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            insert_then_fail()
        assert a._query("SELECT name FROM deploy_hooks") == []


@pytest.mark.postgres
class TestSameResultsOnBothBackends:
    """One scenario over the store's methods on SQLite and on PostgreSQL: equal answers."""

    @staticmethod
    def scenario(store: Store) -> list[Any]:
        out: list[Any] = []
        token = store.create_bootstrap_token(now=100.0)
        created = store.bootstrap_agent(token, "host-a", now=101.0)
        assert created is not None
        agent = created[0]
        out.append(store.record_report(agent, {"state": {}}, hostname="", now=102.0))
        out.append(
            store.record_report(agent, {"s": 1}, hostname="renamed", version="1.2", now=103.0)
        )
        row = store.agent(agent)
        assert row is not None
        out.append((row.hostname, row.last_seen, row.report, row.version))
        for n, spec in enumerate(("h1", None, "h2")):
            out.append(
                store.create_command(
                    command_id=f"cmd_{n}",
                    agent=agent,
                    deployment="dpl_1",
                    kind="install",
                    spec_hash=spec,
                    payload={"n": n},
                    created=110.0 + n,
                    deadline=200.0,
                )
            )
        out.append(store.in_flight("dpl_1", agent, "h2", "install") is not None)
        out.append(store.in_flight("dpl_1", agent, None, "install"))
        out.append(store.has_pending(agent, now=150.0))
        out.append(store.pending_deployments(agent))
        done, dup = store.finish_command(
            "cmd_2", agent, {"ok": False, "message": "no", "payload": {"pw": "x"}}, now=120.0
        )
        out.append((done and done.state, dup))
        store.forget_result_payload("cmd_2")
        cmd = store.command("cmd_2")
        out.append(cmd and cmd.result)
        out.append(store.failures("dpl_1", agent, "h2", "install"))
        out.append([c.id for c in store.expire_commands(now=300.0)])
        out.append([c.id for c in store.commands(limit=10)])
        out.append(sorted(store.active_command_ids()))
        store.save_plan(
            {"actions": [{"id": "dpl_1", "action": "install", "reason": "new"}]},
            revision="r1",
            desired=[("dpl_1", "api", agent, "h2", "http://a")],
            now=130.0,
        )
        out.append([(d.name, d.last_action, d.url, d.desired) for d in store.deployments()])
        for n, kind in enumerate(("agent.joined", "webhook.push", "credential.made", "x")):
            store.record_event(kind, {"n": n}, now=140.0 + n)
        out.append([e.kind for e in store.events(audit=True)])
        out.append([e.kind for e in store.events(audit=False)])
        out.append([e.fields for e in store.newest_events(2)])
        store.remember_push("abc", "org/repo", now=150.0)
        out.append(
            store.set_commit_status(
                "abc", "org/repo", "pending", request="{}", only_if=None, now=151.0
            )
        )
        out.append(
            store.set_commit_status("abc", "org/repo", "success", request="{}", only_if=None)
        )
        status = store.commit_status("abc")
        out.append(status and (status.state, status.repo, status.commands))
        out.append([s.sha for s in store.pending_commit_statuses()])
        out.append(store.announce_offline(cutoff=200.0, now=200.0) == [agent])
        out.append(store.announce_offline(cutoff=200.0, now=201.0))
        store.prune_history(now=1e9)
        out.append(len(store.events(limit=100)))
        out.append(store.remove_agent(agent, now=400.0))
        out.append(store.remove_agent(agent, now=400.0))
        out.append(store.ping())
        return out

    def test_both_backends_answer_alike(self, url: str, tmp_path: Any) -> None:
        sqlite = Store(tmp_path / "reconcile.db")
        postgres = Store(url)
        try:
            assert self.scenario(postgres) == self.scenario(sqlite)
        finally:
            sqlite.close()
            postgres.close()


@pytest.mark.postgres
class TestLeadership:
    def test_one_replica_leads_and_the_other_takes_over_when_its_connection_dies(
        self, replicas: tuple[Store, Store], url: str
    ) -> None:
        a, b = (pg(s) for s in replicas)
        name = "reconcile:main"
        assert a.try_lead(name, "replica-a", ttl=15)
        assert not b.try_lead(name, "replica-b", ttl=15)
        assert a.try_lead(name, "replica-a", ttl=15)  # kept
        assert not a.try_lead(name, "someone-else", ttl=15)  # not re-entrant for others
        holder = advisory_holder(lock_key(schema_of(url), "lead", name))
        assert holder is not None
        terminate_backend(holder)  # the leader's connection dies, as with a kill -9
        took = wait_for(lambda: b.try_lead(name, "replica-b", ttl=15), "fail-over")
        assert not a.try_lead(name, "replica-a", ttl=15)  # the old leader knows it lost
        print(f"fail-over after the leader's backend died: {took:.3f} s")

    def test_a_leader_killed_with_sigkill_is_replaced(
        self, replicas: tuple[Store, Store], url: str
    ) -> None:
        """Another process leads; ``kill -9`` it: its session ends, and this one takes over."""
        script = (
            "import sys, time\n"
            "from reconciler.server.store import Store\n"
            "store = Store(sys.argv[1])\n"
            "assert store.db.try_lead('reconcile:main', 'child', ttl=15)\n"
            "print('leading', flush=True)\n"
            "time.sleep(600)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "leading", child.stderr.read() if child.stderr else ""
            a = pg(replicas[0])
            assert not a.try_lead("reconcile:main", "replica-a", ttl=15)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            took = wait_for(lambda: a.try_lead("reconcile:main", "replica-a", ttl=15), "take-over")
            print(f"take-over after kill -9 of the leader: {took:.3f} s")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)

    def test_resign_and_close_hand_leadership_over(self, url: str) -> None:
        a, b, c = Store(url), Store(url), Store(url)
        try:
            assert pg(a).try_lead("r", "a", ttl=15)
            assert not pg(b).try_lead("r", "b", ttl=15)
            pg(a).resign("r", "someone-else")  # not the leader: nothing changes
            assert not pg(b).try_lead("r", "b", ttl=15)
            pg(a).resign("r", "a")
            assert pg(b).try_lead("r", "b", ttl=15)
            assert not pg(c).try_lead("r", "c", ttl=15)
            b.close()  # a replica shutting down (or dying): its session ends
            wait_for(lambda: pg(c).try_lead("r", "c", ttl=15), "take-over after close")
            assert pg(c).try_lead("other-source", "c", ttl=15)  # names are independent
        finally:
            a.close()
            c.close()

    def test_its_own_connections_keep_the_url_s_schema_and_set_keepalives(self, url: str) -> None:
        store = Store(url)
        try:
            conn = pg(store).connect()
            with conn:
                assert conn.execute("SELECT current_schema()").fetchone()[0] == schema_of(url)
                assert conn.execute("SHOW tcp_keepalives_idle").fetchone()[0] in ("5", "5s")
                assert conn.execute("SHOW tcp_keepalives_count").fetchone()[0] == "3"
        finally:
            store.close()

    def test_two_installations_in_two_schemas_never_share_a_lock(self) -> None:
        with fresh_schema("one") as one, fresh_schema("two") as two:
            a, b = Store(one), Store(two)
            try:
                assert pg(a).try_lead("reconcile:main", "a", ttl=15)
                assert pg(b).try_lead("reconcile:main", "b", ttl=15)
            finally:
                a.close()
                b.close()


@pytest.mark.postgres
class TestSignals:
    def test_a_signal_from_one_replica_reaches_the_others_watcher(
        self, replicas: tuple[Store, Store]
    ) -> None:
        a, b = (pg(s) for s in replicas)
        got: list[tuple[str, str]] = []
        arrived = threading.Event()

        def on_signal(channel: str, key: str) -> None:
            got.append((channel, key))
            if key == "agt_b":
                arrived.set()

        stop = a.watch(on_signal)
        try:
            a.signal("command", "agt_a")  # its own: not delivered to itself
            with replicas[1]._tx():  # sent when the transaction commits
                b.signal("command", "agt_committed")

            def signal_then_fail() -> None:
                with replicas[1]._tx():  # rolled back: never sent
                    b.signal("command", "agt_never")
                    raise RuntimeError("rollback")

            with pytest.raises(RuntimeError, match="rollback"):
                signal_then_fail()
            sent = time.monotonic()
            b.signal("command", "agt_b")
            assert arrived.wait(EVENTUALLY)
            print(f"NOTIFY -> watcher: {1000 * (time.monotonic() - sent):.1f} ms")
            assert got == [("command", "agt_committed"), ("command", "agt_b")]
        finally:
            stop()

    def test_a_watcher_listens_again_after_losing_its_connection(
        self, replicas: tuple[Store, Store], url: str
    ) -> None:
        a, b = (pg(s) for s in replicas)
        got: list[str] = []
        stop = a.watch(lambda channel, key: got.append(key))
        try:
            with admin_connection() as conn:
                pids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
                        "AND query LIKE %s",
                        (f"%{a._channel}%",),
                    )
                ]
            assert len(pids) == 1
            terminate_backend(pids[0])
            n = 0

            def delivered() -> bool:
                nonlocal n
                n += 1
                b.signal("command", f"k{n}")
                time.sleep(0.05)
                return bool(got)

            wait_for(delivered, "a signal after the watcher's connection was cut")
        finally:
            stop()
        count = len(got)
        b.signal("command", "after-stop")
        time.sleep(0.3)
        assert len(got) == count  # stopped means stopped


class TestDialect:
    def test_placeholders_percent_signs_and_quoted_question_marks(self) -> None:
        assert postgres_sql("SELECT * FROM t WHERE a = ? AND b LIKE 'x%' AND c = '?'") == (
            "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%' AND c = '?'"
        )

    def test_insert_or_ignore_and_is_parameter(self) -> None:
        assert postgres_sql("INSERT OR IGNORE INTO d (a) VALUES (?)") == (
            "INSERT INTO d (a) VALUES (%s) ON CONFLICT DO NOTHING"
        )
        assert postgres_sql("INSERT OR IGNORE INTO d (a) VALUES (?) RETURNING a") == (
            "INSERT INTO d (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING a"
        )
        assert postgres_sql("SELECT 1 WHERE h IS ? AND g IS NOT ? AND ? IS NULL") == (
            "SELECT 1 WHERE h IS NOT DISTINCT FROM %s AND g IS DISTINCT FROM %s AND %s IS NULL"
        )

    def test_sqlite_ddl_translates_to_postgres_types(self) -> None:
        ddl = postgres_ddl(
            "CREATE TABLE s (seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, "
            "n INTEGER DEFAULT 0, b BLOB, k TEXT) WITHOUT ROWID"
        )
        assert ddl == (
            "CREATE TABLE s (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "t DOUBLE PRECISION NOT NULL, n BIGINT DEFAULT 0, b BYTEA, k TEXT)"
        )
