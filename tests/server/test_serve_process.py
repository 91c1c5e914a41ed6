"""``reconcile serve`` as a real process (uvicorn on a free 127.0.0.1 port) with a local
bare git repository as its source; then a restart on the same data dir keeps agents,
commands, results, delivery ids, events and the last plan."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import ADMIN, REPO_ROOT, Remote, examples_for

from reconciler.server.store import Store
from tests.conftest import free_port

WEBHOOK_SECRET = "process-test-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        PYTHONPATH=str(REPO_ROOT),
        RECONCILE_ADMIN_TOKEN=ADMIN,
        RECONCILE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Server:
    def __init__(self, remote: Remote, data_dir: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "serve",
                    "--source",
                    remote.url,
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(data_dir),
                    "--poll-interval",
                    "0",
                ],
                env=env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready: " + self.log.read_text())

    def stop(self) -> bool:
        """SIGTERM; True when it shut down gracefully (uvicorn re-raises the signal once
        it has finished, so the exit status is 0 or -SIGTERM)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        return code in (0, -signal.SIGTERM) and "Finished server process" in self.log.read_text()


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data"


@pytest.fixture
def server(remote: Remote, data_dir: pathlib.Path) -> Iterator[Server]:
    s = Server(remote, data_dir)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(10)


def _github_push(url: str, delivery: str) -> httpx.Response:
    body = json.dumps({"ref": "refs/heads/main", "after": "b" * 40}).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        url + "/hooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        },
        timeout=10,
    )


