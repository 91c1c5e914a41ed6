"""Issue 13, sections 1 and 4: what a real ``reconcile serve`` refuses, keeps and shows
under attack (malformed requests, file modes, readiness after a failed run)."""

from __future__ import annotations

import json
import pathlib
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from reconciler.model.ids import deployment_id
from reconciler.model.redact import redact
from reconciler.server.app import build_control_plane
from reconciler.server.config import ServerSecrets
from reconciler.server.fields import (
    MAX_DEPLOYMENTS_PER_AGENT,
    MAX_LIST,
    MAX_LOGS,
    MAX_MESSAGE,
    MAX_TEXT,
)
from reconciler.server.store import DB_NAME, Store
from tests.server.conftest import ADMIN, Remote, make_config
from tests.server.serve_helpers import ADMIN_HEADERS, Serve, serve_env, signed_push


@pytest.fixture
def serve(remote: Remote, tmp_path: pathlib.Path) -> Iterator[Serve]:
    s = Serve(remote.url, tmp_path / "data")
    yield s
    s.kill()


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestMalformedRequests:
    def test_a_signed_webhook_nested_deeper_than_the_parser_is_a_400(self, serve: Serve) -> None:
        body = b'{"ref": "refs/heads/main", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        r = signed_push(serve.url, "deep-1", body)
        assert r.status_code == 400, r.text
        assert r.json()["result"] == "malformed"
        assert r.json()["detail"] == "JSON body is nested too deeply"
        # Nothing lost: the server answers the next, normal delivery.
        assert signed_push(serve.url, "deep-2").json()["result"] == "accepted"

    def test_events_after_a_huge_integer_is_a_400(self, serve: Serve) -> None:
        for params in ({"after": "9" * 40}, {"after": "-1"}, {"limit": str(2**64)}):
            r = httpx.get(serve.url + "/v1/events", params=params, headers=ADMIN_HEADERS)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"].startswith("invalid request: query.")
        r = httpx.get(serve.url + "/v1/events", params={"after": 2**63 - 1}, headers=ADMIN_HEADERS)
        assert r.status_code == 200 and r.json()["events"] == []


class TestFileModes:
    def test_a_fresh_data_dir_is_private(self, serve: Serve) -> None:
        assert _mode(serve.data_dir) == 0o700
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            assert _mode(serve.data_dir / name) == 0o600, name

    def test_wide_modes_are_repaired_at_start(self, remote: Remote, tmp_path: pathlib.Path) -> None:
        data = tmp_path / "data"
        Store.in_dir(data).close()  # an existing database, as an older version left it
        data.chmod(0o755)
        (data / DB_NAME).chmod(0o644)
        s = Serve(remote.url, data)
        try:
            assert _mode(data) == 0o700
            for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
                assert _mode(data / name) == 0o600, name
        finally:
            s.kill()


