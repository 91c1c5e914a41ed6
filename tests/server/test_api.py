"""The HTTP API in process (FastAPI TestClient): agent protocol, admin/status, ops."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import ADMIN, Remote, examples_for
from fastapi.testclient import TestClient

from reconciler.model.agentapi import BootstrapResponse, CommandBatch
from reconciler.model.state import ActualState
from reconciler.server.app import ControlPlane

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _agent(client: TestClient, plane: ControlPlane, *, report: bool = True) -> dict[str, str]:
    token = plane.store.create_bootstrap_token()
    answer = client.post("/v1/agent/bootstrap", json={"token": token, "hostname": "h1"})
    assert answer.status_code == 201
    boot = BootstrapResponse.model_validate(answer.json())
    headers = {"X-Agent-Id": boot.agent_id, "X-Agent-Secret": boot.secret}
    if report:
        r = client.post(
            "/v1/agent/report", json={"state": {"agent": boot.agent_id}}, headers=headers
        )
        assert r.status_code == 200
        assert plane.worker.wait_idle(60)
    return headers


def _deploy_examples(plane: ControlPlane, remote: Remote, agent_id: str) -> None:
    remote.commit(examples_for(agent_id))
    plane.worker.trigger("api: test")
    assert plane.worker.wait_idle(60)


class TestBootstrap:
    def test_token_gives_an_agent_once(self, client: TestClient, plane: ControlPlane) -> None:
        token = plane.store.create_bootstrap_token()
        first = client.post("/v1/agent/bootstrap", json={"token": token})
        assert first.status_code == 201
        body = BootstrapResponse.model_validate(first.json())
        assert body.heartbeat_seconds == 10.0 and body.agent_id.startswith("agt_")
        again = client.post("/v1/agent/bootstrap", json={"token": token})
        assert again.status_code == 401 and "error" in again.json()

    @pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"hostname": "x"}'])
    def test_malformed_bodies_are_400_with_an_error(self, client: TestClient, body: bytes) -> None:
        r = client.post(
            "/v1/agent/bootstrap", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid request")


class TestAgentAuth:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"X-Agent-Id": "agt_0000000000000000", "X-Agent-Secret": "nope"}, {"X-Agent-Id": "x"}],
    )
    def test_missing_or_wrong_credentials_are_401(
        self, client: TestClient, plane: ControlPlane, headers: dict[str, str]
    ) -> None:
        real = _agent(client, plane, report=False)
        for method, path, body in (
            ("GET", "/v1/agent/commands", None),
            ("POST", "/v1/agent/report", {"state": {"agent": "x"}}),
            ("POST", "/v1/agent/commands/cmd_1/result", {"ok": True}),
            ("GET", "/v1/agent/commands/cmd_1/bundle", None),
        ):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, path
            assert "error" in r.json()
        wrong = {"X-Agent-Id": real["X-Agent-Id"], "X-Agent-Secret": real["X-Agent-Secret"] + "x"}
        assert client.get("/v1/agent/commands", headers=wrong).status_code == 401


class TestLongPoll:
    def test_returns_empty_after_the_wait(self, client: TestClient, plane: ControlPlane) -> None:
        headers = _agent(client, plane)
        r = client.get("/v1/agent/commands", params={"wait": 0.2}, headers=headers)
        assert r.status_code == 200
        assert CommandBatch.model_validate(r.json()).commands == []

    def test_wakes_when_a_command_is_created(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        answer: dict[str, Any] = {}

        def poll() -> None:
            started = time.monotonic()
            r = client.get("/v1/agent/commands", params={"wait": 50}, headers=headers)
            answer["seconds"] = time.monotonic() - started
            answer["batch"] = CommandBatch.model_validate(r.json())

        thread = threading.Thread(target=poll)
        thread.start()
        assert _until(lambda: headers["X-Agent-Id"] in plane.notifier.waiting_agents())
        _deploy_examples(plane, remote, headers["X-Agent-Id"])
        thread.join(60)
        assert not thread.is_alive()
        assert len(answer["batch"].commands) == 5
        assert answer["seconds"] < 40  # woken, not timed out (the wait was 50 s)

    def test_every_unfinished_command_comes_again_until_its_result(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        _deploy_examples(plane, remote, headers["X-Agent-Id"])
        first = CommandBatch.model_validate(
            client.get("/v1/agent/commands", headers=headers).json()
        )
        again = CommandBatch.model_validate(
            client.get("/v1/agent/commands", headers=headers).json()
        )
        assert [c.id for c in first.commands] == [c.id for c in again.commands]
        done = first.commands[0].id
        client.post(f"/v1/agent/commands/{done}/result", json={"ok": True}, headers=headers)
        left = CommandBatch.model_validate(client.get("/v1/agent/commands", headers=headers).json())
        assert done not in {c.id for c in left.commands} and len(left.commands) == 4


class TestResultsAndBundles:
    def test_result_is_idempotent_on_the_command_id(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        _deploy_examples(plane, remote, headers["X-Agent-Id"])
        [cmd] = [
            c
            for c in plane.store.pending_commands(headers["X-Agent-Id"])
            if c.payload["action"]["deployment"] == "api"
        ]
        url = f"/v1/agent/commands/{cmd.id}/result"
        ok = {"ok": True, "message": "installed", "url": "http://api.localhost:18080"}
        assert client.post(url, json=ok, headers=headers).json() == {
            "accepted": True,
            "duplicate": False,
        }
        bad = {"ok": False, "message": "late duplicate"}
        assert client.post(url, json=bad, headers=headers).json()["duplicate"] is True
        view = client.get("/v1/deployments/api", headers=ADMIN_HEADERS).json()
        assert view["last_command"]["state"] == "done"
        assert view["last_command"]["result"]["message"] == "installed"
        assert view["url"] == "http://api.localhost:18080"
        # Another agent cannot post results for it.
        other = _agent(client, plane)
        assert client.post(url, json=ok, headers=other).status_code == 404

    def test_bundle_download(self, client: TestClient, plane: ControlPlane, remote: Remote) -> None:
        headers = _agent(client, plane)
        _deploy_examples(plane, remote, headers["X-Agent-Id"])
        by_name = {
            c.payload["action"]["deployment"]: c
            for c in plane.store.pending_commands(headers["X-Agent-Id"])
        }
        r = client.get(f"/v1/agent/commands/{by_name['site'].id}/bundle", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            names = tar.getnames()
        assert "deployments/site/Dockerfile" in names
        none = client.get(f"/v1/agent/commands/{by_name['api'].id}/bundle", headers=headers)
        assert none.status_code == 404


class TestReports:
    def test_offline_after_three_missed_heartbeats_blocks(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        plane.store.record_report(agent, {"state": {"agent": agent}}, now=time.time() - 31)
        _deploy_examples(plane, remote, agent)
        assert plane.store.pending_commands(agent) == []
        agents = client.get("/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert agents[0]["online"] is False and "missed 3 heartbeats" in agents[0]["reason"]
        # It comes back: the report triggers a reconcile, and the installs are issued.
        client.post("/v1/agent/report", json={"state": {"agent": agent}}, headers=headers)
        assert plane.worker.wait_idle(60)
        assert len(plane.store.pending_commands(agent)) == 5

    def test_drift_in_a_report_triggers_a_repair(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        _deploy_examples(plane, remote, agent)
        apps = _install_all(client, plane, headers)
        state = {"agent": agent, "deployments": apps}
        client.post("/v1/agent/report", json={"state": state}, headers=headers)
        assert plane.worker.wait_idle(60)
        runs = plane.worker.runs
        # In sync: another heartbeat triggers nothing.
        client.post("/v1/agent/report", json={"state": state}, headers=headers)
        assert plane.worker.wait_idle(60) and plane.worker.runs == runs
        # api's container exited: drift -> reconcile -> repair command.
        api_id = next(i for i, a in apps.items() if a["name"] == "api")
        apps[api_id]["containers"] = [
            {"service": apps[api_id]["services"][0], "status": "exited", "exit_code": 1}
        ]
        client.post("/v1/agent/report", json={"state": state}, headers=headers)
        assert plane.worker.wait_idle(60) and plane.worker.runs == runs + 1
        [repair] = plane.store.pending_commands(agent)
        assert repair.kind == "repair" and repair.deployment == api_id
        assert "exited" in repair.payload["action"]["reason"]

    def test_status_shows_the_urls_the_agent_reports(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        _deploy_examples(plane, remote, agent)
        apps = _install_all(client, plane, headers)
        api_id = next(i for i, a in apps.items() if a["name"] == "api")
        onion = "a" * 56 + ".onion"
        apps[api_id]["onion_address"] = onion
        apps[api_id]["urls"] = ["http://api.localhost:18080", f"http://{onion}"]
        state = {"agent": agent, "deployments": apps}
        client.post("/v1/agent/report", json={"state": state}, headers=headers)
        view = client.get("/v1/deployments/api", headers=ADMIN_HEADERS).json()
        assert view["urls"] == ["http://api.localhost:18080", f"http://{onion}"]
        assert view["onion_address"] == onion
        blog = client.get("/v1/deployments/blog", headers=ADMIN_HEADERS).json()
        assert blog["onion_address"] is None
        assert blog["urls"] == ([blog["url"]] if blog["url"] else [])


def _install_all(
    client: TestClient, plane: ControlPlane, headers: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Play the agent: every pending command succeeds; returns the apps to report."""
    apps: dict[str, dict[str, Any]] = {}
    for c in plane.store.pending_commands(headers["X-Agent-Id"]):
        client.post(f"/v1/agent/commands/{c.id}/result", json={"ok": True}, headers=headers)
        services = c.payload["deployment"]["services"]
        apps[c.deployment] = {
            "id": c.deployment,
            "name": c.payload["action"]["deployment"],
            "namespace": "srv",
            "spec_hash": c.spec_hash,
            "services": services,
            "containers": [{"service": s, "status": "running"} for s in services],
        }
    return apps


