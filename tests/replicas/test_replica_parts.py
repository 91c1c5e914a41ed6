"""The parts of a replica, each against the real store on a shared SQLite file:
leadership and its lease's own end, the worker that follows a leader, the notifier that
signals the others, and the run's results every replica reads (rendered deployments,
the one-shot mass-prune approval)."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Sequence

import pytest

from reconciler.model.errors import InvalidSpec
from reconciler.server import worker as worker_module
from reconciler.server.config import ServerConfig, load_server_config
from reconciler.server.notify import Notifier
from reconciler.server.replicas import Leadership, Replicas, SharedNotifier, lease_name
from reconciler.server.worker import MASS_PRUNE_KEY, Reconciler, Worker
from tests.replicas.conftest import SharedDatabase
from tests.replicas.test_store_replicas import wait_for
from tests.server.conftest import Remote, make_config

# ---------------------------------------------------------------------- leadership


def test_one_of_two_leads_and_a_clean_stop_hands_over_at_once(shared_db: SharedDatabase) -> None:
    a_store, b_store = shared_db.open_store(), shared_db.open_store()
    changes: list[tuple[str, bool]] = []
    a = Leadership(a_store, "reconcile:s", ttl=30, on_change=lambda v: changes.append(("a", v)))
    b = Leadership(b_store, "reconcile:s", ttl=30, on_change=lambda v: changes.append(("b", v)))
    a.start()
    assert a.leading and not b.check() and not b.leading
    assert a_store.leader("reconcile:s") == a.holder == a_store.replica_id
    a.stop()
    assert not a.leading
    assert b.check() and b.leading
    assert changes == [("a", True), ("b", True)]
    b.stop()
    a_store.close()
    b_store.close()


def test_a_lease_taken_too_late_to_count_is_not_leading_until_renewed(
    shared_db: SharedDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database made the try wait past the lease: holding it then would overlap with
    whoever takes it next.  The next (quick) try makes it count, and says so."""
    store = shared_db.open_store()
    changes: list[bool] = []
    now = [100.0]
    lead = Leadership(
        store, "reconcile:slow", ttl=5, on_change=changes.append, clock=lambda: now[0]
    )
    real = store.try_lead

    def slow_try(*args: object, **kwargs: float) -> bool:
        took = real(*args, **kwargs)  # type: ignore[arg-type]
        now[0] += 6  # the statement waited longer than the lease
        return took

    store.try_lead = slow_try  # type: ignore[method-assign]
    assert lead.check() is False
    assert changes == []
    assert store.leader("reconcile:slow") == lead.holder  # taken, but not counted
    store.try_lead = real  # type: ignore[method-assign]
    assert lead.check() is True
    assert changes == [True]
    # ... and once its end passes without a renewal, it is not leading any more
    now[0] += 5.5
    assert not lead.leading
    store.close()


def test_a_database_that_does_not_answer_ends_leadership(shared_db: SharedDatabase) -> None:
    store = shared_db.open_store()
    changes: list[bool] = []
    lead = Leadership(store, "reconcile:x", ttl=30, on_change=changes.append)
    assert lead.check()
    store.close()
    assert lead.check() is False
    assert changes == [True, False]


def test_the_lease_of_a_source_names_no_url() -> None:
    name = lease_name("https://user:token@git.example/repo.git", "main", None)
    assert name.startswith("reconcile:") and "token" not in name
    assert name != lease_name("https://user:token@git.example/repo.git", "prod", None)
    assert name == lease_name("https://user:token@git.example/repo.git", "main", None)


# -------------------------------------------------------------------------- worker