def _poll_until(url: str, headers: dict[str, str], count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(url + "/v1/agent/commands", params={"wait": 20}, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        commands: list[dict[str, object]] = r.json()["commands"]
        if len(commands) >= count:
            return commands
    raise AssertionError(f"fewer than {count} commands")


def test_serve_end_to_end_and_restart(
    server: Server, remote: Remote, data_dir: pathlib.Path
) -> None:
    url = server.url
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}

    # A bootstrap token written straight into the store while the server runs (WAL).
    made = cli("agent", "token", "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    boot = httpx.post(url + "/v1/agent/bootstrap", json={"token": token, "hostname": "h1"})
    assert boot.status_code == 201, boot.text
    agent = boot.json()["agent_id"]
    headers = {"X-Agent-Id": agent, "X-Agent-Secret": boot.json()["secret"]}
    assert httpx.post(url + "/v1/agent/bootstrap", json={"token": token}).status_code == 401
    report = httpx.post(url + "/v1/agent/report", json={"state": {"agent": agent}}, headers=headers)
    assert report.status_code == 200

    # A push: the webhook triggers the reconcile that issues the installs.
    remote.commit(examples_for(agent))
    assert _github_push(url, "delivery-1").status_code == 202
    assert _github_push(url, "delivery-1").json()["result"] == "duplicate"
    commands = _poll_until(url, headers, 5)
    ids = {str(c["id"]) for c in commands}
    first = str(commands[0]["id"])
    done = httpx.post(
        f"{url}/v1/agent/commands/{first}/result",
        json={"ok": True, "message": "installed"},
        headers=headers,
    )
    assert done.json() == {"accepted": True, "duplicate": False}

    status = cli("status", "--server", url, "-f", "json")
    assert status.returncode == 0, status.stderr
    rows = {d["name"]: d for d in json.loads(status.stdout)["deployments"]}
    assert set(rows) == {"api", "blog", "hello", "site", "status"}
    table = cli("status", "--server", url)
    assert table.returncode == 0, table.stderr
    # one command done, four still with the agent: those read "applying", not "yes"/"no"
    assert table.stdout.count("applying") == 4, table.stdout

    hook = cli("hook", "create", "ci-main", "--server", url)
    assert hook.returncode == 0, hook.stderr
    hook_token, hook_url = hook.stdout.split()
    assert hook_url == f"{url}/hooks/deploy/{hook_token}"
    assert httpx.post(hook_url).status_code == 202

    metrics = httpx.get(url + "/metrics").text
    assert 'reconcile_webhook_deliveries_total{provider="github",result="accepted"} 1.0' in metrics
    assert server.stop()

    # Offline, the data dir holds everything.
    store = Store.in_dir(data_dir)
    assert store.last_plan() is not None
    events_before = [e.id for e in store.events(limit=10_000)]
    store.close()

    # Restart on the same data dir.
    again = Server(remote, data_dir)
    try:
        url = again.url
        assert _github_push(url, "delivery-1").json()["result"] == "duplicate"
        repeat = httpx.post(
            f"{url}/v1/agent/commands/{first}/result", json={"ok": False}, headers=headers
        )
        assert repeat.json() == {"accepted": True, "duplicate": True}
        left = _poll_until(url, headers, 4)
        assert {str(c["id"]) for c in left} == ids - {first}
        agents = httpx.get(url + "/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert [a["id"] for a in agents] == [agent]
        plan = httpx.get(url + "/v1/plan", headers=ADMIN_HEADERS)
        assert plan.status_code == 200 and plan.json()["format_version"] == 1
        events = httpx.get(
            url + "/v1/events", params={"limit": 1000}, headers=ADMIN_HEADERS
        ).json()["events"]
        assert [e["id"] for e in events][: len(events_before)] == events_before
        api = httpx.get(url + "/v1/deployments/api", headers=ADMIN_HEADERS).json()
        assert api["agent"] == agent
        # The agent reports api as installed: `--dry-run --against URL` plans against that.
        api = next(c for c in commands if c["action"]["deployment"] == "api")
        installed = {
            "id": api["action"]["id"],
            "name": "api",
            "namespace": "srv",
            "spec_hash": api["action"]["spec_hash"],
            "services": ["app"],
            "containers": [{"service": "app", "name": f"{api['action']['id']}-app"}],
        }
        state = {"agent": agent, "deployments": {api["action"]["id"]: installed}}
        assert httpx.post(
            url + "/v1/agent/report", json={"state": state}, headers=headers
        ).is_success
        planned = cli("--dry-run", str(remote.work), "--against", url, "-f", "json")
        assert planned.returncode == 0, planned.stderr
        actions = {a["deployment"]: a["action"] for a in json.loads(planned.stdout)["actions"]}
        assert actions == {
            "api": "noop",
            "blog": "install",
            "hello": "install",
            "site": "install",
            "status": "install",
        }
        removed = cli("agent", "remove", agent, "--server", url)
        assert removed.returncode == 0, removed.stderr
        left = httpx.get(url + "/v1/agents", headers=ADMIN_HEADERS).json()["agents"]
        assert left == []
        assert again.stop()
    finally:
        if again.proc.poll() is None:
            again.proc.kill()


class TestCli:
    def test_agent_remove_from_the_data_dir(self, tmp_path: pathlib.Path) -> None:
        store = Store.in_dir(tmp_path)
        token = store.create_bootstrap_token()
        registered = store.bootstrap_agent(token, "h1")
        assert registered is not None
        agent, secret = registered
        store.close()
        done = cli("agent", "remove", agent, "--data-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr
        store = Store.in_dir(tmp_path)
        try:
            assert store.agent(agent) is None and not store.check_agent(agent, secret)
        finally:
            store.close()
        unknown = cli("agent", "remove", agent, "--data-dir", str(tmp_path))
        assert unknown.returncode == 1 and "no agent" in unknown.stderr
        bad = cli("agent", "remove", "host1", "--data-dir", str(tmp_path))
        assert bad.returncode == 2 and "not an agent id" in bad.stderr

    def test_serve_without_a_source_is_a_usage_error(self, tmp_path: pathlib.Path) -> None:
        done = cli("serve", "--data-dir", str(tmp_path / "d"))
        assert done.returncode == 2 and "--source" in done.stderr

    def test_server_yaml_and_flags(self, tmp_path: pathlib.Path) -> None:
        from reconciler.server.config import load_server_config

        file = tmp_path / "server.yaml"
        file.write_text("source: /srv/repo\nport: 9000\npoll-interval: 5\nbranch: prod\n")
        config = load_server_config(file, {"port": 9100, "branch": None})
        assert (config.source, config.port, config.poll_interval, config.branch) == (
            "/srv/repo",
            9100,
            5.0,
            "prod",
        )
        file.write_text("source: x\nnope: 1\n")
        done = cli("serve", "--config", str(file))
        assert done.returncode == 2 and "nope" in done.stderr

    def test_token_and_hook_need_an_existing_data_dir(self, tmp_path: pathlib.Path) -> None:
        done = cli("agent", "token", "--data-dir", str(tmp_path / "none"))
        assert done.returncode == 2 and "no control-plane database" in done.stderr
        both = cli("agent", "token", "--data-dir", "x", "--server", "http://127.0.0.1:1")
        assert both.returncode == 2

    def test_token_and_hook_from_the_data_dir(self, tmp_path: pathlib.Path) -> None:
        Store.in_dir(tmp_path).close()
        token = cli("agent", "token", "--data-dir", str(tmp_path))
        assert token.returncode == 0 and token.stdout.startswith("rbt_")
        hook = cli("hook", "create", "deploy-prod", "--data-dir", str(tmp_path))
        assert hook.returncode == 0
        secret, path = hook.stdout.split()
        assert path == f"/hooks/deploy/{secret}"
        store = Store.in_dir(tmp_path)
        assert store.consume_bootstrap_token(token.stdout.strip())
        assert store.check_deploy_hook(secret) == "deploy-prod"
        store.close()
        bad = cli("hook", "create", "Bad", "--data-dir", str(tmp_path))
        assert bad.returncode == 2

    def test_status_server_errors(self) -> None:
        refused = cli("status", "--server", f"http://127.0.0.1:{free_port()}")
        assert refused.returncode == 1 and "error" in refused.stderr


def test_the_access_log_never_shows_a_deploy_hook_token() -> None:
    import logging

    from reconciler.cli.serve import redact_deploy_tokens

    # uvicorn's access-log record: '%s - "%s %s HTTP/%s" %d' with the path as an arg
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/hooks/deploy/s3cr3t-token?x=1", "1.1", 202),
        None,
    )
    assert redact_deploy_tokens(record) is True
    message = record.getMessage()
    assert "s3cr3t-token" not in message
    assert "/hooks/deploy/<redacted>?x=1" in message


def test_a_huge_body_is_refused_without_being_read_whole(server: Server) -> None:
    """Unauthenticated bootstrap with a declared 2 GB body, and with 64 MB streamed
    chunked (no Content-Length): 413 both, and the server carries on."""

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/agent/bootstrap HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n{"
        )
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head

    def chunks() -> Iterator[bytes]:
        block = b" " * (1 << 20)
        for _ in range(64):
            yield block

    r = httpx.post(
        server.url + "/v1/agent/bootstrap",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and "over" in r.json()["error"]
    # still serving, and a normal refusal still looks normal
    assert httpx.get(server.url + "/healthz").status_code == 200
    bad = httpx.post(server.url + "/v1/agent/bootstrap", json={"token": "nope"})
    assert bad.status_code == 401
