"""``reconcile serve backup`` / ``restore`` and upgrades of the store.

The backup is taken from a real ``reconcile serve`` process while webhooks keep arriving;
the restore is checked by a server started on the restored data dir; the upgrade starts
from a store built with the first release's migration only (schema 1) and data in it.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time

import httpx
import pytest
from conftest import Remote
from test_serve_process import Server, _github_push, cli

from reconciler.server.backup import backup_store, restore_store
from reconciler.server.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, SchemaError, Store

ADMIN_HEADERS = {"Authorization": "Bearer admin-token-for-tests"}


class _Flood(threading.Thread):
    """Posts GitHub pushes with fresh delivery ids until stopped; records those answered
    202, in order (each is committed to the store before its answer)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent: list[str] = []
        self.acked: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            delivery = f"flood-{n}"
            self.sent.append(delivery)
            if _github_push(self.url, delivery).status_code == 202:
                self.acked.append(delivery)


def _deliveries(db_file: pathlib.Path) -> set[str]:
    db = sqlite3.connect(db_file)
    try:
        return {r[0] for r in db.execute("SELECT delivery_id FROM deliveries")}
    finally:
        db.close()


def test_online_backup_while_webhooks_arrive_then_restore(
    remote: Remote, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "data"
    server = Server(remote, data_dir)
    flood = _Flood(server.url)
    try:
        flood.start()
        while len(flood.acked) < 20:
            time.sleep(0.01)
        acked_before = list(flood.acked)
        copy = tmp_path / "backups" / "reconcile.db"
        made = cli("serve", "backup", "--data-dir", str(data_dir), "--to", str(copy))
        acked_after = list(flood.acked)
        sent_after = list(flood.sent)
        assert made.returncode == 0, made.stderr
        while len(flood.acked) < len(acked_after) + 5:  # still accepted after the backup
            time.sleep(0.01)
    finally:
        flood.stop.set()
        flood.join(30)
        server.stop()

    # webhooks were answered while the backup ran: it did not stop the server
    assert len(acked_after) > len(acked_before)
    assert f"backup: {copy}" in made.stderr
    assert copy.stat().st_mode & 0o777 == 0o600
    assert not copy.with_name(copy.name + "-wal").exists()  # one self-contained file
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        db.close()
    # One commit's view: every delivery acknowledged before the backup began is in it,
    # nothing that was never sent is, and it lacks the ones that came after.
    copied = _deliveries(copy)
    assert set(acked_before) <= copied <= set(sent_after)
    assert len(copied) < len(flood.acked)

    # The copy is a working store: a server restored from it knows those deliveries.
    restored_dir = tmp_path / "restored"
    done = cli("serve", "restore", "--data-dir", str(restored_dir), "--from", str(copy))
    assert done.returncode == 0, done.stderr
    again = Server(remote, restored_dir)
    try:
        assert _github_push(again.url, acked_before[0]).json()["result"] == "duplicate"
        assert _github_push(again.url, "new-after-restore").status_code == 202
        assert again.stop()
    finally:
        if again.proc.poll() is None:
            again.proc.kill()


@pytest.fixture
def backup_file(tmp_path: pathlib.Path) -> pathlib.Path:
    store = Store.in_dir(tmp_path / "source")
    store.create_deploy_hook("ci")
    store.close()
    return backup_store(tmp_path / "source", tmp_path / "store.backup").path


def _bytes(directory: pathlib.Path) -> dict[str, bytes]:
    return (
        {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}
    )


class TestRestoreRefuses:
    def test_a_file_from_a_newer_schema(
        self, backup_file: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        db = sqlite3.connect(backup_file)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        target = tmp_path / "live"
        Store.in_dir(target).close()
        before = _bytes(target)
        done = cli(
            "serve", "restore", "--data-dir", str(target), "--from", str(backup_file), "--force"
        )
        assert done.returncode == 1
        assert f"schema version {SCHEMA_VERSION + 1}, newer than this release's" in done.stderr
        assert _bytes(target) == before  # nothing replaced, nothing set aside

    def test_a_file_that_is_not_ours(self, tmp_path: pathlib.Path) -> None:
        other = tmp_path / "other.db"
        db = sqlite3.connect(other)
        db.execute("CREATE TABLE t (x)")
        db.execute("PRAGMA user_version = 1")
        db.close()
        text = tmp_path / "notes.txt"
        text.write_text("not a database at all, just some text " * 200)
        for bad in (other, text, tmp_path / "missing.db"):
            with pytest.raises(
                SchemaError, match=r"not a compose-reconciler|not an SQLite|no such"
            ):
                restore_store(bad, tmp_path / "fresh")
        assert not (tmp_path / "fresh").exists()

    def test_an_existing_database_without_force(
        self, backup_file: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        target = tmp_path / "live"
        live = Store.in_dir(target)
        live.create_deploy_hook("live-hook")
        live.close()
        before = _bytes(target)
        done = cli("serve", "restore", "--data-dir", str(target), "--from", str(backup_file))
        assert done.returncode == 1 and "pass --force" in done.stderr
        assert _bytes(target) == before

        forced = restore_store(backup_file, target, force=True)
        assert forced.replaced is not None and forced.replaced.is_file()
        restored = Store.in_dir(target)
        kept = Store(forced.replaced)
        try:
            names = [r[0] for r in restored._query("SELECT name FROM deploy_hooks")]
            assert names == ["ci"]
            assert [r[0] for r in kept._query("SELECT name FROM deploy_hooks")] == ["live-hook"]
        finally:
            restored.close()
            kept.close()

    def test_a_backup_of_the_live_file_onto_itself(self, tmp_path: pathlib.Path) -> None:
        Store.in_dir(tmp_path).close()
        with pytest.raises(SchemaError, match="the live database itself"):
            backup_store(tmp_path, tmp_path / DB_NAME)
        assert not list(tmp_path.glob(".*.tmp"))

    def test_backup_without_a_database(self, tmp_path: pathlib.Path) -> None:
        done = cli(
            "serve", "backup", "--data-dir", str(tmp_path / "none"), "--to", str(tmp_path / "b")
        )
        assert done.returncode == 1 and "no control-plane database" in done.stderr
        assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- upgrades


def _first_release_store(data_dir: pathlib.Path) -> tuple[str, str]:
    """A store as the first release (schema 1) left it: an agent with a known secret, a
    command, a deployment, a delivery and an event.  Returns ``(agent_id, secret)``."""
    data_dir.mkdir(parents=True)
    db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    from reconciler.server.store import hash_secret

    agent, secret = "agt_00112233445566aa", "ras_old-release-secret"
    now = time.time()
    db.execute(
        "INSERT INTO agents (id, secret_hash, hostname, created) VALUES (?, ?, 'old', ?)",
        (agent, hash_secret(secret), now),
    )
    db.execute(
        "INSERT INTO commands (id, agent, deployment, kind, payload, created, deadline) "
        "VALUES ('cmd_1', ?, 'dpl_0011223344556677', 'install', '{}', ?, ?)",
        (agent, now, now + 3600),
    )
    db.execute(
        "INSERT INTO deployments (id, name, agent, updated) "
        "VALUES ('dpl_0011223344556677', 'api', ?, ?)",
        (agent, now),
    )
    db.execute("INSERT INTO deliveries VALUES ('github', 'old-delivery', ?)", (now,))
    db.execute(
        "INSERT INTO events (time, kind, fields) VALUES (?, 'agent.bootstrap', '{}')", (now,)
    )
    db.close()
    return agent, secret


def test_a_first_release_store_is_migrated_when_the_server_starts(
    remote: Remote, tmp_path: pathlib.Path
) -> None:
    assert SCHEMA_VERSION > 1, "this test upgrades from schema 1"
    data_dir = tmp_path / "data"
    agent, secret = _first_release_store(data_dir)
    server = Server(remote, data_dir)
    try:
        headers = {"X-Agent-Id": agent, "X-Agent-Secret": secret}
        report = httpx.post(
            server.url + "/v1/agent/report",
            # a field this server does not know, as an agent of the next release may send:
            # the wire models ignore unknown fields, so neighbouring versions talk
            json={"state": {"agent": agent}, "version": "0.9.0", "from_the_future": [1]},
            headers=headers,
        )
        assert report.status_code == 200, report.text  # the old agent's secret still works
        assert _github_push(server.url, "old-delivery").json()["result"] == "duplicate"
        agents = httpx.get(server.url + "/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert [a["id"] for a in agents] == [agent]
        assert server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    store = Store.in_dir(data_dir)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.command("cmd_1") is not None
        # kept, and marked no longer desired by the first reconcile (the repo is empty)
        rows = store.deployments(desired_only=False)
        assert [(d.name, d.desired) for d in rows] == [("api", False)]
    finally:
        store.close()


def test_a_first_release_backup_is_restored_upgraded(tmp_path: pathlib.Path) -> None:
    agent, secret = _first_release_store(tmp_path / "old")
    old_backup = backup_store(tmp_path / "old", tmp_path / "old.backup")
    assert old_backup.schema_version == 1
    result = restore_store(old_backup.path, tmp_path / "new")
    assert (result.from_version, result.schema_version) == (1, SCHEMA_VERSION)
    store = Store.in_dir(tmp_path / "new")
    try:
        assert store.check_agent(agent, secret)
        assert store.agent(agent) is not None
    finally:
        store.close()
