"""Issue 17, part 2: what a fleet costs the server on every request, counted (never timed).

- a heartbeat whose state is unchanged is one row update: no deployment or command row is
  read, and the drift check does not run;
- a changed state checks drift on that agent's deployments only;
- a reconcile writes its plan and every command in one transaction, and the statements it
  runs do not grow with the deployments that need nothing;
- the long polls of every agent of a batch are woken after that transaction commits;
- an empty long poll is answered at a seeded-random share of its wait.
"""

from __future__ import annotations

import pathlib
import random
import sqlite3
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reconciler.model.agentapi import ReportAck, state_digest
from reconciler.model.state import AgentState, ContainerState, DeployedApp
from reconciler.server.app import ControlPlane, create_app
from reconciler.server.config import ServerConfig, ServerSecrets
from reconciler.server.database import SqliteDatabase
from reconciler.server.metrics import Metrics
from reconciler.server.notify import Notifier, spread_wait
from reconciler.server.store import Store
from reconciler.server.worker import Reconciler, Worker


def _agent(plane: ControlPlane, client: TestClient) -> dict[str, str]:
    token = plane.store.create_bootstrap_token()
    answer = client.post("/v1/agent/bootstrap", json={"token": token})
    assert answer.status_code == 201
    body = answer.json()
    return {"X-Agent-Id": body["agent_id"], "X-Agent-Secret": body["secret"]}


class _Trace:
    """Every SQL statement the store runs while it is entered."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql: list[str] = []

    def __enter__(self) -> _Trace:
        self._connection().set_trace_callback(self.sql.append)
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection().set_trace_callback(None)

    def _connection(self) -> sqlite3.Connection:
        assert isinstance(self.store.db, SqliteDatabase), "traced on SQLite only"
        return self.store.db._db

    def touching(self, table: str) -> list[str]:
        return [s for s in self.sql if f" {table} " in f"{s} " or f" {table}\n" in s]


class TestHeartbeat:
    def test_an_unchanged_state_costs_one_row_and_no_drift_check(
        self, plane: ControlPlane, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        headers = _agent(plane, client)
        agent = headers["X-Agent-Id"]
        state = AgentState(agent=agent)
        digest = state_digest(state)
        first = client.post(
            "/v1/agent/report",
            json={"state": state.model_dump(mode="json"), "state_digest": digest},
            headers=headers,
        )
        assert first.status_code == 200
        assert ReportAck.model_validate(first.json()).state_digest == digest
        assert plane.worker.wait_idle(60)
        checks: list[str] = []
        monkeypatch.setattr(
            plane.reconciler, "drift_in_report", lambda a, s: checks.append(a) or []
        )
        with _Trace(plane.store) as trace:
            again = client.post("/v1/agent/report", json={"state_digest": digest}, headers=headers)
        assert again.status_code == 200
        assert again.json()["state_digest"] == digest
        assert checks == []
        assert trace.touching("deployments") == [] and trace.touching("commands") == []
        row = plane.store.agent(agent)
        assert row is not None and row.reports == 2 and row.state_digest == digest
        assert row.report is not None and row.report["state"]["agent"] == agent

    def test_a_digest_the_server_does_not_hold_gets_the_held_one_back(
        self, plane: ControlPlane, client: TestClient
    ) -> None:
        headers = _agent(plane, client)
        answer = client.post("/v1/agent/report", json={"state_digest": "abc"}, headers=headers)
        assert answer.status_code == 200
        assert answer.json()["state_digest"] is None  # none held: send the state
        row = plane.store.agent(headers["X-Agent-Id"])
        assert row is not None and row.reports == 0 and row.last_seen is not None

    def test_a_report_with_neither_state_nor_digest_is_refused_and_changes_nothing(
        self, plane: ControlPlane, client: TestClient
    ) -> None:
        headers = _agent(plane, client)
        answer = client.post("/v1/agent/report", json={"running": []}, headers=headers)
        assert answer.status_code == 422
        assert "neither a state nor a state_digest" in answer.json()["error"]
        row = plane.store.agent(headers["X-Agent-Id"])
        assert row is not None and row.last_seen is None and row.reports == 0

    def test_a_changed_state_checks_that_agents_deployments_only(
        self, plane: ControlPlane, client: TestClient
    ) -> None:
        headers = _agent(plane, client)
        agent = headers["X-Agent-Id"]
        client.post("/v1/agent/report", json={"state": {"agent": agent}}, headers=headers)
        assert plane.worker.wait_idle(60)
        plane.store.save_plan(
            {"actions": []},
            revision=None,
            desired=[
                ("dpl_0000000000000001", "mine", agent, "s1", None),
                ("dpl_0000000000000002", "theirs", "agt_00000000000000ff", "s2", None),
            ],
        )
        changed = AgentState(agent=agent, deployments={})
        with _Trace(plane.store) as trace:
            r = client.post(
                "/v1/agent/report",
                json={"state": changed.model_dump(mode="json"), "state_digest": "new"},
                headers=headers,
            )
        assert r.status_code == 200
        reads = [s for s in trace.touching("deployments") if s.startswith("SELECT")]
        assert reads and all("WHERE agent = " in s for s in reads), reads
        drift = [e.fields for e in plane.store.events(limit=100) if e.kind == "drift"]
        assert drift and drift[-1]["reasons"] == ["mine: not installed"]


# --------------------------------------------------------------------- reconcile


def _fleet(tmp_path: pathlib.Path, count: int) -> tuple[Reconciler, Store, list[str]]:
    """``count`` agents with one image deployment each, every one running at its desired
    spec (reported), the first run's commands finished."""
    repo = tmp_path / f"repo{count}"
    (repo / "deployments").mkdir(parents=True)
    store = Store(tmp_path / f"data{count}" / "reconcile.db")
    agents = []
    for _ in range(count):
        created = store.bootstrap_agent(store.create_bootstrap_token())
        assert created is not None
        agents.append(created[0])
        store.record_report(created[0], {}, state={"agent": created[0]}, digest="empty")
    (repo / "reconcile.yaml").write_text("namespace: fleet\nproxy: {tls: off}\n")
    for n, agent in enumerate(agents):
        (repo / "deployments" / f"app{n}.yaml").write_text(
            f"name: app{n:03d}\nagent: {agent}\nimage: caddy:2\ntarget_port: 80\n"
        )
    config = ServerConfig(source=str(repo), data_dir=tmp_path / f"data{count}", poll_interval=0)
    reconciler = Reconciler(config, store)
    first = reconciler.reconcile("first")
    assert len(first.commands) == count
    for command in store.commands(limit=10_000):
        store.finish_command(command.id, command.agent, {"ok": True})
    for d in reconciler.rendered():
        app = DeployedApp(
            id=d.id,
            name=d.name,
            namespace="fleet",
            spec_hash=d.spec_hash,
            services=list(d.services),
            containers=[ContainerState(service=s, name=f"{d.id}-{s}") for s in d.services],
        )
        state = AgentState(agent=d.agent, deployments={d.id: app})
        for _ in range(2):  # two reports after the results: they are confirmed
            store.record_report(d.agent, {}, state=state.model_dump(mode="json"), digest="x")
    return reconciler, store, agents


