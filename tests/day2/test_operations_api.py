"""The control plane's side of day-2 operations (``POST/GET /v1/operations``) against the
real FastAPI app, store and worker; the agent is played by HTTP calls on the agent API
(the real agent runs them in test_day2_agent_docker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reconciler.model.agentapi import BootstrapResponse, CommandBatch
from reconciler.server.app import ControlPlane
from tests.server.conftest import ADMIN, Remote, examples_for

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    with TestClient(plane.app) as c:
        yield c


def _agent(client: TestClient, plane: ControlPlane) -> tuple[str, dict[str, str]]:
    token = plane.store.create_bootstrap_token()
    boot = BootstrapResponse.model_validate(
        client.post("/v1/agent/bootstrap", json={"token": token}).json()
    )
    headers = {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}
    r = client.post("/v1/agent/report", json={"state": {"agent": boot.agent_id}}, headers=headers)
    assert r.status_code == 200
    return boot.agent_id, headers


@pytest.fixture
def agent(client: TestClient, plane: ControlPlane, remote: Remote) -> dict[str, str]:
    agent_id, headers = _agent(client, plane)
    remote.commit(examples_for(agent_id))
    plane.worker.trigger("test")
    assert plane.worker.wait_idle(60)
    return headers


def _operation_command(client: TestClient, headers: dict[str, str], command_id: str) -> dict:  # type: ignore[type-arg]
    batch = CommandBatch.model_validate(client.get("/v1/agent/commands", headers=headers).json())
    [command] = [c for c in batch.commands if c.id == command_id]
    assert command.kind == "operation" and command.operation is not None
    return command.model_dump(mode="json")


def test_an_operation_goes_to_the_agent_and_its_answer_comes_back(
    client: TestClient, agent: dict[str, str], plane: ControlPlane
) -> None:
    r = client.post(
        "/v1/operations", json={"op": "logs", "deployment": "hello", "tail": 5}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    command_id = r.json()["command"]
    command = _operation_command(client, agent, command_id)
    assert command["operation"]["op"] == "logs" and command["operation"]["tail"] == 5
    # the agent gets the deployment by id (two namespaces may share a name)
    assert command["operation"]["deployment"] == command["action"]["id"]
    pending = client.get(f"/v1/operations/{command_id}", headers=AUTH).json()
    assert pending["state"] == "pending" and pending["result"] is None

    answer = {"ok": True, "payload": {"text": "line 1\n", "until": "2026-12-04T10:00:00Z"}}
    r = client.post(
        f"/v1/agent/commands/{command_id}/result",
        json={
            "ok": True,
            "message": "logs hello: done",
            "payload": {"ok": True, "payload": answer["payload"]},
        },
        headers=agent,
    )
    assert r.status_code == 200
    done = client.get(f"/v1/operations/{command_id}", params={"wait": 5}, headers=AUTH).json()
    assert done["state"] == "done"
    assert done["result"] == {"ok": True, "payload": answer["payload"]}
    # an operation never becomes the deployment's last command (its install stays)
    view = client.get("/v1/deployments/hello", headers=AUTH).json()
    assert view["last_command"]["kind"] != "operation"


def test_a_credentials_reveal_is_audited_and_not_kept(
    client: TestClient, agent: dict[str, str], plane: ControlPlane
) -> None:
    r = client.post(
        "/v1/operations", json={"op": "credentials", "deployment": "hello"}, headers=AUTH
    )
    command_id = r.json()["command"]
    audit = client.get("/v1/events", params={"audit": "true"}, headers=AUTH).json()["events"]
    assert [e["fields"]["deployment"] for e in audit if e["kind"] == "credential.revealed"] == [
        "hello"
    ]
    secret = {"values": {"ADMIN_TOKEN": "s3cr3t-value"}}
    client.post(
        f"/v1/agent/commands/{command_id}/result",
        json={"ok": True, "payload": {"ok": True, "payload": secret}},
        headers=agent,
    )
    first = client.get(f"/v1/operations/{command_id}", headers=AUTH).json()
    assert first["result"]["payload"] == secret
    second = client.get(f"/v1/operations/{command_id}", headers=AUTH).json()
    assert second["result"] is None  # handed out once
    row = plane.store.command(command_id)
    assert row is not None and "s3cr3t" not in str(row.result)


def test_bad_requests_change_nothing(
    client: TestClient, agent: dict[str, str], plane: ControlPlane
) -> None:
    before = len(plane.store.commands(limit=1000))
    r = client.post("/v1/operations", json={"op": "logs", "deployment": "nope"}, headers=AUTH)
    assert r.status_code == 404 and "no deployment 'nope' (known: " in r.json()["error"]
    r = client.post(
        "/v1/operations", json={"op": "format-disk", "deployment": "hello"}, headers=AUTH
    )
    assert r.status_code == 400 and r.json()["error"].startswith("invalid request: op")
    r = client.post(
        "/v1/operations", json={"op": "logs", "deployment": "hello", "tail": -1}, headers=AUTH
    )
    assert r.status_code == 400
    r = client.post("/v1/operations", json={"op": "logs", "deployment": "hello"})
    assert r.status_code == 401
    assert client.get("/v1/operations/cmd_nope", headers=AUTH).status_code == 404
    assert len(plane.store.commands(limit=1000)) == before
