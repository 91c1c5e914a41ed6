"""An agent's heartbeat carries its host's total memory; the control plane keeps it in
the actual state and the plan blocks what cannot fit.  An agent from before, which sends
no total, blocks nothing.  The real API in process (FastAPI TestClient), the real store
and worker, and a git remote in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import ADMIN, Remote, examples_for
from fastapi.testclient import TestClient

from reconciler.model.agentapi import BootstrapResponse
from reconciler.server.app import ControlPlane

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    with TestClient(plane.app) as c:
        yield c


def _planned(client: TestClient, plane: ControlPlane, remote: Remote, report: dict) -> dict:  # type: ignore[type-arg]
    token = plane.store.create_bootstrap_token()
    boot = BootstrapResponse.model_validate(
        client.post("/v1/agent/bootstrap", json={"token": token}).json()
    )
    headers = {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}
    body = {**report, "state": {"agent": boot.agent_id}}
    assert client.post("/v1/agent/report", json=body, headers=headers).status_code == 200
    assert plane.worker.wait_idle(60)
    remote.commit(examples_for(boot.agent_id))
    plane.worker.trigger("test: memory")
    assert plane.worker.wait_idle(60)
    actual = client.get("/v1/actual-state", headers=ADMIN_HEADERS).json()
    plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
    return {
        "memory": actual["agents"][boot.agent_id]["total_memory_mb"],
        "actions": {a["deployment"]: a for a in plan["actions"]},
    }


def test_reported_total_blocks_what_does_not_fit(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    seen = _planned(client, plane, remote, {"total_memory_mb": 48})
    assert seen["memory"] == 48
    api, site = seen["actions"]["api"], seen["actions"]["site"]
    assert api["action"] == "blocked"  # memory_mb: 64
    assert api["reason"].startswith("memory_mb 64 is more than the 48 MB of memory agent agt_")
    assert site["action"] == "install"  # memory_mb: 32
    # manifest kinds carry no memory_mb: compose is the source of truth there
    assert seen["actions"]["blog"]["action"] == "install"


def test_an_agent_that_sends_no_total_blocks_nothing(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    seen = _planned(client, plane, remote, {})
    assert seen["memory"] is None
    assert {a["action"] for a in seen["actions"].values()} == {"install"}