def test_a_following_worker_forwards_triggers_and_runs_nothing() -> None:
    ran: list[str] = []
    forwarded: list[str] = []
    leading = threading.Event()
    worker = Worker(ran.append, poll_interval=0, quiet=0.01)
    worker.follow(leading.is_set, forwarded.append)
    worker.start()  # "startup": the leader has its own
    try:
        worker.trigger("webhook: github push")
        worker.trigger("timer")
        assert worker.wait_idle(10)
        assert ran == [] and forwarded == ["webhook: github push"]
        assert not worker.leading and not worker.started_first
        leading.set()
        worker.trigger("leader: this replica took over")
        assert worker.wait_idle(10) and wait_for(lambda: ran != [])
        assert ran == ["leader: this replica took over"]
    finally:
        worker.stop()


def test_triggers_queued_when_leadership_goes_are_forwarded_not_run() -> None:
    ran: list[str] = []
    forwarded: list[str] = []
    leading = threading.Event()
    leading.set()
    release = threading.Event()

    def slow(reason: str) -> None:
        ran.append(reason)
        release.wait(10)

    worker = Worker(slow, poll_interval=0, quiet=0.01)
    worker.follow(leading.is_set, forwarded.append)
    worker.start(initial="first")
    try:
        assert wait_for(lambda: ran == ["first"])
        worker.trigger("api: POST /v1/reconcile")  # queued behind the running one
        leading.clear()  # the lease went to another replica meanwhile
        release.set()
        assert wait_for(lambda: forwarded == ["api: POST /v1/reconcile"])
        assert worker.wait_idle(10)
        assert ran == ["first"]
    finally:
        worker.stop()


# ------------------------------------------------------------------------ notifier


def test_the_notifier_signals_the_other_replicas_which_wake_their_own_polls(
    shared_db: SharedDatabase,
) -> None:
    a_store, b_store = shared_db.open_store(), shared_db.open_store()
    woken: list[str] = []

    class Recording(SharedNotifier):
        def notify_local(self, agent: str) -> None:
            woken.append(agent)
            super().notify_local(agent)

    b = Replicas(
        b_store,
        Leadership(b_store, "reconcile:n", ttl=30),
        Recording(b_store),
        trigger=lambda reason: None,
    )
    b.start()
    try:
        SharedNotifier(a_store).notify("agt_0123456789abcdef")
        assert wait_for(lambda: woken == ["agt_0123456789abcdef"])
    finally:
        b.stop()
    a_store.close()
    b_store.close()


