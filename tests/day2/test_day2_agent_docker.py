"""Day-2 commands through a real ``reconcile serve`` and a real ``reconcile-agent``
(tests/e2e/cluster.py): ``--server URL`` queues an operation command for the agent,
which answers through the agent API.  logs, restart, history, credentials, rollback
(held in the server's plan and status API) and the push that releases the hold.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.agent.docker_helpers import docker_client
from tests.day2.app import deploy, page, view
from tests.e2e.cluster import ADMIN_TOKEN, Cluster, running_cluster, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
def cluster(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    docker_client()  # fails loudly without Docker
    with running_cluster(tmp_path) as c:
        # its own proxy: other tests on this Docker host run theirs
        monkeypatch.setenv("RECONCILE_PROXY_CONTAINER", f"reconciler-proxy-{c.namespace}")
        yield c


def cli(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "--server", cluster.url],
        capture_output=True,
        text=True,
        env={**os.environ, "RECONCILE_ADMIN_TOKEN": ADMIN_TOKEN, "NO_COLOR": "1"},
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_logs_restart_history_rollback_through_the_agent(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_agent(cluster.agent_token(), settle=0.5)
    deploy(cluster, "v1")
    wait_for(lambda: page(cluster, "page v1"), 60, "v1 through the proxy")
    deploy(cluster, "v2")
    wait_for(lambda: page(cluster, "page v2"), 60, "v2 through the proxy")

    assert "day2 app starting v2" in cli(cluster, "logs", "notes", "--tail", "10").stdout
    bad = cli(cluster, "logs", "notes", "--service", "db", check=False)
    assert bad.returncode == 1 and "has no service 'db'" in bad.stderr
    unknown = cli(cluster, "logs", "nope", check=False)
    assert unknown.returncode == 1 and "no deployment 'nope'" in unknown.stderr

    client = docker_client()
    [before] = client.containers.list(
        filters={"label": f"io.reconciler.deployment={view(cluster)['id']}"}
    )
    cli(cluster, "restart", "notes")
    [after] = client.containers.list(
        filters={"label": f"io.reconciler.deployment={view(cluster)['id']}"}
    )
    assert after.id == before.id
    assert after.attrs["State"]["StartedAt"] != before.attrs["State"]["StartedAt"]

    entries = json.loads(cli(cluster, "history", "notes", "-f", "json").stdout)["entries"]
    assert [e["status"] for e in entries] == ["running", "running"]
    assert entries[0]["revision"] and entries[0]["revision"] != entries[1]["revision"]

    values = json.loads(cli(cluster, "credentials", "notes", "-f", "json").stdout)
    assert list(values) == ["ADMIN_TOKEN"]
    audit = cluster.admin("/v1/events?audit=true&limit=1000")["events"]
    assert any(e["kind"] == "credential.revealed" for e in audit)
    # handed out once: the server's database no longer holds the value
    events = json.dumps(cluster.admin("/v1/events?limit=1000"))
    assert values["ADMIN_TOKEN"] not in events

    cli(cluster, "rollback", "notes")
    wait_for(lambda: page(cluster, "page v1"), 30, "v1 again after the rollback")

    def held() -> bool:
        row = view(cluster)
        return row["status"] == "held" and row["plan_action"] == "held"

    wait_for(held, 30, "the server's plan and status to show notes held")
    plan = cluster.admin("/v1/plan")
    assert [a["action"] for a in plan["actions"]] == ["held"]
    assert page(cluster, "page v1")  # the server does not undo the rollback

    deploy(cluster, "v3")  # its file changed in git: the hold is released
    wait_for(lambda: page(cluster, "page v3"), 60, "v3 after the push")
    assert view(cluster)["held"] is None
