"""Two real ``reconcile serve`` processes (replicas) on one PostgreSQL database, each with
its own data dir and port: a token made by the CLI bootstraps one agent once, whichever
replica it reaches; a delivery accepted by one is a no-op replay on the other; the URL's
password never reaches a log or an error; backup/restore refuse clearly on PostgreSQL."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from conftest import Remote

from reconciler.server.store import Store
from tests.conftest import REPO_ROOT
from tests.server.postgres_helpers import fresh_schema
from tests.server.serve_helpers import Serve, signed_push

pytestmark = pytest.mark.postgres


def with_password(url: str, password: str) -> str:
    """``url`` (the test DSN) logging in as a role whose password is ``password``."""
    return url.replace("reconciler:reconciler@", f"reconciler:{password}@", 1)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_schema("serve") as url:
        yield url


def test_two_replicas_share_tokens_deliveries_and_agents(
    remote: Remote, tmp_path: pathlib.Path, database: str
) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text(database + "\n")
    url_file.chmod(0o600)
    a = Serve(remote.url, tmp_path / "a", env={"RECONCILE_DATABASE_FILE": str(url_file)})
    try:
        b = Serve(remote.url, tmp_path / "b", settings={"database": database})
        try:
            made = cli("agent", "token", env={"RECONCILE_DATABASE_FILE": str(url_file)})
            assert made.returncode == 0, made.stderr
            token = made.stdout.split()[0]
            first = httpx.post(
                a.url + "/v1/agent/bootstrap", json={"token": token, "hostname": "h1"}, timeout=10
            )
            assert first.status_code == 201, first.text
            again = httpx.post(
                b.url + "/v1/agent/bootstrap", json={"token": token, "hostname": "h2"}, timeout=10
            )
            assert again.status_code in (401, 403), again.text
            # The agent made on A is known to B: its credentials work there.
            headers = {
                "X-Agent-Id": first.json()["agent_id"],
                "X-Agent-Secret": first.json()["secret"],
            }
            report = httpx.post(
                b.url + "/v1/agent/report",
                json={"state": {"agent": headers["X-Agent-Id"]}},
                headers=headers,
                timeout=10,
            )
            assert report.status_code == 200, report.text

            accepted = signed_push(a.url, "delivery-pg-1")
            assert accepted.status_code == 202, accepted.text
            replay = signed_push(b.url, "delivery-pg-1")
            assert replay.status_code == 200 and replay.json()["result"] == "duplicate"
        finally:
            b.stop()
    finally:
        a.stop()
    logs = a.log.read_text() + b.log.read_text()
    assert "database postgresql://***@127.0.0.1" in logs
    assert database not in logs
    store = Store(database)
    try:
        [agent] = store.agents()
        assert agent.hostname == "h1"
    finally:
        store.close()


def test_a_wrong_password_stops_serve_with_a_clear_redacted_error(
    remote: Remote, tmp_path: pathlib.Path, database: str
) -> None:
    wrong = with_password(database, "N0tTheP4ssword")
    done = cli(
        "serve",
        "--source",
        remote.url,
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        "0",
        env={"RECONCILE_DATABASE": wrong},
    )
    assert done.returncode == 1
    assert "password authentication failed" in done.stderr
    assert "N0tTheP4ssword" not in done.stderr + done.stdout


def test_a_url_that_is_not_postgresql_is_refused_before_anything_starts(
    remote: Remote, tmp_path: pathlib.Path
) -> None:
    done = cli(
        "serve",
        "--source",
        remote.url,
        "--data-dir",
        str(tmp_path / "data"),
        "--database",
        "mysql://root:Hunter2pw@127.0.0.1/x",
        env={},
    )
    assert done.returncode == 2
    assert "database" in done.stderr and "Hunter2pw" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_database_and_database_file_together_are_refused(
    remote: Remote, tmp_path: pathlib.Path, database: str
) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(database)
    done = cli(
        "serve",
        "--source",
        remote.url,
        env={"RECONCILE_DATABASE": database, "RECONCILE_DATABASE_FILE": str(url_file)},
    )
    assert done.returncode == 2
    assert "both RECONCILE_DATABASE and RECONCILE_DATABASE_FILE" in done.stderr


def test_backup_and_restore_refuse_a_postgresql_store(
    tmp_path: pathlib.Path, database: str
) -> None:
    env = {"RECONCILE_DATABASE": database}
    backup = cli("serve", "backup", "--to", str(tmp_path / "b.db"), env=env)
    assert backup.returncode == 2
    assert "pg_dump" in backup.stderr and not (tmp_path / "b.db").exists()
    restore = cli("serve", "restore", "--from", str(tmp_path / "b.db"), env=env)
    assert restore.returncode == 2 and "pg_restore" in restore.stderr