def _edit(reconciler: Reconciler, names: list[int]) -> None:
    repo = pathlib.Path(reconciler.config.source)
    for n in names:
        path = repo / "deployments" / f"app{n}.yaml"
        path.write_text(path.read_text().replace("target_port: 80", "target_port: 81"))


class TestReconcileCost:
    def test_statements_grow_with_the_commands_not_with_the_fleet(
        self, tmp_path: pathlib.Path
    ) -> None:
        counts = {}
        for size in (4, 16):
            reconciler, store, _ = _fleet(tmp_path, size)
            _edit(reconciler, [0, 1])
            with _Trace(store) as trace:
                outcome = reconciler.reconcile("push")
            assert len(outcome.commands) == 2 and outcome.summary["noop"] == size - 2
            selects = [s for s in trace.sql if s.lstrip().startswith("SELECT")]
            commits = [s for s in trace.sql if s.strip() == "COMMIT"]
            counts[size] = (len(selects), len(commits))
            store.close()
        # The same two commands, four times the fleet: not one more query, not one more
        # transaction (the deployment rows are written, one statement each, in the plan's).
        assert counts[4] == counts[16], counts

    def test_the_plan_and_every_command_commit_together(self, tmp_path: pathlib.Path) -> None:
        reconciler, store, _ = _fleet(tmp_path, 6)
        _edit(reconciler, [0, 2, 4])
        with _Trace(store) as trace:
            outcome = reconciler.reconcile("push")
        assert len(outcome.commands) == 3
        plan_at = next(i for i, s in enumerate(trace.sql) if "INSERT INTO plans" in s)
        begin = max(i for i in range(plan_at) if trace.sql[i].startswith("BEGIN"))
        end = next(i for i in range(plan_at, len(trace.sql)) if trace.sql[i] == "COMMIT")
        inserted = [s for s in trace.sql[begin:end] if "INSERT INTO commands" in s]
        assert len(inserted) == 3
        assert not [s for s in trace.sql if "INSERT INTO commands" in s and s not in inserted]
        store.close()

    def test_every_agent_of_the_batch_is_woken_after_the_commit(
        self, tmp_path: pathlib.Path
    ) -> None:
        reconciler, store, agents = _fleet(tmp_path, 5)
        _edit(reconciler, [1, 3])
        woken: dict[str, int] = {}
        other = sqlite3.connect(store.path)

        class Seeing(Notifier):
            def notify(self, agent: str) -> None:
                # Another connection sees the command already: it was committed first.
                woken[agent] = other.execute(
                    "SELECT count(*) FROM commands WHERE agent = ? AND state = 'pending'",
                    (agent,),
                ).fetchone()[0]

        reconciler.notifier = Seeing()
        reconciler.reconcile("push")
        other.close()
        assert woken == {agents[1]: 1, agents[3]: 1}
        store.close()


