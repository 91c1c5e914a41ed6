"""The admin commands on a store named by ``--database`` (or ``RECONCILE_DATABASE(_FILE)``),
through the installed ``reconcile`` console script: tokens, hooks and agent removal act on
the real PostgreSQL store (password from PGPASSWORD, never in a flag or an error), an
SQLite file shared by replicas is found the same way, and backup/restore refuse a
PostgreSQL store with the tools to use instead, changing nothing."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reconciler.server.store import Store
from tests.server.postgres_helpers import fresh_schema

#: The console script the package installs, beside this interpreter (the venv's).
RECONCILE = pathlib.Path(sys.executable).with_name("reconcile")
PASSWORD = "reconciler"  # the test role's (tests/server/postgres_helpers.py DEFAULT_DSN)


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert RECONCILE.is_file(), f"no console script at {RECONCILE}: pip install -e ."
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECONCILE_DATABASE", "RECONCILE_DATA_DIR", "PG"))
    }
    return subprocess.run(
        [str(RECONCILE), *args],
        env={**clean, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def without_password(url: str) -> str:
    """The URL as the flag should carry it: the password goes in PGPASSWORD."""
    assert f":{PASSWORD}@" in url
    return url.replace(f":{PASSWORD}@", "@", 1)


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_schema("admin") as url:
        Store(url).close()  # the server made it
        yield url


@pytest.mark.postgres
def test_token_hook_and_agent_remove_act_on_the_postgresql_store_named_by_flag(
    database: str, tmp_path: pathlib.Path
) -> None:
    flag = without_password(database)
    env = {"PGPASSWORD": PASSWORD}
    # An SQLite store in the default data dir, which --database must not fall back to.
    Store.in_dir(tmp_path / "reconcile-data").close()

    token = cli("agent", "token", "--database", flag, env=env, cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    hook = cli("hook", "create", "deploy-prod", "--database", flag, env=env)
    assert hook.returncode == 0, hook.stderr
    secret = hook.stdout.split()[0]

    store = Store(database)
    try:
        registered = store.bootstrap_agent(token.stdout.strip(), "h1")
        assert registered is not None, "the token is not in the PostgreSQL store"
        agent, agent_secret = registered
        assert store.check_deploy_hook(secret) == "deploy-prod"
        kinds = [e.kind for e in store.events(limit=100)]
        assert "agent.token" in kinds and "deploy_hook.created" in kinds
    finally:
        store.close()
    local = Store.in_dir(tmp_path / "reconcile-data")
    try:
        assert local.events(limit=100) == []  # nothing went to the SQLite file
    finally:
        local.close()

    removed = cli("agent", "remove", agent, "--database", flag, env=env)
    assert removed.returncode == 0, removed.stderr
    store = Store(database)
    try:
        assert store.agent(agent) is None and not store.check_agent(agent, agent_secret)
    finally:
        store.close()
    again = cli("agent", "remove", agent, "--database", database)  # password in the URL
    assert again.returncode == 1 and f"no agent {agent}" in again.stderr
    assert PASSWORD + "@" not in again.stderr


@pytest.mark.postgres
def test_the_variables_name_the_store_and_the_flag_wins_over_them(
    database: str, tmp_path: pathlib.Path
) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text(database + "\n")
    url_file.chmod(0o600)
    by_file = cli("agent", "token", env={"RECONCILE_DATABASE_FILE": str(url_file)})
    assert by_file.returncode == 0, by_file.stderr
    by_env = cli("hook", "create", "ci-hook", env={"RECONCILE_DATABASE": database})
    assert by_env.returncode == 0, by_env.stderr
    with fresh_schema("other") as other:
        Store(other).close()
        flag_wins = cli("agent", "token", "--database", other, env={"RECONCILE_DATABASE": database})
        assert flag_wins.returncode == 0, flag_wins.stderr
        theirs = Store(other)
        try:
            assert theirs.consume_bootstrap_token(flag_wins.stdout.strip())
        finally:
            theirs.close()
    store = Store(database)
    try:
        assert store.consume_bootstrap_token(by_file.stdout.strip())
        assert store.check_deploy_hook(by_env.stdout.split()[0]) == "ci-hook"
        assert not store.consume_bootstrap_token(flag_wins.stdout.strip())
    finally:
        store.close()
    both = cli(
        "agent",
        "token",
        env={"RECONCILE_DATABASE": database, "RECONCILE_DATABASE_FILE": str(url_file)},
    )
    assert both.returncode == 2 and "both RECONCILE_DATABASE and RECONCILE_DATABASE_FILE" in (
        both.stderr
    )


@pytest.mark.postgres
def test_backup_and_restore_refuse_a_postgresql_database_flag_and_point_to_pg_dump(
    database: str, tmp_path: pathlib.Path
) -> None:
    backup = cli("serve", "backup", "--to", str(tmp_path / "b.db"), "--database", database)
    assert backup.returncode == 2, backup.stderr
    assert "pg_dump --format=custom" in backup.stderr
    assert f":{PASSWORD}@" not in backup.stderr
    assert not (tmp_path / "b.db").exists()
    # a real backup file, so the refusal is about the store, not the file
    Store.in_dir(tmp_path / "d").close()
    assert (
        cli(
            "serve", "backup", "--to", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "d")
        ).returncode
        == 0
    )
    restore = cli("serve", "restore", "--from", str(tmp_path / "b.db"), "--database", database)
    assert restore.returncode == 2 and "pg_restore --clean" in restore.stderr
    store = Store(database)  # untouched: still the empty store it was
    try:
        assert store.agents() == [] and store.events(limit=10) == []
    finally:
        store.close()


def test_an_sqlite_file_shared_by_replicas_is_named_the_same_way(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / "srv" / "shared.db"
    shared.parent.mkdir()
    Store(shared).close()
    token = cli("agent", "token", "--database", str(shared))
    assert token.returncode == 0, token.stderr
    hook = cli("hook", "create", "ci-hook", "--database", f"sqlite:///{shared}")
    assert hook.returncode == 0, hook.stderr

    backup = cli("serve", "backup", "--to", str(tmp_path / "copy.db"), "--database", str(shared))
    assert backup.returncode == 0, backup.stderr
    copy = Store(tmp_path / "copy.db")
    try:
        assert copy.check_deploy_hook(hook.stdout.split()[0]) == "ci-hook"
    finally:
        copy.close()

    # the backup comes back over the shared file (the token consumed since is unconsumed again)
    live = Store(shared)
    try:
        assert live.consume_bootstrap_token(token.stdout.strip())
    finally:
        live.close()
    restore = cli(
        "serve",
        "restore",
        "--from",
        str(tmp_path / "copy.db"),
        "--database",
        str(shared),
        "--force",
    )
    assert restore.returncode == 0, restore.stderr
    assert "the previous database is kept as" in restore.stderr
    back = Store(shared)
    try:
        assert back.consume_bootstrap_token(token.stdout.strip())
    finally:
        back.close()
    assert sorted(p.name for p in shared.parent.iterdir() if "before-restore" in p.name)


def test_a_database_that_names_no_store_changes_nothing(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "typo.db"
    done = cli("agent", "token", "--database", str(missing))
    assert done.returncode == 2 and f"no control-plane database at {missing}" in done.stderr
    assert not missing.exists()
    other = cli("hook", "create", "ci-hook", "--database", "mysql://root:Hunter2pw@127.0.0.1/x")
    assert other.returncode == 2 and "postgresql://" in other.stderr
    assert "Hunter2pw" not in other.stderr
    Store.in_dir(tmp_path).close()
    for extra in (["--data-dir", str(tmp_path)], ["--server", "http://127.0.0.1:1"]):
        both = cli("agent", "token", "--database", str(tmp_path / "reconcile.db"), *extra)
        assert both.returncode == 2 and "give one of" in both.stderr
    mixed = cli(
        "serve", "backup", "--to", str(tmp_path / "b.db"), "--data-dir", str(tmp_path),
        "--database", str(tmp_path / "reconcile.db"),
    )  # fmt: skip
    assert mixed.returncode == 2 and not (tmp_path / "b.db").exists()