def test_readyz_reports_a_reconcile_that_raised(
    remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that raises (not a typed error: a bug, MemoryError) is reported as failed,
    not as ``last_reconcile: null``; the next good run clears it."""
    import reconciler.server.worker as worker_module

    plane = build_control_plane(
        make_config(remote, tmp_path / "data"), ServerSecrets(admin_token=ADMIN)
    )
    real_plan = worker_module.plan

    def broken(*args: object, **kwargs: object) -> object:
        raise MemoryError("planner ran out of memory")

    monkeypatch.setattr(worker_module, "plan", broken)
    plane.worker.start()
    try:
        assert plane.worker.wait_idle(60)
        client = TestClient(plane.app)
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["last_reconcile"] == {
            "ok": False,
            "revision": None,
            "error": "MemoryError: planner ran out of memory",
        }
        kinds = [(e.kind, e.fields.get("error")) for e in plane.store.events(limit=100)]
        assert ("reconcile.failed", "MemoryError: planner ran out of memory") in kinds

        monkeypatch.setattr(worker_module, "plan", real_plan)
        plane.worker.trigger("test")
        assert plane.worker.wait_idle(60)
        again = client.get("/readyz").json()["last_reconcile"]
        assert again["ok"] is True and again["error"] is None
    finally:
        plane.worker.stop()
        plane.store.close()


API = """\
name: api
agent: host1
image: caddy:2
target_port: 80
"""


def _repo_for(agent: str) -> dict[str, str]:
    return {
        "reconcile.yaml": f"namespace: srv\nagents:\n  host1: {agent}\n",
        "deployments/api.yaml": API,
    }


def _commands(url: str, agent: dict[str, str]) -> list[dict[str, Any]]:
    for _ in range(3):
        r = httpx.get(url + "/v1/agent/commands", params={"wait": 20}, headers=agent, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["commands"]:
            return list(r.json()["commands"])
    raise AssertionError("no command for the agent")


class TestAgentFieldCaps:
    def test_a_15_mb_result_message_is_cut_with_a_marker(
        self, serve: Serve, remote: Remote
    ) -> None:
        agent = serve.register_agent()
        remote.commit(_repo_for(agent["X-Agent-Id"]))
        assert signed_push(serve.url, "caps-1").status_code == 202
        command = _commands(serve.url, agent)[0]
        message = "x" * (15 * 1024 * 1024)
        done = httpx.post(
            f"{serve.url}/v1/agent/commands/{command['id']}/result",
            json={"ok": False, "message": message, "logs": "line\n" * 100_000},
            headers=agent,
            timeout=60,
        )
        assert done.json() == {"accepted": True, "duplicate": False}
        listed = httpx.get(serve.url + "/v1/deployments", headers=ADMIN_HEADERS, timeout=30)
        assert len(listed.content) < 128 * 1024, len(listed.content)
        result = listed.json()["deployments"][0]["last_command"]["result"]
        assert MAX_MESSAGE - 8 < len(result["message"]) <= MAX_MESSAGE
        assert result["message"].startswith("xxxx")
        kept = len(result["message"]) - len(result["message"].lstrip("x"))
        assert result["message"].endswith(
            f"… [cut by the server: {len(message) - kept} of {len(message)} characters dropped]"
        )
        assert MAX_LOGS - 8 < len(result["logs"]) <= MAX_LOGS and result["logs"].startswith(
            "line\n"
        )
        events = httpx.get(serve.url + "/v1/events", headers=ADMIN_HEADERS).json()["events"]
        shown = [e for e in events if e["kind"] == "command.result"]
        assert shown[0]["fields"]["message"] == result["message"]

    def test_report_fields_are_capped_and_a_report_naming_too_many_is_refused(
        self, serve: Serve
    ) -> None:
        agent = serve.register_agent()
        me = agent["X-Agent-Id"]
        app = {
            "id": "dpl_0123456789abcdef",
            "name": "n" * 100_000,
            "namespace": "srv",
            "spec_hash": "a" * 64,
            "containers": [{"service": f"s{i}"} for i in range(5000)],
        }
        state = {"agent": me, "deployments": {app["id"]: app}}
        big = {"state": state, "hostname": "h" * 100_000, "running": ["c"] * 10_000}
        assert httpx.post(serve.url + "/v1/agent/report", json=big, headers=agent).is_success
        listed = httpx.get(serve.url + "/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert len(listed[0]["hostname"]) <= MAX_TEXT
        assert listed[0]["deployments"] == 1
        assert len(listed[0]["running"]) == MAX_LIST
        seen = httpx.get(serve.url + "/v1/actual-state", headers=ADMIN_HEADERS).json()
        kept = seen["agents"][me]["deployments"][app["id"]]
        assert len(kept["name"]) <= MAX_TEXT and kept["name"].endswith("characters dropped]")
        assert len(kept["containers"]) == MAX_LIST

        many = {
            f"dpl_{i:016x}": {**app, "id": f"dpl_{i:016x}", "name": "x", "containers": []}
            for i in range(MAX_DEPLOYMENTS_PER_AGENT + 1)
        }
        refused = httpx.post(
            serve.url + "/v1/agent/report",
            json={"state": {"agent": me, "deployments": many}},
            headers=agent,
        )
        assert refused.status_code == 413
        assert "at most 2000 per agent" in refused.json()["error"]
        # Nothing lost: the last good report stands.
        listed = httpx.get(serve.url + "/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert listed[0]["deployments"] == 1


class TestAuditTrail:
    FORGED = 10_500

    def test_forged_webhooks_flush_no_audit_event(self, serve: Serve) -> None:
        agent = serve.register_agent()
        made = httpx.post(
            serve.url + "/v1/deploy-hooks", json={"name": "ci-main"}, headers=ADMIN_HEADERS
        )
        assert made.status_code == 201
        body = b'{"ref": "refs/heads/main"}'
        forged = {
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
            "Content-Type": "application/json",
        }
        with httpx.Client(base_url=serve.url, timeout=30) as client:
            for _ in range(self.FORGED):
                r = client.post("/hooks/github", content=body, headers=forged)
                assert r.status_code == 401, r.text

        metrics = httpx.get(serve.url + "/metrics").text
        counted = _metric(
            metrics, 'reconcile_webhook_deliveries_total{provider="github",result="unauthorized"}'
        )
        suppressed = _metric(
            metrics, 'reconcile_webhook_events_suppressed_total{provider="github"}'
        )
        assert counted == self.FORGED
        recorded = [
            e
            for e in _all_events(serve.url)
            if e["kind"] == "webhook" and e["fields"]["result"] == "unauthorized"
        ]
        # Every refusal is counted; only a trickle per source address reaches the log.
        assert len(recorded) + suppressed == self.FORGED
        assert len(recorded) < 100
        assert recorded[0]["fields"]["source"] == "127.0.0.1"
        assert any(e["fields"].get("suppressed") for e in recorded[1:]) or len(recorded) <= 10

        # A reconcile prunes the history: the audit trail is all there.
        runs = httpx.get(serve.url + "/readyz").json()["reconciles"]
        assert httpx.post(serve.url + "/v1/reconcile", headers=ADMIN_HEADERS).status_code == 202
        for _ in range(600):
            if httpx.get(serve.url + "/readyz").json()["reconciles"] > runs:
                break
            threading.Event().wait(0.1)
        audit = httpx.get(
            serve.url + "/v1/events", params={"audit": "true"}, headers=ADMIN_HEADERS
        ).json()["events"]
        kinds = [e["kind"] for e in audit]
        assert kinds[:3] == ["agent.bootstrap", "agent.online", "deploy_hook.created"]
        assert audit[0]["fields"]["agent"] == agent["X-Agent-Id"]


def _metric(text: str, series: str) -> int:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return int(float(line.split()[-1]))
    return 0


def _all_events(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = httpx.get(
            url + "/v1/events", params={"after": after, "limit": 1000}, headers=ADMIN_HEADERS
        ).json()
        out += page["events"]
        if not page["events"]:
            return out
        after = page["last"]


def test_audit_events_have_their_own_retention(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reconciler.server.store as store_module

    monkeypatch.setattr(store_module, "EVENT_RETENTION", 50)
    monkeypatch.setattr(store_module, "AUDIT_RETENTION", 5)
    store = Store.in_dir(tmp_path)
    try:
        for i in range(7):
            store.record_event("agent.bootstrap", {"n": i})
        for i in range(120):
            store.record_event("webhook", {"n": i})
        store.record_event("deploy_hook.created", {"n": 7})
        store.prune_history()
        audit = store.events(limit=1000, audit=True)
        noise = store.events(limit=1000, audit=False)
        assert [e.fields["n"] for e in audit] == [3, 4, 5, 6, 7]
        assert [e.fields["n"] for e in noise] == list(range(70, 120))
        assert len(store.events(limit=1000)) == 55
    finally:
        store.close()


TOKEN = "s3cr3t-token-in-url"


class TestCredentialsInUrls:
    @pytest.mark.parametrize(
        "url",
        [
            f"https://deploy:{TOKEN}@127.0.0.1:badport/desired.git",  # malformed: a bad port
            f"https://{TOKEN}@127.0.0.1:1/desired.git",  # a token as the user name
        ],
    )
    def test_a_source_url_token_is_nowhere(self, tmp_path: pathlib.Path, url: str) -> None:
        s = Serve(url, tmp_path / "data")
        try:
            for _ in range(600):
                ready = httpx.get(s.url + "/readyz").json()
                if ready["last_reconcile"] is not None:
                    break
                threading.Event().wait(0.1)
            assert ready["last_reconcile"]["ok"] is False
            assert "***@127.0.0.1" in ready["last_reconcile"]["error"]
            events = httpx.get(s.url + "/v1/events", headers=ADMIN_HEADERS).text
            assert "reconcile.failed" in events
            seen = {"readyz": json.dumps(ready), "events": events}
        finally:
            s.stop()
        seen["log"] = s.log.read_text()
        seen["database"] = (s.data_dir / DB_NAME).read_bytes().decode("latin-1")
        for where, text in seen.items():
            assert TOKEN not in text, where
        assert "reconcile serve: https://***@127.0.0.1" in seen["log"]

    def test_validate_does_not_print_the_git_url_line_s_token(self, tmp_path: pathlib.Path) -> None:
        (tmp_path / "deployments").mkdir()
        (tmp_path / "deployments" / "bot.yaml").write_text(
            "name: bot\nagent: local\n"
            f"git_url: https://user:{TOKEN}@github.com:badport/x/y.git\ngit_ref: main\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "validate", str(tmp_path)],
            env=serve_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "git-url-credentials" in done.stdout + done.stderr
        assert "https://***@github.com:badport/x/y.git" in done.stdout + done.stderr
        assert TOKEN not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "git URL 'https://u:p@h:bad/x' is malformed",
            "git URL 'https://***@h:bad/x' is malformed",
        ),
        ("https://ghp_abc@github.com/x", "https://***@github.com/x"),
        ("https://u:pa/ss@h/x", "https://***@h/x"),
        ("ssh://git@host/x", "ssh://git@host/x"),
        ("ssh://git:pw@host/x", "ssh://***@host/x"),
        ("file:///srv/desired.git", "file:///srv/desired.git"),
        ("see https://example.com/a then mail a@b", "see https://example.com/a then mail a@b"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def _app(name: str) -> dict[str, Any]:
    return {
        "id": deployment_id("srv", name),
        "name": name,
        "namespace": "srv",
        "spec_hash": "0" * 64,
    }


def test_one_agent_s_report_does_not_block_prunes_on_another(serve: Serve, remote: Remote) -> None:
    a, b = serve.register_agent(), serve.register_agent()
    a_id, b_id = a["X-Agent-Id"], b["X-Agent-Id"]
    web = API.replace("name: api", "name: web").replace("host1", "host2")
    remote.commit(
        {
            "reconcile.yaml": f"namespace: srv\nagents:\n  host1: {a_id}\n  host2: {b_id}\n",
            "deployments/api.yaml": API,
            "deployments/web.yaml": web,
        }
    )
    reports = {
        a_id: (a, ["api", "gone"]),
        # B reports five deployments of this namespace that nobody wants.
        b_id: (b, ["web", *(f"stray{i}" for i in range(5))]),
    }
    for agent_id, (headers, names) in reports.items():
        state = {"agent": agent_id, "deployments": {_app(n)["id"]: _app(n) for n in names}}
        r = httpx.post(serve.url + "/v1/agent/report", json={"state": state}, headers=headers)
        assert r.status_code == 200
    assert signed_push(serve.url, "prune-scope").status_code == 202
    for _ in range(600):
        planned = httpx.get(serve.url + "/v1/plan", headers=ADMIN_HEADERS)
        if planned.status_code == 200 and len(planned.json()["actions"]) == 8:
            break
        threading.Event().wait(0.1)
    actions = {(x["deployment"], x["agent"]): x for x in planned.json()["actions"]}
    assert actions[("gone", a_id)]["action"] == "uninstall"
    for i in range(5):
        stray = actions[(f"stray{i}", b_id)]
        assert stray["action"] == "blocked"
        assert f"5 of 6 running deployments of namespace 'srv' on agent {b_id}" in stray["reason"]
