"""The store's replica half, on one database opened twice (two connections, as two
processes have): leases, signals, bundles, shared values, and the inserts that are their
own check (delivery ids, bootstrap tokens), raced."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from reconciler.server import store as store_module
from reconciler.server.store import BUNDLE_CHUNK, BundleTooLarge, Store
from tests.replicas.conftest import SharedDatabase


def race(n: int, attempt: Callable[[Store], bool], shared_db: SharedDatabase) -> list[bool]:
    """``attempt`` from ``n`` threads at once, each on its own connection."""
    stores = [shared_db.open_store() for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[bool] = [False] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = attempt(stores[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    return results


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -------------------------------------------------------------------------- leases


def test_a_lease_has_one_holder_until_it_runs_out_or_is_given_up(
    sqlite_db: SharedDatabase,
) -> None:
    a, b = sqlite_db.open_store(), sqlite_db.open_store()
    assert a.try_lead("reconcile:x", "A", ttl=10, now=100)
    assert not b.try_lead("reconcile:x", "B", ttl=10, now=105)
    assert a.try_lead("reconcile:x", "A", ttl=10, now=108)  # renewed: runs to 118
    assert not b.try_lead("reconcile:x", "B", ttl=10, now=117)
    assert b.leader("reconcile:x", now=117) == "A"
    # A stops renewing (killed): once its lease has run out, B takes over and A is out.
    assert b.try_lead("reconcile:x", "B", ttl=10, now=118.5)
    assert not a.try_lead("reconcile:x", "A", ttl=10, now=119)
    assert a.leader("reconcile:x", now=119) == "B"
    # another source's lease is another lease
    assert a.try_lead("reconcile:y", "A", ttl=10, now=119)
    # a clean stop hands it over at once
    b.resign("reconcile:x", "B")
    assert a.leader("reconcile:x", now=119) is None
    assert a.try_lead("reconcile:x", "A", ttl=10, now=119)
    b.resign("reconcile:x", "B")  # not B's any more: changes nothing
    assert b.leader("reconcile:x", now=119) == "A"
    a.close()
    b.close()


def test_replicas_racing_for_a_free_lease_elect_exactly_one(shared_db: SharedDatabase) -> None:
    results = race(8, lambda s: s.try_lead("reconcile:race", s.replica_id, ttl=30), shared_db)
    assert results.count(True) == 1


def test_replica_ids_differ_per_store_and_name_the_process(shared_db: SharedDatabase) -> None:
    a, b = shared_db.open_store(), shared_db.open_store()
    assert a.replica_id != b.replica_id
    assert f":{os.getpid()}:" in a.replica_id
    a.close()
    b.close()


# ------------------------------------------------------------------------- signals


def test_a_signal_reaches_the_other_replicas_watch_but_not_its_own(
    shared_db: SharedDatabase,
) -> None:
    a, b = shared_db.open_store(), shared_db.open_store()
    b.signal("command", "agt_before")  # before the watch began: not delivered
    seen_a: list[tuple[str, str]] = []
    seen_b: list[tuple[str, str]] = []
    stop_a = a.watch(lambda c, k: seen_a.append((c, k)))
    stop_b = b.watch(lambda c, k: seen_b.append((c, k)))
    try:
        a.signal("command", "agt_from_a")
        b.signal("command", "agt_from_b")
        b.signal("reconcile", "webhook: github push")
        assert wait_for(lambda: len(seen_a) == 2 and len(seen_b) == 1)
        assert seen_a == [("command", "agt_from_b"), ("reconcile", "webhook: github push")]
        assert seen_b == [("command", "agt_from_a")]
    finally:
        stop_a()
        stop_b()
    b.signal("command", "agt_after")  # after the watch stopped: not delivered
    time.sleep(0.3)
    assert ("command", "agt_after") not in seen_a
    assert ("command", "agt_before") not in seen_a
    a.close()
    b.close()


def test_a_failing_callback_does_not_end_the_watch(shared_db: SharedDatabase) -> None:
    a, b = shared_db.open_store(), shared_db.open_store()
    seen: list[str] = []

    def callback(channel: str, key: str) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("boom")

    stop = a.watch(callback)
    try:
        b.signal("command", "bad")
        b.signal("command", "good")
        assert wait_for(lambda: seen == ["bad", "good"])
    finally:
        stop()
    a.close()
    b.close()


def test_old_signals_are_pruned(sqlite_db: SharedDatabase) -> None:
    a = sqlite_db.open_store()
    a.signal("command", "old", now=1000.0)
    a._signals_pruned = 0.0
    a.signal("command", "new", now=1000.0 + store_module.SIGNAL_RETENTION + 1)
    keys = [r[0] for r in a._query("SELECT key FROM signals")]
    assert keys == ["new"]
    a.close()


# ------------------------------------------------------------------------- bundles


def test_a_bundle_stored_by_one_replica_streams_from_another_in_chunks(
    shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> None:
    a, b = shared_db.open_store(), shared_db.open_store()
    data = os.urandom(2 * BUNDLE_CHUNK + 12345)
    tar = tmp_path / "bundle.tar"
    tar.write_bytes(data)
    digest = a.put_bundle("cmd_1", tar)
    assert b.bundle_size("cmd_1") == len(data)
    chunks = list(b.read_bundle("cmd_1"))
    assert [len(c) for c in chunks] == [BUNDLE_CHUNK, BUNDLE_CHUNK, 12345]
    assert b"".join(chunks) == data
    # the same content for another command is stored once
    assert b.put_bundle("cmd_2", tar) == digest
    assert a._query("SELECT count(*) FROM bundle_blobs")[0][0] == 3
    assert b"".join(a.read_bundle("cmd_2")) == data
    assert b.bundle_size("cmd_3") is None
    assert list(b.read_bundle("cmd_3")) == []
    a.close()
    b.close()


def test_an_exact_multiple_of_the_chunk_and_an_empty_file_round_trip(
    shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> None:
    a = shared_db.open_store()
    for name, data in (("exact", os.urandom(BUNDLE_CHUNK)), ("empty", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        a.put_bundle(f"cmd_{name}", path)
        assert a.bundle_size(f"cmd_{name}") == len(data)
        assert b"".join(a.read_bundle(f"cmd_{name}")) == data
    a.close()


def test_bundles_no_pending_command_needs_are_pruned_after_the_grace(
    shared_db: SharedDatabase, tmp_path: pathlib.Path
) -> None:
    a = shared_db.open_store()
    tar = tmp_path / "b.tar"
    tar.write_bytes(b"x" * 100)
    other = tmp_path / "c.tar"
    other.write_bytes(b"y" * 100)
    for command_id in ("cmd_pending", "cmd_done"):
        a.create_command(
            command_id=command_id,
            agent="agt_1",
            deployment=f"dpl_{command_id}",
            kind="install",
            spec_hash="s",
            payload={"id": command_id, "has_bundle": True},
            created=1000.0,
            deadline=1e12,
        )
        a.put_bundle(command_id, tar if command_id == "cmd_pending" else other, now=1000.0)
    a.finish_command("cmd_done", "agt_1", {"ok": True}, now=1001.0)
    a.put_bundle("cmd_not_yet_created", other, now=1050.0)  # its command is on its way
    assert a.prune_bundles(now=1000.0 + store_module.BUNDLE_GRACE + 1) == 1
    assert a.bundle_size("cmd_done") is None
    assert a.bundle_size("cmd_pending") == 100
    assert a.bundle_size("cmd_not_yet_created") == 100  # within its grace
    assert a.prune_bundles(now=1050.0 + store_module.BUNDLE_GRACE + 1) == 1
    # the blob only the gone commands used is gone too; the pending one's stays
    assert a._query("SELECT count(DISTINCT digest) FROM bundle_blobs")[0][0] == 1
    assert b"".join(a.read_bundle("cmd_pending")) == b"x" * 100
    a.drop_bundle("cmd_pending")  # superseded
    assert a._query("SELECT count(*) FROM bundle_blobs")[0][0] == 0
    a.close()


def test_a_bundle_larger_than_an_agent_takes_is_refused_and_nothing_stored(
    shared_db: SharedDatabase, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_BUNDLE_BYTES", 1000)
    a = shared_db.open_store()
    big = tmp_path / "big.tar"
    big.write_bytes(b"z" * 1001)
    with pytest.raises(BundleTooLarge, match="more than the 0 MiB an agent accepts"):
        a.put_bundle("cmd_big", big)
    assert a.bundle_size("cmd_big") is None
    assert a._query("SELECT count(*) FROM bundle_blobs")[0][0] == 0
    a.close()


# ------------------------------------------------------------------- shared values


def test_a_shared_value_is_versioned_and_a_one_shot_is_taken_once(
    shared_db: SharedDatabase,
) -> None:
    a, b = shared_db.open_store(), shared_db.open_store()
    assert b.shared("rendered") is None and b.shared_version("rendered") is None
    v1 = a.put_shared("rendered", "[1]")
    assert b.shared("rendered") == ("[1]", v1)
    v2 = a.put_shared("rendered", "[2]")
    assert v2 != v1 and b.shared_version("rendered") == v2
    a.close()
    b.close()
    for _ in range(3):
        setter = shared_db.open_store()
        setter.put_shared("mass_prune_once", "1")
        setter.close()
        results = race(6, lambda s: s.take_shared("mass_prune_once"), shared_db)
        assert results.count(True) == 1


# ---------------------------------------------------- the insert is the check


def test_one_delivery_id_is_accepted_by_exactly_one_replica(shared_db: SharedDatabase) -> None:
    for n in range(3):
        results = race(8, lambda s, n=n: s.remember_delivery("github", f"delivery-{n}"), shared_db)
        assert results.count(True) == 1


def test_one_bootstrap_token_registers_exactly_one_agent(shared_db: SharedDatabase) -> None:
    admin = shared_db.open_store()
    token = admin.create_bootstrap_token()
    results = race(8, lambda s: s.bootstrap_agent(token, "h") is not None, shared_db)
    assert results.count(True) == 1
    assert len(admin.agents()) == 1
    admin.close()


def test_the_schema_keeps_the_unique_constraints_the_replicas_rely_on(
    sqlite_db: SharedDatabase,
) -> None:
    """The dedupe above holds because of these keys (not a read-then-write); read from
    SQLite's own schema table (the races above run on both backends)."""
    s = sqlite_db.open_store()
    tables = {
        r[0]: r[1] for r in s._query("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
    }
    assert "PRIMARY KEY (provider, delivery_id)" in tables["deliveries"]
    assert "hash TEXT PRIMARY KEY" in tables["bootstrap_tokens"]
    assert "name TEXT PRIMARY KEY" in tables["leases"]
    s.close()


def test_a_lease_held_by_a_dead_process_of_this_host_gives_way_at_once(
    sqlite_db: SharedDatabase,
) -> None:
    """A restarted server (or a killed replica's neighbour) takes the lease of a process of
    this host that no longer runs without waiting out its TTL; a live one keeps it."""
    a, b = sqlite_db.open_store(), sqlite_db.open_store()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = b.replica_id.replace(f":{os.getpid()}:", f":{child.pid}:")
        assert a.try_lead("reconcile:x", live, ttl=600)
        assert not b.try_lead("reconcile:x", b.replica_id, ttl=600)  # alive: it holds
    finally:
        child.kill()
        child.wait()  # reaped: its pid is gone from /proc
    assert b.try_lead("reconcile:x", b.replica_id, ttl=600)
    assert b.leader("reconcile:x") == b.replica_id
    # Another host's holder is never judged from here: its lease runs out as usual.
    a.resign("reconcile:x", b.replica_id)
    elsewhere = "other-host:" + b.replica_id.split(":", 1)[1].replace(
        f":{os.getpid()}:", f":{child.pid}:"
    )
    assert a.try_lead("reconcile:x", elsewhere, ttl=600)
    assert not b.try_lead("reconcile:x", b.replica_id, ttl=600)
    a.close()
    b.close()