class TestMassPrune:
    def test_refused_until_one_run_is_allowed(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        _deploy_examples(plane, remote, agent)
        apps = _install_all(client, plane, headers)
        client.post(
            "/v1/agent/report",
            json={"state": {"agent": agent, "deployments": apps}},
            headers=headers,
        )
        assert plane.worker.wait_idle(60)
        remote.commit({f: None for f in examples_for(agent) if f.startswith("deployments/")})
        plane.worker.trigger("api: test")
        assert plane.worker.wait_idle(60)
        plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
        assert plan["summary"]["blocked"] == 5 and "mass prune" in plan["actions"][0]["reason"]
        assert plane.store.pending_commands(agent) == []
        r = client.post("/v1/reconcile", json={"allow_mass_prune": True}, headers=ADMIN_HEADERS)
        assert r.status_code == 202
        assert _until(lambda: len(plane.store.pending_commands(agent)) == 5)
        assert {c.kind for c in plane.store.pending_commands(agent)} == {"uninstall"}
        # The approval was for one run: the next plan is guarded again.
        plane.worker.trigger("api: again")
        assert plane.worker.wait_idle(60)
        plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
        assert plan["summary"]["blocked"] == 5


class TestAdmin:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/deployments"),
            ("GET", "/v1/deployments/api"),
            ("GET", "/v1/plan"),
            ("GET", "/v1/actual-state"),
            ("GET", "/v1/events"),
            ("GET", "/v1/agents"),
            ("POST", "/v1/reconcile"),
            ("POST", "/v1/agent-tokens"),
            ("POST", "/v1/deploy-hooks"),
        ],
    )
    def test_needs_the_bearer_token(self, client: TestClient, method: str, path: str) -> None:
        assert client.request(method, path).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.request(method, path, headers=wrong).status_code == 401

    def test_disabled_without_a_configured_token(
        self, plane: ControlPlane, remote: Remote, tmp_path: Any
    ) -> None:
        from conftest import make_config

        from reconciler.server.app import build_control_plane
        from reconciler.server.config import ServerSecrets

        other = build_control_plane(make_config(remote, tmp_path / "d2"), ServerSecrets())
        with TestClient(other.app) as c:
            r = c.get("/v1/deployments", headers={"Authorization": "Bearer "})
        assert r.status_code == 401 and "RECONCILE_ADMIN_TOKEN" in r.json()["error"]
        other.store.close()

    def test_status_endpoints(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        _deploy_examples(plane, remote, agent)
        deployments = client.get("/v1/deployments", headers=ADMIN_HEADERS).json()
        names = [d["name"] for d in deployments["deployments"]]
        assert names == ["api", "blog", "hello", "site", "status"]
        api = client.get("/v1/deployments/api", headers=ADMIN_HEADERS).json()
        assert api["agent"] == agent and api["agent_online"] is True
        assert api["status"] == "not installed" and api["plan_action"] == "install"
        assert api["last_command"]["state"] == "pending"
        by_id = client.get(f"/v1/deployments/{api['id']}", headers=ADMIN_HEADERS).json()
        assert by_id["name"] == "api"
        assert client.get("/v1/deployments/nope", headers=ADMIN_HEADERS).status_code == 404

        plan = client.get("/v1/plan", headers=ADMIN_HEADERS)
        assert plan.json()["summary"]["install"] == 5 and plan.json()["format_version"] == 1

        actual = ActualState.model_validate_json(
            client.get("/v1/actual-state", headers=ADMIN_HEADERS).content
        )
        assert actual.agents[agent].online

        events = client.get("/v1/events", params={"limit": 1000}, headers=ADMIN_HEADERS).json()
        kinds = [e["kind"] for e in events["events"]]
        assert "agent.bootstrap" in kinds and kinds.count("command.created") == 5
        later = client.get("/v1/events", params={"after": events["last"]}, headers=ADMIN_HEADERS)
        assert later.json()["events"] == []

    def test_trigger_tokens_and_hooks(self, client: TestClient, plane: ControlPlane) -> None:
        runs = plane.worker.runs
        assert client.post("/v1/reconcile", headers=ADMIN_HEADERS).status_code == 202
        assert _until(lambda: plane.worker.runs > runs)
        token = client.post("/v1/agent-tokens", headers=ADMIN_HEADERS).json()["token"]
        assert client.post("/v1/agent/bootstrap", json={"token": token}).status_code == 201
        hook = client.post("/v1/deploy-hooks", json={"name": "ci-main"}, headers=ADMIN_HEADERS)
        assert hook.status_code == 201
        assert hook.json()["path"] == f"/hooks/deploy/{hook.json()['token']}"
        assert plane.store.check_deploy_hook(hook.json()["token"]) == "ci-main"
        bad = client.post("/v1/deploy-hooks", json={"name": "Bad Name"}, headers=ADMIN_HEADERS)
        assert bad.status_code == 400


class TestAgentRemoval:
    def test_removing_an_agent_revokes_it_and_cancels_its_commands(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = _agent(client, plane)
        agent = headers["X-Agent-Id"]
        _deploy_examples(plane, remote, agent)
        assert len(plane.store.pending_commands(agent)) == 5
        assert client.delete(f"/v1/agents/{agent}").status_code == 401  # admin only
        gone = client.delete(f"/v1/agents/{agent}", headers=ADMIN_HEADERS)
        assert gone.status_code == 200 and gone.json() == {"removed": agent}
        assert plane.store.pending_commands(agent) == []
        assert client.get("/v1/agent/commands", headers=headers).status_code == 401
        listed = client.get("/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert agent not in {a["id"] for a in listed}
        assert plane.worker.wait_idle(60)  # the removal triggered a reconcile
        plan = client.get("/v1/plan", headers=ADMIN_HEADERS).json()
        assert {a["action"] for a in plan["actions"]} == {"blocked"}
        again = client.delete(f"/v1/agents/{agent}", headers=ADMIN_HEADERS)
        assert again.status_code == 404 and "error" in again.json()


class TestOps:
    def test_healthz_readyz_metrics(self, client: TestClient, plane: ControlPlane) -> None:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        _agent(client, plane)
        assert plane.worker.wait_idle()  # runs are counted when they finish
        text = client.get("/metrics").text
        for name in (
            "reconcile_duration_seconds_bucket",
            'reconcile_runs_total{result="ok",trigger="startup"}',
            'reconcile_runs_total{result="ok",trigger="agent"}',
            "reconcile_agents_online 1.0",
            "reconcile_webhook_deliveries_total",
            "reconcile_actions_total",
        ):
            assert name in text, name

    def test_readyz_is_503_when_the_worker_is_down(self, plane: ControlPlane) -> None:
        plane.worker.stop()
        with TestClient(plane.app) as c:
            r = c.get("/readyz")
        assert r.status_code == 503 and "worker" in r.json()["error"]
        plane.store.close()
        with TestClient(plane.app) as c:
            r = c.get("/readyz")
        assert r.status_code == 503 and "store" in r.json()["error"]


def _until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class TestWebhooksWired:
    def test_deploy_hook_triggers_a_reconcile_and_replays_are_noops(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        token = plane.store.create_deploy_hook("ci-main")
        runs = plane.worker.runs
        r = client.post(f"/hooks/deploy/{token}")
        assert r.status_code == 202
        assert _until(lambda: plane.worker.runs > runs)
        assert client.post("/hooks/deploy/wrong-token").status_code == 401
        assert 'reconcile_webhook_deliveries_total{provider="deploy"' in client.get("/metrics").text
        assert any(e.kind == "webhook" for e in plane.store.events(limit=1000))

    def test_github_delivery_is_deduplicated_in_the_store(
        self, remote: Remote, tmp_path: Any
    ) -> None:
        import hashlib
        import hmac
        import json

        from conftest import make_config

        from reconciler.server.app import build_control_plane
        from reconciler.server.config import ServerSecrets

        other = build_control_plane(
            make_config(remote, tmp_path / "d3"), ServerSecrets(webhook_secret=b"s3cret")
        )
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
        sig = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "delivery-1",
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        }
        with TestClient(other.app) as c:
            assert c.post("/hooks/github", content=body, headers=headers).status_code == 202
            assert c.post("/hooks/github", content=body, headers=headers).status_code == 200
        assert not other.store.remember_delivery("github", "delivery-1")
        assert other.worker.busy  # queued (the worker was not started here)
        other.store.close()