# -------------------------------------------------------------------- long polls


class _Recording(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return self.value


class TestLongPollSpread:
    def test_the_empty_answers_of_a_bunched_fleet_spread_over_a_third_of_the_wait(
        self,
    ) -> None:
        rng = random.Random(17)
        waits = [spread_wait(30.0, rng) for _ in range(1000)]
        assert all(21.0 <= w <= 30.0 for w in waits)
        # Polls that arrived in one second are answered over ~9 s: at most ~1/9 of them
        # share any one second (here, seeded: well under a fifth).
        per_second: dict[int, int] = {}
        for w in waits:
            per_second[int(w)] = per_second.get(int(w), 0) + 1
        assert max(per_second) - min(per_second) >= 8
        assert max(per_second.values()) < 200

    def test_the_server_draws_each_empty_answers_wait(
        self, remote: Any, tmp_path: pathlib.Path
    ) -> None:
        from tests.server.conftest import make_config

        config = make_config(remote, tmp_path / "data")
        store = Store.in_dir(config.data_dir)
        reconciler = Reconciler(config, store)
        rng = _Recording(0.0)  # answer at once: the draw is what is checked
        app = create_app(
            config,
            store,
            Worker(reconciler.reconcile, poll_interval=0),
            reconciler=reconciler,
            secrets=ServerSecrets(),
            metrics=Metrics(),
            notifier=Notifier(),
            rng=rng,
        )
        created = store.bootstrap_agent(store.create_bootstrap_token())
        assert created is not None
        headers = {"X-Agent-Id": created[0], "X-Agent-Secret": created[1]}
        with TestClient(app) as client:
            answer = client.get("/v1/agent/commands", params={"wait": 30}, headers=headers)
        assert answer.status_code == 200 and answer.json()["commands"] == []
        assert rng.calls == [(0.7, 1.0)]
        store.close()

    def test_an_empty_answer_reads_the_store_once_and_a_wake_reads_again(
        self, remote: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A poll that times out unwoken answers from its first read (thousands of polls
        end together after a restart); a woken one reads again (and only then)."""
        from tests.server.conftest import make_config

        config = make_config(remote, tmp_path / "data")
        store = Store.in_dir(config.data_dir)
        reconciler = Reconciler(config, store)
        notifier = Notifier()
        app = create_app(
            config,
            store,
            Worker(reconciler.reconcile, poll_interval=0),
            reconciler=reconciler,
            secrets=ServerSecrets(),
            metrics=Metrics(),
            notifier=notifier,
            rng=_Recording(0.01),  # 1% of the wait asked for
        )
        created = store.bootstrap_agent(store.create_bootstrap_token())
        assert created is not None
        agent = created[0]
        headers = {"X-Agent-Id": agent, "X-Agent-Secret": created[1]}
        reads: list[str] = []
        real = store.pending_commands
        monkeypatch.setattr(store, "pending_commands", lambda a: reads.append(a) or real(a))
        with TestClient(app) as client:
            answer = client.get("/v1/agent/commands", params={"wait": 20}, headers=headers)
            assert answer.status_code == 200 and answer.json()["commands"] == []
            assert reads == [agent]  # 0.2 s unwoken: no second read
            reads.clear()

            def wake() -> None:
                time.sleep(0.15)
                notifier.notify(agent)  # as a reconcile does after its commit

            thread = threading.Thread(target=wake)
            thread.start()
            answer = client.get("/v1/agent/commands", params={"wait": 60}, headers=headers)
            thread.join()
            assert answer.status_code == 200
        assert reads == [agent, agent]  # woken: read again; then timed out: no third
        store.close()
