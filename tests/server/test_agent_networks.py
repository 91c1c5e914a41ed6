"""An agent's heartbeat carries how many networks its Docker daemon can still create;
the control plane keeps it in the actual state and the plan blocks the installs past it.
An agent from before, which sends no figure, blocks nothing.  The real API in process
(FastAPI TestClient), the real store and worker, and a git remote in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def _planned(
    client: TestClient, plane: ControlPlane, remote: Remote, report: dict[str, Any]
) -> dict[str, Any]:
    token = plane.store.create_bootstrap_token()
    boot = BootstrapResponse.model_validate(
        client.post("/v1/agent/bootstrap", json={"token": token}).json()
    )
    headers = {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}
    body = {**report, "state": {"agent": boot.agent_id}}
    assert client.post("/v1/agent/report", json=body, headers=headers).status_code == 200
    assert plane.worker.wait_idle(60)
    remote.commit(examples_for(boot.agent_id))
    plane.worker.trigger("test: networks")
    assert plane.worker.wait_idle(60)
    actual = client.get("/v1/actual-state", headers=ADMIN_HEADERS).json()
    plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
    return {
        "free": actual["agents"][boot.agent_id]["free_networks"],
        "actions": sorted((a["deployment"], a["action"], a["reason"]) for a in plan["actions"]),
    }


def test_reported_capacity_blocks_the_installs_past_it(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    seen = _planned(client, plane, remote, {"free_networks": 1})
    assert seen["free"] == 1
    first, *rest = seen["actions"]
    assert first[1] == "install"
    assert rest and {action for _, action, _ in rest} == {"blocked"}
    assert all("default-address-pools" in reason for _, _, reason in rest)


def test_an_agent_that_sends_no_capacity_blocks_nothing(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    seen = _planned(client, plane, remote, {})
    assert seen["free"] is None
    assert {action for _, action, _ in seen["actions"]} == {"install"}
