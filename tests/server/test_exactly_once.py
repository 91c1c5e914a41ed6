"""Issue 17, part 1: a command for a (deployment, spec) is issued once, decided by the store.

The unit tests pin each rule of ``Store.create_commands``; the stress test runs
reconciles (two at a time, as two replicas would), agents that apply commands and post
results, heartbeats that may have been observed before a result and arrive after it, and
restarts of the store, all at once against one real SQLite file, and then reads the
commands table: no spec was issued twice unless the agent reported it failed.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from reconciler.server.store import NewCommand, Store

T = TypeVar("T")


def _new(agent: str, deployment: str, spec: str, *, now: float = 100.0) -> NewCommand:
    return NewCommand(
        id=f"cmd_{secrets.token_hex(8)}",
        agent=agent,
        deployment=deployment,
        kind="install",
        spec_hash=spec,
        payload={"spec": spec},
        created=now,
        deadline=now + 3600,
    )


def _agent(store: Store) -> str:
    created = store.bootstrap_agent(store.create_bootstrap_token())
    assert created is not None
    return created[0]


def _report(store: Store, agent: str, apps: dict[str, str]) -> None:
    """A full report of ``apps`` (deployment -> spec hash)."""
    state = {
        "agent": agent,
        "deployments": {
            d: {"id": d, "name": d, "namespace": "t", "spec_hash": s} for d, s in apps.items()
        },
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    store.record_report(agent, {}, state=state, digest=digest)


class TestRules:
    def test_an_equivalent_pending_command_is_not_issued_again(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)
        first = store.create_commands([_new(agent, "dpl_a", "s1")])
        again = store.create_commands([_new(agent, "dpl_a", "s1")])
        assert len(first) == 1 and again == []
        # Another spec supersedes it, in the same transaction as its insert.
        [newer] = store.create_commands([_new(agent, "dpl_a", "s2")])
        assert newer.superseded == [first[0].command.id]
        assert [c.spec_hash for c in store.pending_commands(agent, now=0)] == ["s2"]

    def test_the_index_refuses_a_second_pending_deploy_command(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)
        store.create_commands([_new(agent, "dpl_a", "s1")])
        raw = sqlite3.connect(tmp_path / "db")
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute(
                "INSERT INTO commands (id, agent, deployment, kind, spec_hash, payload, created, "
                "deadline) VALUES ('cmd_x', ?, 'dpl_a', 'update', 's9', '{}', 1, 2)",
                (agent,),
            )
        raw.close()

    def test_a_done_command_counts_until_two_reports_after_its_result(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)
        _report(store, agent, {})
        [issued] = store.create_commands([_new(agent, "dpl_a", "s1")])
        store.finish_command(issued.command.id, agent, {"ok": True})
        # The first report after the result may have been observed before it.
        _report(store, agent, {})
        assert store.create_commands([_new(agent, "dpl_a", "s1")]) == []
        # A heartbeat whose digest the server does not hold tells nothing: not counted.
        store.record_report(agent, {}, digest="not-the-held-one")
        assert store.create_commands([_new(agent, "dpl_a", "s1")]) == []
        # The second was observed after the result: it is the truth (here: app gone).
        _report(store, agent, {})
        assert len(store.create_commands([_new(agent, "dpl_a", "s1")])) == 1

    def test_the_view_a_plan_was_made_from_decides_not_the_newest_reports(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)
        _report(store, agent, {})
        [issued] = store.create_commands([_new(agent, "dpl_a", "s1")])
        store.finish_command(issued.command.id, agent, {"ok": True})
        seen = store.agent(agent)
        assert seen is not None
        view = {agent: seen.reports}  # a reconcile reads its view here...
        _report(store, agent, {"dpl_a": "s1"})
        _report(store, agent, {"dpl_a": "s1"})
        # ...and writes after two newer reports: its view is older than the result.
        assert store.create_commands([_new(agent, "dpl_a", "s1")], seen=view) == []

    def test_a_failed_command_may_be_issued_again(self, tmp_path: pathlib.Path) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)
        [issued] = store.create_commands([_new(agent, "dpl_a", "s1")])
        store.finish_command(issued.command.id, agent, {"ok": False})
        assert len(store.create_commands([_new(agent, "dpl_a", "s1")])) == 1

    def test_the_plan_and_its_commands_are_one_transaction(self, tmp_path: pathlib.Path) -> None:
        store = Store(tmp_path / "db")
        agent = _agent(store)

        def boom(_: object) -> tuple[str, dict[str, Any]]:
            raise RuntimeError("crash between the plan and its commands")

        with pytest.raises(RuntimeError):
            store.save_plan(
                {"actions": []},
                revision="r1",
                desired=[("dpl_a", "a", agent, "s1", None)],
                commands=[_new(agent, "dpl_a", "s1")],
                event=boom,
            )
        assert store.last_plan() is None and store.deployments() == []
        assert store.pending_commands(agent, now=0) == []

    def test_migration_keeps_one_pending_command_per_deployment(
        self, tmp_path: pathlib.Path
    ) -> None:
        path = tmp_path / "db"
        Store(path).close()
        raw = sqlite3.connect(path)
        # Back to schema 3 with the duplicates the old code could leave behind.
        raw.execute("DROP INDEX commands_one_pending")
        raw.execute("PRAGMA user_version = 3")
        for table in ("leases", "signals", "bundle_blobs", "bundles", "shared"):  # 5's
            raw.execute(f"DROP TABLE {table}")
        raw.execute("DROP TABLE progress")  # 6's
        for column in ("state", "state_digest", "reports"):
            raw.execute(f"ALTER TABLE agents DROP COLUMN {column}")
        raw.execute("ALTER TABLE commands DROP COLUMN finish_mark")
        raw.execute("DROP INDEX deployments_agent")
        for n, created in ((1, 10.0), (2, 20.0)):
            raw.execute(
                "INSERT INTO commands (id, agent, deployment, kind, spec_hash, payload, created, "
                "deadline) VALUES (?, 'agt_1', 'dpl_a', 'install', ?, '{}', ?, 1e12)",
                (f"cmd_{n}", f"s{n}", created),
            )
        raw.commit()
        raw.close()
        store = Store(path)
        assert [c.id for c in store.pending_commands("agt_1", now=0)] == ["cmd_2"]
        old = store.command("cmd_1")
        assert old is not None and old.state == "superseded"


# ------------------------------------------------------------------------ stress


class _Fleet:
    """A few agents and their deployments, driven by threads against one database file
    that is re-opened (a server restart) while they run."""

    AGENTS = 3
    DEPLOYMENTS = 3  # per agent
    PUSHES = 40

    def __init__(self, path: pathlib.Path, seed: int) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.store = Store(path)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.agents = [_agent(self.store) for _ in range(self.AGENTS)]
        self.desired: dict[str, tuple[str, str]] = {}  # deployment -> (agent, spec)
        self.specs = 0
        for agent in self.agents:
            for n in range(self.DEPLOYMENTS):
                self.desired[f"dpl_{agent[-6:]}{n}"] = (agent, self._spec())
        self.hosts: dict[str, dict[str, str]] = {a: {} for a in self.agents}
        self.host_locks = {a: threading.Lock() for a in self.agents}
        # One report at a time per agent, as the real agent sends them.
        self.report_locks = {a: threading.Lock() for a in self.agents}
        # One run at a time, as Reconciler._lock (and one leader across replicas) ensure:
        # two runs from different commits would rightly undo each other's commands.
        # Everything else (reports, results, restarts) runs at once with them.
        self.reconcile_lock = threading.Lock()
        self.restarts = 0
        self.reconciles = 0

    def _spec(self) -> str:
        self.specs += 1
        return f"spec{self.specs:04d}"

    def retry(self, call: Callable[[Store], T]) -> T:
        """A call that a restart interrupted is made again on the new store."""
        while True:
            with self.lock:
                store = self.store
            try:
                return call(store)
            except sqlite3.ProgrammingError:  # closed under us: the server restarted
                continue

    def report(self, agent: str, rng: random.Random) -> None:
        with self.report_locks[agent]:
            with self.host_locks[agent]:
                apps = dict(self.hosts[agent])
            # Observed now, delivered a little later: a result may be posted meanwhile.
            threading.Event().wait(rng.uniform(0, 0.002))
            self.retry(lambda s: _report(s, agent, apps))

    def reconcile(self) -> None:
        def once(store: Store) -> None:
            rows = {a.id: a for a in store.agents()}
            seen = {a: row.reports for a, row in rows.items()}
            with self.lock:
                desired = dict(self.desired)
            commands = []
            for dpl, (agent, spec) in desired.items():
                state = (rows[agent].report or {}).get("state") or {}
                have = (state.get("deployments") or {}).get(dpl)
                if have is None or have["spec_hash"] != spec:
                    commands.append(_new(agent, dpl, spec, now=time.time()))
            store.save_plan(
                {"actions": []},
                revision=None,
                desired=[(d, d, a, s, None) for d, (a, s) in desired.items()],
                commands=commands,
                seen=seen,
            )

        with self.reconcile_lock:
            self.retry(once)
            self.reconciles += 1

    def run_agent(self, agent: str, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            for command in self.retry(lambda s: s.pending_commands(agent, now=0)):
                ok = rng.random() > 0.1
                if ok:
                    with self.host_locks[agent]:
                        self.hosts[agent][command.deployment] = str(command.spec_hash)

                def finish(store: Store, command_id: str = command.id, result: bool = ok) -> object:
                    return store.finish_command(command_id, agent, {"ok": result})

                self.retry(finish)
                self.report(agent, rng)
            threading.Event().wait(0.001)

    def run_heartbeats(self, agent: str, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            self.report(agent, rng)

    def run_reconciles(self) -> None:
        while not self.stop.is_set():
            self.reconcile()

    def run_restarts(self) -> None:
        while not self.stop.is_set():
            threading.Event().wait(0.02)
            fresh = Store(self.path)
            with self.lock:
                old, self.store = self.store, fresh
            old.close()
            self.restarts += 1

    def run_pushes(self) -> None:
        # Each push waits for a reconcile after the previous one (and every tenth for a
        # restart too), so the interleaving the test claims happens on a loaded machine too.
        for n in range(self.PUSHES):
            reconciles = self.reconciles + 1
            restarts = self.restarts + (1 if n % 10 == 0 else 0)
            while not self.stop.is_set() and (
                self.reconciles < reconciles or self.restarts < restarts
            ):
                threading.Event().wait(0.005)
            with self.lock:
                dpl = self.rng.choice(sorted(self.desired))
                self.desired[dpl] = (self.desired[dpl][0], self._spec())
        self.stop.set()

    def guarded(self, target: Callable[..., None], *args: object) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # reported by the test, never lost in a thread
                self.errors.append(exc)
                self.stop.set()

        return threading.Thread(target=run, daemon=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_no_spec_is_issued_twice_under_concurrent_reconciles_reports_and_restarts(
    tmp_path: pathlib.Path, seed: int
) -> None:
    fleet = _Fleet(tmp_path / "reconcile.db", seed)
    threads = [fleet.guarded(fleet.run_pushes), fleet.guarded(fleet.run_restarts)]
    threads += [fleet.guarded(fleet.run_reconciles) for _ in range(2)]
    for n, agent in enumerate(fleet.agents):
        threads.append(fleet.guarded(fleet.run_agent, agent, seed * 100 + n))
        threads.append(fleet.guarded(fleet.run_heartbeats, agent, seed * 1000 + n))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads)
    assert fleet.errors == []
    # It did run concurrently: restarts and reconciles during the pushes.
    assert fleet.restarts >= fleet.PUSHES // 10 and fleet.reconciles >= fleet.PUSHES

    store = Store(tmp_path / "reconcile.db")
    issued: Counter[tuple[str, str, str | None]] = Counter()
    failed: Counter[tuple[str, str, str | None]] = Counter()
    for command in store.commands(limit=1_000_000):
        key = (command.agent, command.deployment, command.spec_hash)
        issued[key] += 1
        failed[key] += command.state == "failed"
    twice = {key: n for key, n in issued.items() if n > 1 + failed[key]}
    assert twice == {}, f"issued again without a failure in between: {twice}"
    assert sum(issued.values()) > fleet.PUSHES  # commands did flow