def test_a_batch_wakes_this_replicas_polls_first_and_the_others_with_one_write(
    shared_db: SharedDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands of one reconcile: every local poll is woken before any database
    round trip (one per agent held the last of 100 up for a second on PostgreSQL), and the
    other replicas get every agent of the batch."""
    a_store, b_store = shared_db.open_store(), shared_db.open_store()
    agents = [f"agt_{i:016x}" for i in range(50)]
    order: list[str] = []
    woken: list[str] = []

    class Remote(SharedNotifier):
        def notify_local(self, agent: str) -> None:
            woken.append(agent)

    real_signal_many = a_store.signal_many

    def signal_many(channel: str, keys: Sequence[str], *, now: float | None = None) -> None:
        order.append(f"signal x{len(keys)}")
        real_signal_many(channel, keys, now=now)

    monkeypatch.setattr(a_store, "signal_many", signal_many)
    monkeypatch.setattr(a_store, "signal", lambda *a, **k: order.append("one signal"))
    b = Replicas(
        b_store,
        Leadership(b_store, "reconcile:m", ttl=30),
        Remote(b_store),
        trigger=lambda reason: None,
    )
    b.start()
    try:
        a = SharedNotifier(a_store)
        monkeypatch.setattr(Notifier, "notify", lambda self, agent: order.append("local"))
        a.notify_many(reversed(agents))
        assert order == ["local"] * 50 + ["signal x50"]
        assert wait_for(lambda: sorted(woken) == agents)
    finally:
        b.stop()
    a_store.close()
    b_store.close()


def test_a_forwarded_trigger_runs_on_the_leader_only(shared_db: SharedDatabase) -> None:
    stores = [shared_db.open_store() for _ in range(3)]
    triggered: dict[int, list[str]] = {0: [], 1: [], 2: []}
    sets = [
        Replicas(
            s,
            Leadership(s, "reconcile:f", ttl=30),
            SharedNotifier(s),
            trigger=triggered[i].append,
        )
        for i, s in enumerate(stores)
    ]
    for r in sets:
        r.start()
    try:
        assert [r.leading for r in sets] == [True, False, False]
        sets[2].forward("webhook: github push")
        assert wait_for(lambda: triggered[0] == ["webhook: github push"])
        time.sleep(0.3)  # the others had their chance to (wrongly) run it
        assert triggered[1] == [] and triggered[2] == []
    finally:
        for r in sets:
            r.stop()
        for s in stores:
            s.close()


# ------------------------------------------------------ what a run leaves for all


DEPLOYMENT = "name: api\nagent: agt_0123456789abcdef\nimage: busybox:1.36\ntarget_port: 80\n"


def test_a_run_on_one_replica_is_what_the_others_render_and_check_drift_against(
    remote: Remote,
    shared_db: SharedDatabase,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "RENDERED_RECHECK", 0.0)
    remote.commit({"deployments/api.yaml": DEPLOYMENT})
    a = Reconciler(make_config(remote, tmp_path / "a"), shared_db.open_store())
    b = Reconciler(make_config(remote, tmp_path / "b"), shared_db.open_store())
    assert b.rendered() == []
    assert a.reconcile("test").ok
    assert [d.name for d in b.rendered()] == ["api"]
    assert b.rendered()[0].spec_hash == a.rendered()[0].spec_hash
    remote.commit({"deployments/web.yaml": DEPLOYMENT.replace("api", "web")})
    assert a.reconcile("test").ok
    assert sorted(d.name for d in b.rendered()) == ["api", "web"]
    # the agent of both is the one the desired state names, on either replica
    assert "agt_0123456789abcdef" in b.actual_state().agents
    a.store.close()
    b.store.close()


def test_a_mass_prune_approval_given_on_one_replica_is_used_by_one_run_on_another(
    remote: Remote, shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> None:
    remote.commit({"deployments/api.yaml": DEPLOYMENT})
    a = Reconciler(make_config(remote, tmp_path / "a"), shared_db.open_store())
    b = Reconciler(make_config(remote, tmp_path / "b"), shared_db.open_store())
    b.allow_mass_prune_once()  # POST /v1/reconcile {"allow_mass_prune": true} on B
    assert a.store.shared(MASS_PRUNE_KEY) is not None
    assert a.reconcile("test").ok
    assert a.store.shared(MASS_PRUNE_KEY) is None  # used up by A's run
    assert a.store.take_shared(MASS_PRUNE_KEY) is False
    a.store.close()
    b.store.close()


def test_a_command_refused_for_its_bundle_size_is_an_event_not_a_crash(
    remote: Remote,
    shared_db: SharedDatabase,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.server import store as store_module

    monkeypatch.setattr(store_module, "MAX_BUNDLE_BYTES", 100)
    store = shared_db.open_store()
    token = store.create_bootstrap_token()
    created = store.bootstrap_agent(token, "h")
    assert created is not None
    store.close()
    remote.commit(
        {
            "reconcile.yaml": f"namespace: srv\nagents:\n  host1: {created[0]}\n",
            "deployments/site/deployment.yaml": "name: site\nagent: host1\n"
            "build:\n  context: .\ntarget_port: 80\n",
            "deployments/site/Dockerfile": "FROM busybox:1.36\nCOPY . /www\n",
            "deployments/site/big.txt": "x" * 5000,
        }
    )
    r = Reconciler(make_config(remote, tmp_path / "a"), shared_db.open_store())
    r.store.record_report(created[0], {"state": {"agent": created[0]}})
    outcome = r.reconcile("test")
    assert outcome.ok and outcome.commands == []
    refused = [e for e in r.store.events(limit=1000) if e.kind == "command.refused"]
    assert len(refused) == 1 and "more than the" in refused[0].fields["error"]
    assert r.store._query("SELECT count(*) FROM bundle_blobs")[0][0] == 0
    r.store.close()


# -------------------------------------------------------------------------- config


def test_the_shared_database_is_a_file_and_anything_else_is_refused(tmp_path: pathlib.Path) -> None:
    config = ServerConfig.model_validate(
        {"source": "/x", "data_dir": tmp_path, "database": f"sqlite:///{tmp_path}/db"}
    )
    assert config.database_path() == tmp_path / "db"
    plain = ServerConfig.model_validate({"source": "/x", "data_dir": tmp_path})
    assert plain.database_path() == tmp_path / "reconcile.db"
    with pytest.raises(InvalidSpec, match="give a postgresql:// URL, or an SQLite file path"):
        load_server_config(None, {"source": "/x", "database": "mysql://db/reconcile"})
    with pytest.raises(InvalidSpec, match="lease_ttl"):
        load_server_config(None, {"source": "/x", "lease_ttl": 0})


# -------------------------------------------------------------------------- outbox


def test_the_outbox_is_delivered_by_the_leader_only_and_once(shared_db: SharedDatabase) -> None:
    """Both replicas write events (with their outbox rows) into the one outbox; only the
    leader's sender delivers, so no row goes out twice at once; after a hand-over the new
    leader delivers what is left."""
    from reconciler.server.config import NotifyTarget
    from reconciler.server.outbound import Router, Sender, Target
    from tests.server.receiver import Receiver

    receiver = Receiver()
    target = NotifyTarget.model_validate({"url": receiver.url + "/hook", "events": ["*"]})
    [resolved] = Target.from_config([target], {})
    stores = [shared_db.open_store(), shared_db.open_store()]
    leads = [Leadership(s, "reconcile:o", ttl=30) for s in stores]
    senders = []
    sets = []
    for store, lead in zip(stores, leads, strict=True):
        sender = Sender(store, timeout=5.0)
        store.route_events(Router([resolved]), sender.wake)
        sender.add_webhooks([resolved])
        replicas = Replicas(store, lead, SharedNotifier(store), trigger=lambda reason: None)
        # wired as ControlPlane.start wires them
        sender.active = lambda lead=lead: lead.leading
        sender.on_wake = replicas.outbox_written
        replicas.wake_outbox = sender.wake_lanes
        senders.append(sender)
        sets.append(replicas)
    try:
        for replicas in sets:
            replicas.start()
        assert leads[0].leading and not leads[1].leading
        for sender in senders:
            sender.start()
        time.sleep(0.5)  # both lanes have looked once, found nothing, and wait (a minute)
        # Written on the follower only: the leader's sender must hear of them.
        for i in range(3):
            stores[1].record_event("agent.online", {"agent": f"agt_{i}"})
        assert wait_for(lambda: len(receiver.seen) == 3, timeout=20)
        for i in range(3, 5):
            stores[i % 2].record_event("agent.online", {"agent": f"agt_{i}"})
        assert wait_for(lambda: len(receiver.seen) == 5)
        sets[0].stop()  # resigns: the other takes over
        assert leads[1].check()
        for i in range(5, 8):
            stores[0].record_event("agent.online", {"agent": f"agt_{i}"})
        assert wait_for(lambda: len(receiver.seen) == 8, timeout=20)
        time.sleep(0.5)  # a second sender would have sent its copies by now
        agents = sorted(seen.json()["data"]["agent"] for seen in receiver.seen)
        assert agents == [f"agt_{i}" for i in range(8)]
        assert all(row.delivered is not None for row in stores[0].outbox())
    finally:
        for sender in senders:
            sender.stop()
        sets[1].stop()
        receiver.close()
        for s in stores:
            s.close()
