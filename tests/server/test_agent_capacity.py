"""An agent's heartbeat carries two figures of its host: the total memory and how many
networks its Docker daemon can still create.  The control plane keeps them in the actual
state and the plan blocks what cannot fit; an agent from before, which sends neither,
blocks nothing.  The real API in process (FastAPI TestClient), the real store and worker,
and a git remote in tmp_path."""

from __future__ import annotations

from typing import Any

from conftest import ADMIN, Remote, examples_for
from fastapi.testclient import TestClient

from reconciler.model.agentapi import BootstrapResponse
from reconciler.server.app import ControlPlane

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _planned(
    client: TestClient, plane: ControlPlane, remote: Remote, report: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The agent's entry in the actual state and the plan's actions by deployment, after
    one heartbeat carrying ``report``'s figures."""
    token = plane.store.create_bootstrap_token()
    boot = BootstrapResponse.model_validate(
        client.post("/v1/agent/bootstrap", json={"token": token}).json()
    )
    headers = {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}
    body = {**report, "state": {"agent": boot.agent_id}}
    assert client.post("/v1/agent/report", json=body, headers=headers).status_code == 200
    assert plane.worker.wait_idle(60)
    remote.commit(examples_for(boot.agent_id))
    plane.worker.trigger("test: capacity")
    assert plane.worker.wait_idle(60)
    actual = client.get("/v1/actual-state", headers=ADMIN_HEADERS).json()
    plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
    return actual["agents"][boot.agent_id], {a["deployment"]: a for a in plan["actions"]}


def test_reported_total_blocks_what_does_not_fit(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    agent, actions = _planned(client, plane, remote, {"total_memory_mb": 48})
    assert agent["total_memory_mb"] == 48
    api, site = actions["api"], actions["site"]
    assert api["action"] == "blocked"  # memory_mb: 64
    assert api["reason"].startswith("memory_mb 64 is more than the 48 MB of memory agent agt_")
    assert site["action"] == "install"  # memory_mb: 32
    # manifest kinds carry no memory_mb: compose is the source of truth there
    assert actions["blog"]["action"] == "install"


def test_reported_capacity_blocks_the_installs_past_it(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    agent, actions = _planned(client, plane, remote, {"free_networks": 1})
    assert agent["free_networks"] == 1
    first, *rest = (actions[d] for d in sorted(actions))
    assert first["action"] == "install"
    assert rest and {a["action"] for a in rest} == {"blocked"}
    assert all("default-address-pools" in a["reason"] for a in rest)


def test_an_agent_that_sends_no_figures_blocks_nothing(
    client: TestClient, plane: ControlPlane, remote: Remote
) -> None:
    agent, actions = _planned(client, plane, remote, {})
    assert agent["total_memory_mb"] is None and agent["free_networks"] is None
    assert {a["action"] for a in actions.values()} == {"install"}
