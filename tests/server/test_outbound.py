"""Events out: outbound webhooks and commit statuses.

Real: the SQLite store, the HTTP client, a local HTTP receiver / fake forge on 127.0.0.1
(``receiver.py``), the control plane in process with its worker, and a real ``reconcile
serve`` process killed with SIGKILL.  The clock of the sender is injected where a test
checks the backoff, so no test passes or fails on timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from conftest import ADMIN, Remote, examples_for, make_config
from fastapi.testclient import TestClient
from receiver import Receiver

from reconciler.model.errors import InvalidSpec
from reconciler.server.app import ControlPlane, build_control_plane
from reconciler.server.config import (
    CommitStatusSettings,
    NotifyTarget,
    ServerSecrets,
    load_server_config,
)
from reconciler.server.forges import CommitStatuses, push_repository
from reconciler.server.outbound import (
    RETRY_MAX,
    Router,
    Sender,
    Target,
    deployment_events,
    matches,
    public_events,
    render_body,
    retry_delay,
    sign,
)
from reconciler.server.store import Store
from tests.conftest import free_port

SECRET = "hook-secret-for-tests"
WEBHOOK_SECRET = b"inbound-webhook-secret"
SHA = "a" * 40


class Clock:
    """The sender's clock, moved by hand; it starts after the store's (real) writes."""

    def __init__(self) -> None:
        self.now = time.time() + 3600

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _store_to(
    tmp_path: pathlib.Path, url: str, *, events: list[str] | None = None, fmt: str = "json"
) -> tuple[Store, Sender, Clock]:
    store = Store(tmp_path / "data" / "reconcile.db")
    target = NotifyTarget.model_validate(
        {"url": url, "secret_env": "HOOK_SECRET", "events": events or ["*"], "format": fmt}
    )
    [resolved] = Target.from_config([target], {"HOOK_SECRET": SECRET})
    clock = Clock()
    sender = Sender(store, clock=clock, timeout=2.0)
    store.route_events(Router([resolved]), sender.wake)
    sender.add_webhooks([resolved])
    return store, sender, clock


# ----------------------------------------------------------------------- pure units


class TestPatterns:
    @pytest.mark.parametrize(
        ("patterns", "kind", "expected"),
        [
            (["deployment.*"], "deployment.failed", True),
            (["deployment.*"], "agent.online", False),
            (["*"], "reconcile.failed", True),
            (["agent.offline"], "agent.offline", True),
            (["agent.offline"], "agent.online", False),
            (["deployment.*", "agent.*"], "agent.offline", True),
        ],
    )
    def test_wildcards(self, patterns: list[str], kind: str, expected: bool) -> None:
        assert matches(patterns, kind) is expected

    @pytest.mark.parametrize(
        "bad",
        [
            {"url": "http://127.0.0.1:9/x", "events": ["deploy*ment"]},
            {"url": "http://127.0.0.1:9/x", "format": "teams"},
            {"url": "ftp://example.invalid/x"},
            {"url": "http://127.0.0.1:9/x", "secret_env": "NOT-A-NAME"},
        ],
    )
    def test_bad_subscriptions_are_refused_with_the_key(
        self, tmp_path: pathlib.Path, bad: dict[str, Any]
    ) -> None:
        file = tmp_path / "server.yaml"
        file.write_text(json.dumps({"source": str(tmp_path), "notify": [bad]}))
        with pytest.raises(InvalidSpec, match=r"notify\.0\."):
            load_server_config(file, {})

    def test_the_issue_configuration_loads_as_written(self, tmp_path: pathlib.Path) -> None:
        file = tmp_path / "server.yaml"
        file.write_text(
            "source: /srv/repo\n"
            "notify:\n"
            "  - url: http://127.0.0.1:9000/hook\n"
            "    secret_env: HOOK_SECRET\n"
            '    events: ["deployment.*", "agent.*"]\n'
            "    format: json\n"
            "commit_status:\n"
            "  provider: github\n"
            "  api_url: https://api.github.com\n"
            "  token_env: FORGE_TOKEN\n"
            "  context: reconcile\n"
        )
        config = load_server_config(file, {})
        assert config.notify[0].events == ["deployment.*", "agent.*"]
        assert config.commit_status is not None and config.commit_status.provider == "github"

    def test_an_unset_secret_stops_the_server_at_start(
        self, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("HOOK_SECRET", raising=False)
        config = make_config(
            remote,
            tmp_path / "data",
            notify=[{"url": "http://127.0.0.1:9/x", "secret_env": "HOOK_SECRET"}],
        )
        with pytest.raises(InvalidSpec, match="HOOK_SECRET"):
            build_control_plane(config, ServerSecrets())
        monkeypatch.delenv("FORGE_TOKEN", raising=False)
        config = make_config(
            remote,
            tmp_path / "data2",
            commit_status={
                "provider": "gitea",
                "api_url": "http://127.0.0.1:9/api/v1",
                "token_env": "FORGE_TOKEN",
            },
        )
        with pytest.raises(InvalidSpec, match="FORGE_TOKEN"):
            build_control_plane(config, ServerSecrets())

    def test_signature_is_the_hmac_sha256_of_the_raw_body(self) -> None:
        body = b'{"id": "evt_1"}'
        expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
        assert sign(b"k", body) == f"sha256={expected}"
        assert sign(b"other", body) != sign(b"k", body)

    def test_backoff_doubles_up_to_its_cap(self) -> None:
        import random

        rng = random.Random(1)
        delays = [retry_delay(n, rng) for n in range(1, 14)]
        for n, delay in enumerate(delays, start=1):
            base = min(RETRY_MAX, 2 ** (n - 1))
            assert base * 0.9 <= delay <= base * 1.1
        assert max(delays) <= RETRY_MAX * 1.1


class TestEventMapping:
    def test_a_failure_carries_reason_last_lines_and_hint(self) -> None:
        fields = {
            "kind": "update",
            "ok": False,
            "name": "hello",
            "deployment": "dpl_1",
            "agent": "agt_1",
            "message": "up: pull access denied (hint: the image is not available (locally)); "
            "previous release restored",
            "logs": "\n".join(f"line {i}" for i in range(40)),
            "rolled_back": True,
        }
        events = dict(deployment_events(fields))
        failed = events["deployment.failed"]
        assert failed["reason"] == "up: pull access denied; previous release restored"
        assert failed["hint"] == "the image is not available (locally)"
        assert failed["last_lines"][-1] == "line 39" and len(failed["last_lines"]) == 20
        assert failed["deployment"] == "hello" and failed["deployment_id"] == "dpl_1"
        assert "deployment.rolled_back" in events

    def test_successes_name_what_changed(self) -> None:
        ok = {"ok": True, "name": "bot", "source": "git"}
        assert [k for k, _ in deployment_events({**ok, "kind": "install"})] == [
            "deployment.installed"
        ]
        kinds = [
            k
            for k, _ in deployment_events(
                {**ok, "kind": "update", "changes": ["domain", "source_revision"]}
            )
        ]
        assert kinds == [
            "deployment.updated",
            "deployment.domain_changed",
            "deployment.git_redeployed",
        ]
        assert [k for k, _ in deployment_events({**ok, "kind": "uninstall"})] == [
            "deployment.uninstalled"
        ]

    def test_server_events_map_to_the_public_names(self) -> None:
        assert public_events("reconcile.invalid", {"errors": 2})[0][0] == "reconcile.failed"
        assert public_events("command.created", {"kind": "install"})[0][0] == ("deployment.created")
        assert public_events("command.created", {"kind": "update"}) == []
        assert public_events("webhook", {}) == []


class TestFormats:
    data: ClassVar[dict[str, Any]] = {
        "deployment": "a<b>&c",
        "agent": "agt_1",
        "reason": "up failed",
        "hint": "check <it>",
        "last_lines": ["boom"],
    }

    def test_json(self) -> None:
        body = json.loads(render_body("json", "deployment.failed", self.data, "evt_1", 0.0))
        assert body == {
            "id": "evt_1",
            "type": "deployment.failed",
            "time": "1970-01-01T00:00:00Z",
            "data": self.data,
        }

    def test_slack_incoming_webhook_text_is_escaped(self) -> None:
        body = json.loads(render_body("slack", "deployment.failed", self.data, "evt_1", 0.0))
        assert set(body) == {"text"}
        assert "a&lt;b&gt;&amp;c on agt_1: up failed (hint: check &lt;it&gt;)" in body["text"]
        assert "<" not in body["text"] and "```boom```" in body["text"]

    def test_discord_embed_never_mentions(self) -> None:
        body = json.loads(render_body("discord", "deployment.failed", self.data, "evt_1", 0.0))
        [embed] = body["embeds"]
        assert embed["title"] == "deployment.failed"
        assert "a<b>&c on agt_1: up failed" in embed["description"]
        assert embed["footer"] == {"text": "evt_1"} and isinstance(embed["color"], int)
        assert body["allowed_mentions"] == {"parse": []}


# ------------------------------------------------------------------------ delivery


class TestDelivery:
    def test_a_signed_event_arrives_with_its_ids(
        self, tmp_path: pathlib.Path, receiver: Receiver
    ) -> None:
        store, sender, _ = _store_to(tmp_path, receiver.url + "/hook")
        store.record_event("agent.online", {"agent": "agt_1", "hostname": "h1"})
        assert sender.deliver_due("notify:0") == 1
        [seen] = receiver.seen
        assert seen.path == "/hook"
        expected = hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
        assert seen.headers["x-reconcile-signature"] == f"sha256={expected}"
        body = seen.json()
        assert body["type"] == "agent.online" and body["data"]["agent"] == "agt_1"
        assert seen.headers["x-reconcile-event-id"] == body["id"]
        assert seen.headers["x-reconcile-delivery"].startswith("dlv_")
        [row] = store.outbox()
        assert row.delivered is not None and row.attempts == 1
        assert sender.deliver_due("notify:0") == 0 and len(receiver.seen) == 1

    def test_5xx_and_timeouts_are_retried_with_backoff_under_one_delivery_id(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        receiver = Receiver([503, "hold", 502, 200])
        try:
            store, sender, clock = _store_to(tmp_path, receiver.url + "/hook")
            sender._http.timeout = __import__("httpx").Timeout(0.5)  # the held one times out
            store.record_event("agent.offline", {"agent": "agt_1"})
            waits = []
            for _ in range(4):
                assert sender.deliver_due("notify:0") in (0, 1)
                [row] = store.outbox()
                if row.delivered is not None:
                    break
                waits.append(row.next_at - clock.now)
                assert sender.deliver_due("notify:0") == 0  # not due yet: no request
                clock.now = row.next_at
            receiver.release()
            [row] = store.outbox()
            assert row.delivered is not None and row.attempts == 4
            assert receiver.answered == [503, "hold", 502, 200]
            assert len({s.headers["x-reconcile-delivery"] for s in receiver.seen}) == 1
            assert len({s.body for s in receiver.seen}) == 1
            # 1, 2, 4 s (+-10%): each wait twice the one before
            assert [round(w) for w in waits] == [1, 2, 4]
        finally:
            receiver.close()

    def test_a_4xx_is_the_receiver_s_final_answer(self, tmp_path: pathlib.Path) -> None:
        receiver = Receiver([410])
        try:
            store, sender, clock = _store_to(tmp_path, receiver.url + "/hook")
            store.record_event("agent.online", {"agent": "agt_1"})
            sender.deliver_due("notify:0")
            clock.now += 10_000
            assert sender.deliver_due("notify:0") == 0
            [row] = store.outbox()
            assert row.dead is not None and row.last_error == "HTTP 410"
            assert len(receiver.seen) == 1 and store.next_outbox_at("notify:0") is None
        finally:
            receiver.close()

    def test_unsubscribed_events_owe_nothing(self, tmp_path: pathlib.Path) -> None:
        store, _, _ = _store_to(tmp_path, "http://127.0.0.1:9/x", events=["deployment.*"])
        store.record_event("agent.online", {"agent": "agt_1"})
        store.record_event("webhook", {"provider": "github"})
        assert store.outbox() == []
        store.record_event("command.result", {"ok": True, "kind": "install", "name": "x"})
        assert [r.kind for r in store.outbox()] == ["deployment.installed"]

    def test_the_event_and_its_outbox_rows_commit_together(self, tmp_path: pathlib.Path) -> None:
        store, _, _ = _store_to(tmp_path, "http://127.0.0.1:9/x")

        class Broken:
            def wants(self, kind: str) -> bool:
                return True

            def route(self, *args: Any) -> list[tuple[str, str, str]]:
                raise RuntimeError("disk full while writing the outbox")

        store.route_events(Broken(), lambda: None)
        with pytest.raises(RuntimeError):
            store.record_event("agent.online", {"agent": "agt_1"})
        assert store.events() == [] and store.outbox() == []

    def test_a_credential_in_an_event_is_redacted_in_the_body(self, tmp_path: pathlib.Path) -> None:
        store, _, _ = _store_to(tmp_path, "http://127.0.0.1:9/x")
        store.record_event(
            "reconcile.failed", {"error": "git clone https://user:hunter2@example.invalid/r"}
        )
        [row] = store.outbox()
        assert "hunter2" not in row.body


# --------------------------------------------------------------- the control plane


def _plane(
    remote: Remote,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
    **extra: Any,
) -> ControlPlane:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("FORGE_TOKEN", "forge-token")
    config = make_config(
        remote,
        tmp_path / "data",
        notify=[{"url": receiver.url + "/hook", "secret_env": "HOOK_SECRET"}],
        **extra,
    )
    plane = build_control_plane(
        config, ServerSecrets(admin_token=ADMIN, webhook_secret=WEBHOOK_SECRET)
    )
    assert plane.outbox is not None
    plane.outbox.retry_base = 0.01
    return plane


def _agent(client: TestClient, plane: ControlPlane) -> dict[str, str]:
    token = plane.store.create_bootstrap_token()
    boot = client.post("/v1/agent/bootstrap", json={"token": token, "hostname": "h1"}).json()
    headers = {"X-Agent-Id": boot["agent_id"], "X-Agent-Secret": boot["secret"]}
    r = client.post(
        "/v1/agent/report", json={"state": {"agent": boot["agent_id"]}}, headers=headers
    )
    assert r.status_code == 200
    return headers


def _github_push(client: TestClient, sha: str, repo: str = "acme/desired") -> None:
    body = json.dumps(
        {"ref": "refs/heads/main", "after": sha, "repository": {"full_name": repo}}
    ).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    r = client.post(
        "/hooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": f"d-{sha[:8]}",
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 202, r.text


class TestControlPlane:
    def test_a_slow_receiver_never_delays_a_reconcile(
        self, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        receiver = Receiver(["hold"] * 50)
        plane = _plane(remote, tmp_path, monkeypatch, receiver)
        assert plane.outbox is not None
        plane.outbox.start()
        plane.worker.start()
        try:
            with TestClient(plane.app) as client:
                headers = _agent(client, plane)  # agent.online: the receiver holds it
                receiver.wait_for(lambda seen: len(seen) >= 1)
                remote.commit(examples_for(headers["X-Agent-Id"]))
                plane.worker.trigger("api: test")
                assert plane.worker.wait_idle(60)
                # Every command is out while the receiver still holds the first event.
                assert len(plane.store.pending_commands(headers["X-Agent-Id"])) == 5
                assert receiver.answered == ["hold"] and not receiver._released.is_set()
                created = [r for r in plane.store.outbox() if r.kind == "deployment.created"]
                assert len(created) == 5 and all(r.delivered is None for r in created)
        finally:
            receiver.release()
            plane.worker.stop()
            plane.outbox.stop()
            plane.store.close()
            receiver.close()

    def test_results_become_deployment_events_and_the_push_gets_its_status(
        self, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        receiver = Receiver()
        plane = _plane(
            remote,
            tmp_path,
            monkeypatch,
            receiver,
            commit_status={
                "provider": "github",
                "api_url": receiver.url + "/api/v3",
                "token_env": "FORGE_TOKEN",
                "context": "reconcile/prod",
            },
        )
        assert plane.outbox is not None
        plane.outbox.start()
        plane.worker.start()
        try:
            with TestClient(plane.app) as client:
                assert plane.worker.wait_idle(60)
                headers = _agent(client, plane)
                agent = headers["X-Agent-Id"]
                assert plane.worker.wait_idle(60)
                sha = remote.commit(examples_for(agent))
                _github_push(client, sha)
                assert plane.worker.wait_idle(60)
                statuses = f"/api/v3/repos/acme/desired/statuses/{sha}"
                receiver.wait_for(lambda seen: any(s.path == statuses for s in seen))
                commands = plane.store.pending_commands(agent)
                for command in commands:
                    name = command.payload["action"]["deployment"]
                    result = (
                        {
                            "ok": False,
                            "message": "settle: crash loop (hint: see the logs)",
                            "logs": "starting\nboom",
                            "rolled_back": False,
                        }
                        if name == "api"
                        else {"ok": True, "message": "installed"}
                    )
                    r = client.post(
                        f"/v1/agent/commands/{command.id}/result", json=result, headers=headers
                    )
                    assert r.status_code == 200
                seen = receiver.wait_for(
                    lambda seen: (
                        len([s for s in seen if s.path == statuses]) == 2
                        and any(
                            s.path == "/hook" and s.json()["type"] == "deployment.failed"
                            for s in seen
                        )
                    )
                )
        finally:
            plane.worker.stop()
            plane.outbox.stop()
            plane.store.close()
            receiver.close()
        forge = [s for s in seen if s.path == statuses]
        assert [s.json()["state"] for s in forge] == ["pending", "failure"]
        assert forge[1].json() == {
            "state": "failure",
            "description": "failed: api",
            "context": "reconcile/prod",
        }
        assert forge[1].headers["authorization"] == "Bearer forge-token"
        hooks = [s.json() for s in seen if s.path == "/hook"]
        [failed] = [h for h in hooks if h["type"] == "deployment.failed"]
        assert failed["data"]["deployment"] == "api"
        assert failed["data"]["hint"] == "see the logs"
        assert failed["data"]["last_lines"] == ["starting", "boom"]
        kinds = {h["type"] for h in hooks}
        assert {"agent.online", "deployment.created", "deployment.installed"} <= kinds


class TestForges:
    @pytest.mark.parametrize(
        ("provider", "base", "path", "auth", "body"),
        [
            (
                "github",
                "/api/v3",
                f"/api/v3/repos/acme/app/statuses/{SHA}",
                ("authorization", "Bearer tok"),
                {
                    "state": "success",
                    "description": "in sync: nothing to change",
                    "context": "reconcile",
                    "target_url": "https://reconcile.example.invalid/v1/deployments",
                },
            ),
            (
                "gitea",
                "/api/v1",
                f"/api/v1/repos/acme/app/statuses/{SHA}",
                ("authorization", "token tok"),
                {
                    "state": "success",
                    "description": "in sync: nothing to change",
                    "context": "reconcile",
                    "target_url": "https://reconcile.example.invalid/v1/deployments",
                },
            ),
            (
                "gitlab",
                "/api/v4",
                f"/api/v4/projects/acme%2Fapp/statuses/{SHA}",
                ("private-token", "tok"),
                {
                    "state": "success",
                    "name": "reconcile",
                    "description": "in sync: nothing to change",
                    "target_url": "https://reconcile.example.invalid/v1/deployments",
                },
            ),
        ],
    )
    def test_each_forge_gets_its_documented_request(
        self,
        tmp_path: pathlib.Path,
        receiver: Receiver,
        provider: str,
        base: str,
        path: str,
        auth: tuple[str, str],
        body: dict[str, str],
    ) -> None:
        store = Store(tmp_path / "reconcile.db")
        settings = CommitStatusSettings.model_validate(
            {"provider": provider, "api_url": receiver.url + base + "/", "token_env": "T"}
        )
        env = {"T": "tok", "RECONCILE_PUBLIC_URL": "https://reconcile.example.invalid"}
        statuses = CommitStatuses(settings, store, env=env)
        sender = Sender(store)
        sender.add_lane("forge", statuses.prepare)
        statuses.pushed("acme/app", SHA)
        statuses.reconciled(SHA, commands=[], backoff=[], blocked=0, problems=0, ok=True)
        assert sender.deliver_due("forge") == 1
        [seen] = receiver.seen
        assert seen.method == "POST" and seen.path == path
        assert seen.headers[auth[0]] == auth[1]
        assert seen.headers["content-type"] == "application/json"
        assert seen.json() == body
        if provider == "github":
            assert seen.headers["accept"] == "application/vnd.github+json"
            assert seen.headers["x-github-api-version"] == "2022-11-28"
        assert "tok" not in json.dumps([r.body for r in store.outbox()])

    def test_gitlab_nested_groups_and_failed_state(
        self, tmp_path: pathlib.Path, receiver: Receiver
    ) -> None:
        store = Store(tmp_path / "reconcile.db")
        settings = CommitStatusSettings.model_validate(
            {"provider": "gitlab", "api_url": receiver.url + "/api/v4", "token_env": "T"}
        )
        statuses = CommitStatuses(settings, store, env={"T": "tok"})
        sender = Sender(store)
        sender.add_lane("forge", statuses.prepare)
        statuses.pushed("group/sub/app", SHA)
        statuses.reconciled(SHA, commands=[], backoff=[], blocked=0, problems=3, ok=False)
        sender.deliver_due("forge")
        [seen] = receiver.seen
        assert seen.path == f"/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}"
        assert seen.json()["state"] == "failed"
        assert seen.json()["description"] == "repository invalid: 3 errors"

    def test_a_commit_is_judged_once_and_only_when_its_repository_is_known(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = Store(tmp_path / "reconcile.db")
        settings = CommitStatusSettings.model_validate(
            {"provider": "github", "api_url": "http://127.0.0.1:9", "token_env": "T"}
        )
        statuses = CommitStatuses(settings, store, env={"T": "tok"})
        statuses.reconciled(SHA, commands=[], backoff=[], blocked=0, problems=0, ok=True)
        assert store.outbox() == []  # found by polling, no commit_status.repo: no status
        polled = CommitStatuses(
            settings.model_copy(update={"repo": "acme/app"}), store, env={"T": "tok"}
        )
        polled.reconciled(SHA, commands=[], backoff=[], blocked=1, problems=0, ok=True)
        polled.reconciled(SHA, commands=[], backoff=[], blocked=0, problems=0, ok=True)
        [row] = store.outbox()
        assert json.loads(row.body)["json"]["state"] == "error"  # blocked, then judged once
        # A retry of the same commit opens its verdict again.
        polled.reconciled(SHA, commands=["cmd_x"], backoff=[], blocked=0, problems=0, ok=True)
        assert [json.loads(r.body)["json"]["state"] for r in store.outbox()] == [
            "pending",
            "error",
        ]
        assert store.commit_status(SHA) is not None
        assert store.commit_status(SHA).commands == ["cmd_x"]  # type: ignore[union-attr]

    def test_the_repository_comes_from_the_push_payload(self) -> None:
        assert push_repository("github", {"repository": {"full_name": "o/r"}}) == "o/r"
        assert push_repository("gitea", {"repository": {"full_name": "o/r"}}) == "o/r"
        gitlab = {"project": {"path_with_namespace": "g/s/r"}}
        assert push_repository("gitlab", gitlab) == "g/s/r"
        assert push_repository("github", {"repository": "o/r"}) is None


# ------------------------------------------------------------------------- restart


def test_undelivered_events_survive_a_kill_9_of_the_server(tmp_path: pathlib.Path) -> None:
    """The receiver is down while the server records an event; the server is killed with
    SIGKILL; after a restart, with the receiver up, that very event arrives."""
    from serve_helpers import Serve

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "reconcile.yaml").write_text("namespace: [not, a, name]\n")  # invalid
    port = free_port()
    settings = {
        "notify": [
            {
                "url": f"http://127.0.0.1:{port}/hook",
                "secret_env": "HOOK_SECRET",
                "events": ["reconcile.*"],
            }
        ]
    }
    data = tmp_path / "data"
    import os

    os.environ["HOOK_SECRET"] = SECRET
    try:
        server = Serve(str(repo), data, settings)
        try:
            store = Store.in_dir(data)

            def owed() -> list[Any]:
                return [r for r in store.outbox() if r.attempts >= 1 and r.delivered is None]

            _wait(lambda: owed(), "a failed first attempt")
            first = owed()[0]
            store.close()
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
        finally:
            server.kill()
        receiver = Receiver(port=port)
        try:
            again = Serve(str(repo), data, settings)
            try:
                seen = receiver.wait_for(
                    lambda seen: any(s.json()["id"] == first.event_id for s in seen), 60
                )
            finally:
                again.stop()
        finally:
            receiver.close()
    finally:
        del os.environ["HOOK_SECRET"]
    [arrived] = [s for s in seen if s.json()["id"] == first.event_id]
    assert arrived.headers["x-reconcile-delivery"] == first.delivery_id
    assert arrived.json()["type"] == "reconcile.failed"
    expected = hmac.new(SECRET.encode(), arrived.body, hashlib.sha256).hexdigest()
    assert arrived.headers["x-reconcile-signature"] == f"sha256={expected}"


def _wait(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class TestAnnounced:
    def test_an_agent_gone_quiet_is_announced_offline_once(self, tmp_path: pathlib.Path) -> None:
        store, _, _ = _store_to(tmp_path, "http://127.0.0.1:9/x", events=["agent.*"])
        token = store.create_bootstrap_token()
        created = store.bootstrap_agent(token, "h1")
        assert created is not None
        agent = created[0]
        store.record_report(agent, {"state": {"agent": agent}}, now=100.0)
        assert store.announce_offline(cutoff=50.0, now=130.0) == []  # seen since
        assert store.announce_offline(cutoff=110.0, now=130.0) == [agent]
        assert store.announce_offline(cutoff=120.0, now=140.0) == []  # once
        store.record_report(agent, {"state": {"agent": agent}}, now=200.0)  # back
        assert store.announce_offline(cutoff=210.0, now=230.0) == [agent]
        assert [r.kind for r in reversed(store.outbox())] == ["agent.offline"] * 2
        assert json.loads(store.outbox()[0].body)["data"]["agent"] == agent

    def test_a_blocked_deployment_is_announced_once(
        self, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        receiver = Receiver()
        plane = _plane(remote, tmp_path, monkeypatch, receiver)
        try:
            remote.commit(examples_for("agt_00000000000000ff"))  # never connected
            for _ in range(2):
                plane.reconciler.reconcile("api: test")
            blocked = [r for r in plane.store.outbox() if r.kind == "deployment.blocked"]
            assert len(blocked) == 5  # the five examples, once each
            data = json.loads(blocked[0].body)["data"]
            assert data["agent"] == "agt_00000000000000ff" and "offline" in data["reason"]
        finally:
            plane.store.close()
            receiver.close()
