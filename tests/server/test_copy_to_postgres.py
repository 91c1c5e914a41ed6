"""``reconcile serve copy-to-postgres``: a real SQLite store with a bit of everything,
copied by the CLI into a fresh PostgreSQL schema, then read back through the Store on
PostgreSQL: the same answers, agents' secrets still valid, tokens still once-only, and new
ids after the copied ones.  A second copy into the now non-empty store changes nothing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.server.store import Store
from tests.conftest import REPO_ROOT
from tests.server.postgres_helpers import fresh_schema

pytestmark = pytest.mark.postgres


class Router:
    def wants(self, kind: str) -> bool:
        return kind.startswith("agent.")

    def route(
        self, kind: str, fields: dict[str, Any], event_id: str, now: float
    ) -> list[tuple[str, str, str]]:
        return [("hook", kind, json.dumps(fields))]


def fill(store: Store) -> dict[str, Any]:
    store.route_events(Router(), lambda: None)
    made = store.bootstrap_agent(store.create_bootstrap_token(now=100.0), "h1", now=101.0)
    assert made is not None
    agent, secret = made
    unused = store.create_bootstrap_token()
    store.record_report(agent, {"state": {"x": 1}}, version="0.1.0", now=102.0)
    store.remember_delivery("github", "d-1", now=103.0)
    store.create_command(
        command_id="cmd_1",
        agent=agent,
        deployment="dpl_1",
        kind="install",
        spec_hash="h",
        payload={"id": "cmd_1"},
        created=104.0,
        deadline=1e12,
    )
    store.finish_command("cmd_1", agent, {"ok": True, "message": "done"}, now=105.0)
    store.save_plan(
        {"actions": [{"id": "dpl_1", "action": "install", "reason": "new"}]},
        revision="abc",
        desired=[("dpl_1", "api", agent, "h", "http://api.localhost")],
        now=106.0,
    )
    for n in range(30):
        store.record_event("agent.online" if n % 3 == 0 else "reconcile.ok", {"n": n})
    store.remember_push("f" * 40, "org/repo", now=107.0)
    return {"agent": agent, "secret": secret, "unused": unused}


def snapshot(store: Store) -> dict[str, Any]:
    return {
        "agents": store.agents(),
        "commands": store.commands(limit=100),
        "deployments": store.deployments(desired_only=False),
        "plan": store.last_plan(),
        "events": store.events(limit=1000),
        "outbox": store.outbox(limit=100),
        "status": store.commit_status("f" * 40),
    }


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_schema("copy") as fresh:
        yield fresh


def test_a_sqlite_store_moves_to_postgresql_whole(tmp_path: pathlib.Path, url: str) -> None:
    data = tmp_path / "data"
    source = Store.in_dir(data)
    made = fill(source)
    before = snapshot(source)
    source.close()

    done = cli(
        "serve", "copy-to-postgres", "--data-dir", str(data), env={"RECONCILE_DATABASE": url}
    )
    assert done.returncode == 0, done.stderr
    assert "copied" in done.stderr and "postgresql://***@" in done.stderr
    assert "reconciler:reconciler@" not in done.stderr

    target = Store(url)
    try:
        assert snapshot(target) == before
        assert target.check_agent(made["agent"], made["secret"])
        assert not target.remember_delivery("github", "d-1")  # a replay after the move
        assert target.consume_bootstrap_token(made["unused"])
        assert not target.consume_bootstrap_token(made["unused"])
        newest = max(e.id for e in before["events"])
        assert target.record_event("reconcile.ok", {"after": "copy"}) > newest
    finally:
        target.close()

    again = cli(
        "serve", "copy-to-postgres", "--data-dir", str(data), env={"RECONCILE_DATABASE": url}
    )
    assert again.returncode == 1
    assert "already has rows" in again.stderr
    target = Store(url)
    try:
        assert len(target.events(limit=1000)) == len(before["events"]) + 1
    finally:
        target.close()


def test_no_source_database_and_no_target_are_refused(tmp_path: pathlib.Path, url: str) -> None:
    missing = cli(
        "serve",
        "copy-to-postgres",
        "--data-dir",
        str(tmp_path / "nothing"),
        env={"RECONCILE_DATABASE": url},
    )
    assert missing.returncode == 1 and "no control-plane database" in missing.stderr
    no_target = cli(
        "serve",
        "copy-to-postgres",
        "--data-dir",
        str(tmp_path),
        env={"RECONCILE_DATABASE": "", "RECONCILE_DATABASE_FILE": ""},
    )
    assert no_target.returncode == 2 and "RECONCILE_DATABASE" in no_target.stderr
