"""End to end: what the server and the agent tell about a push (logs, metrics, live steps).

Real processes (``reconcile serve``, ``reconcile-agent``, ``reconcile status --follow``),
a real bare git repository, the real Docker Engine and Caddy, and Debian's ``promtool``
(installed by ``scripts/setup.sh --docker``; missing, the test fails).  The tests share
one cluster and run in file order: a push in text log format, then the same server and
agent restarted in JSON format for a second push, then the metrics of that server, then
its stop with a stream client connected.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.e2e.cluster import ADMIN_TOKEN, ROOT, Cluster, wait_for

pytestmark = pytest.mark.docker

DEPLOY_TIMEOUT = 120.0
#: The steps of a catalog app's install/update, in the order the executor runs them.
INSTALL_STEPS = ["files", "up", "record"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    docker_client().close()  # fails (not skips) without an engine
    c = Cluster(tmp_path_factory.mktemp("obs"))
    try:
        c.start_server(log_format="text")
        c.start_agent(token=c.agent_token(), log_format="text")
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.teardown()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(cluster.dump_logs())


class Stream:
    """A real SSE client of GET /v1/events/stream, reading in a thread."""

    def __init__(self, url: str, **params: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.connected = threading.Event()
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, params), daemon=True)
        self._thread.start()
        assert self.connected.wait(10), "the stream did not connect"

    def _run(self, url: str, params: dict[str, str]) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        timeout = httpx.Timeout(10, read=60)
        try:
            with httpx.stream(
                "GET", url + "/v1/events/stream", params=params, headers=headers, timeout=timeout
            ) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                        self.connected.set()
                    elif line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()

    def result_of(self, name: str) -> dict[str, Any] | None:
        return next(
            (e for e in self.events if e["type"] == "command.result" and e["deployment"] == name),
            None,
        )


def _follow(cluster: Cluster, out: pathlib.Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECONCILE_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "status", "--server", cluster.url, "--follow"],
        env={**env, "COLUMNS": "200"},
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _in_order(items: list[str], wanted: list[str]) -> bool:
    it = iter(items)
    return all(any(w == x for x in it) for w in wanted)


def _log_lines(path: pathlib.Path, offset: int = 0) -> list[str]:
    return path.read_text(errors="replace")[offset:].splitlines()


def test_a_push_streams_its_steps_in_order_and_logs_its_story(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    stream = Stream(cluster.url, deployment="hello")
    follow_out = tmp_path / "follow.txt"
    follower = _follow(cluster, follow_out)
    try:
        wait_for(lambda: "following" in follow_out.read_text(), 30, "status --follow to connect")
        cluster.hello_repo("observed-v1")
        sha = cluster.commit_and_push("hello v1")
        delivery = str(uuid.uuid4())
        assert cluster.github_push(sha, delivery=delivery).status_code == 202
        wait_for(lambda: stream.result_of("hello"), DEPLOY_TIMEOUT, "the command's result")
        wait_for(
            lambda: re.search(r"hello install (ok|FAILED)", follow_out.read_text()),
            30,
            "--follow to show the result",
        )
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=20)

    # The stream: the command sent, its steps as the agent ran them, its result.
    types = [e["type"] for e in stream.events]
    assert types[0] == "command.sent" and types[-1] == "command.result", types
    command = stream.events[0]["command"]
    assert all(e["command"] == command and e["deployment"] == "hello" for e in stream.events)
    steps = [e["step"] for e in stream.events if e["type"] == "step"]
    # The verdict itself is not the point here (the proxy is shared with other test runs).
    ok = stream.result_of("hello")["ok"]  # type: ignore[index]
    verdict = "ok" if ok else "FAILED"
    assert steps[0] == "files"
    if ok:
        assert _in_order(steps, INSTALL_STEPS), steps
    # ... and they are the steps the agent ran, in its order (its own log says which).
    agent_log = _log_lines(cluster.logs / "agent.log")
    start = next(i for i, ln in enumerate(agent_log) if f"command {command} install" in ln)
    ran = [ln.split("  hello: ", 1)[1] for ln in agent_log[start:] if "  hello: " in ln]
    assert len(ran) == len(steps), (ran, steps)
    assert all(f"{r} ".startswith(f"{st} ") for r, st in zip(ran, steps, strict=True)), ran
    ids = [e["id"] for e in stream.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # `status --follow`: the same steps, one plain line each, in the same order.
    shown = follow_out.read_text()
    lines = [ln for ln in shown.splitlines() if " hello " in f" {ln} "]
    words = [ln.split(" hello ", 1)[1].split(":", 1)[0] for ln in lines if " hello " in ln]
    assert [w for w in words if w in steps] == steps, shown
    assert re.search(r"\d\d:\d\d:\d\d hello install sent to agt_[0-9a-f]{16}", shown), shown
    assert re.search(rf"\d\d:\d\d:\d\d hello install {verdict}", shown), shown

    # The server's log tells the story at the default level: webhook -> command sent ->
    # the reconcile that sent it -> result; the agent's: started, steps, result.
    server = "\n".join(_log_lines(cluster.logs / "server.log"))
    story = [
        rf"webhook github delivery {delivery}: accepted",
        rf"command {command} sent: install hello to {cluster.agent_id}",
        # (triggers that arrive together run once, their reasons joined: the agent's first
        # report may still be queued, "agent: ... online, webhook: ...")
        rf"reconcile \((?:[^()]*, )?webhook: github push .*\) at {sha[:12]}: install 1; "
        "1 commands sent",
        rf"command {command} result from {cluster.agent_id}: install hello {verdict}",
    ]
    at = 0
    for pattern in story:
        found = re.compile(pattern).search(server, at)
        assert found, f"{pattern!r} not in the server's log after offset {at}:\n{server[-4000:]}"
        at = found.end()
    assert re.search(rf"agent {cluster.agent_id} online", server), server[-4000:]
    agent = "\n".join(_log_lines(cluster.logs / "agent.log"))
    assert re.search(rf"command {command} install hello: started", agent), agent[-4000:]
    assert re.search(r"  hello: up docker compose up -d", agent), agent[-4000:]
    assert re.search(rf"command {command} install hello: {verdict}", agent), agent[-4000:]


def test_json_logs_tell_the_same_story(cluster: Cluster) -> None:
    cluster.stop_agent()
    stopped = time.monotonic()
    cluster.stop_server()
    server_log = cluster.logs / "server.log"
    agent_log = cluster.logs / "agent.log"
    server_at, agent_at = len(server_log.read_text()), len(agent_log.read_text())
    cluster.start_server(log_format="json")
    # Back within three heartbeats, an agent was never offline and its return is no state
    # change to log: come back after that, so the JSON log has an `agent.online` line.
    time.sleep(max(0.0, stopped + 3 * cluster.heartbeat + 0.5 - time.monotonic()))
    cluster.start_agent(log_format="json")
    wait_for(
        lambda: any(a["online"] for a in cluster.admin("/v1/agents")["agents"]),
        30,
        "the agent back online",
    )
    cluster.hello_repo("observed-v2")
    sha = cluster.commit_and_push("hello v2")
    delivery = str(uuid.uuid4())
    assert cluster.github_push(sha, delivery=delivery).status_code == 202
    # The story is told whatever the verdict (the proxy is shared with other test runs).
    wait_for(
        lambda: '"event": "command.result"' in server_log.read_text()[server_at:],
        DEPLOY_TIMEOUT,
        "the update's result in the server's log",
    )

    def parsed(path: pathlib.Path, offset: int) -> list[dict[str, Any]]:
        lines = [ln for ln in _log_lines(path, offset) if ln.strip()]
        out = [json.loads(ln) for ln in lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(o) for o in out)
        return out

    server = parsed(server_log, server_at)
    by_event = [o for o in server if "event" in o]
    hook = next(o for o in by_event if o["event"] == "webhook" and o["delivery"] == delivery)
    assert hook["provider"] == "github" and hook["result"] == "accepted"
    run = next(o for o in by_event if o["event"] == "reconcile" and o["commit"] == sha)
    assert run["result"] == "ok" and run["counts"]["update"] == 1 and run["commands"] == 1
    assert run["trigger"].startswith("webhook: github push") and run["duration"] >= 0
    sent = next(o for o in by_event if o["event"] == "command.sent" and o["commit"] == sha)
    assert sent["kind"] == "update" and sent["deployment"] == "hello"
    assert sent["agent"] == cluster.agent_id
    result = next(
        o for o in by_event if o["event"] == "command.result" and o["command"] == sent["command"]
    )
    assert isinstance(result["ok"], bool) and result["deployment"] == "hello"
    order = [server.index(o) for o in (hook, sent, run, result)]
    assert order == sorted(order)
    assert any(o["event"] == "agent.online" for o in by_event)
    assert any(o["logger"].startswith("uvicorn") for o in server)  # uvicorn's lines are JSON too

    agent = parsed(agent_log, agent_at)
    mine = [
        o for o in agent if o.get("command") == sent["command"] or o.get("event") == "command.step"
    ]
    events = [o["event"] for o in mine]
    assert events[0] == "command.start" and "command.step" in events
    assert events[-1] == "command.result" and mine[-1]["ok"] is result["ok"]


def test_metrics_are_prefixed_labelled_and_pass_promtool(cluster: Cluster) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/setup.sh --docker (Debian `prometheus`)"
    text = httpx.get(cluster.url + "/metrics", timeout=10).text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    names = {
        ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")
    }
    ours = {n for n in names if not n.startswith("process_")}
    assert ours and all(n.startswith("reconcile_") for n in ours), sorted(ours)
    assert "process_cpu_seconds_total" in names and "process_resident_memory_bytes" in names
    ns, agent = cluster.namespace, cluster.agent_id
    view = next(d for d in cluster.admin("/v1/deployments")["deployments"] if d["name"] == "hello")
    info = re.search(
        rf'reconcile_deployment_info\{{agent="{agent}",health="(\w+)",name="hello",'
        rf'namespace="{ns}",status="{view["status"]}"\}} 1.0',
        text,
    )
    assert info, text
    assert info.group(1) in ("healthy", "unhealthy", "starting", "unknown")
    if view["status"] == "running" and all(c["status"] == "running" for c in view["containers"]):
        assert info.group(1) in ("healthy", "starting")
    in_sync = f'reconcile_deployment_in_sync{{agent="{agent}",name="hello",namespace="{ns}"}}'
    assert f"{in_sync} {1.0 if view['in_sync'] else 0.0}" in text
    assert re.search(r'reconcile_runs_total\{result="ok",trigger="webhook"\} [1-9]', text)
    assert re.search(r'reconcile_build_info\{python="[0-9.]+",version="[^"]+"\} 1.0', text)
    assert cluster.metric("reconcile_last_success_timestamp_seconds") > 1.7e9
    assert cluster.metric("reconcile_agents_online") == 1
    assert 'reconcile_webhook_deliveries_total{provider="github",result="accepted"}' in text


def test_stopping_the_server_ends_the_streams_cleanly(cluster: Cluster) -> None:
    stream = Stream(cluster.url)
    assert cluster.server is not None
    server = cluster.server
    cluster.stop_server()
    assert stream.closed.wait(30), "the stream stayed open after the server stopped"
    assert stream.comments[-1] == ": end: the server is stopping", stream.comments
    # uvicorn re-raises the signal once it has shut down gracefully
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in (cluster.logs / "server.log").read_text()
