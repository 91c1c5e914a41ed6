"""End to end: git push + signed webhook -> the control plane plans -> the agent deploys.

Real processes (``reconcile serve``, ``reconcile-agent``), a real bare git repository,
the real Docker Engine and Caddy.  The tests share one cluster and run in file order:
each one starts from the state the previous one left (that is the point: a long-lived
server and agent, changed only through git pushes, restarts and kills).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.e2e.cluster import WEBHOOK_SECRET, Cluster, git, wait_for

pytestmark = pytest.mark.docker

DEPLOY_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    docker_client().close()  # fails (not skips) without an engine
    c = Cluster(tmp_path_factory.mktemp("e2e"))
    try:
        c.start_server()
        c.start_agent(token=c.agent_token())
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


def _deployment(cluster: Cluster) -> dict[str, object]:
    items = cluster.admin("/v1/deployments")
    rows = items["deployments"] if isinstance(items, dict) else items
    return next(d for d in rows if d["name"] == "hello")


def test_signed_github_push_deploys_the_app_through_the_proxy(cluster: Cluster) -> None:
    cluster.hello_repo("first-version")
    sha = cluster.commit_and_push("hello v1")
    r = cluster.github_push(sha)
    assert r.status_code == 202, r.text
    wait_for(lambda: cluster.serves("first-version"), DEPLOY_TIMEOUT, "v1 through the proxy")
    agents = cluster.admin("/v1/agents")
    rows = agents["agents"] if isinstance(agents, dict) else agents
    assert any(a["id"] == cluster.agent_id and a["online"] for a in rows)


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab", "bitbucket"])
def test_a_push_announced_by_each_provider_redeploys_the_changed_app(
    cluster: Cluster, provider: str
) -> None:
    greeting = f"via-{provider}"
    cluster.hello_repo(greeting)
    sha = cluster.commit_and_push(f"hello via {provider}")
    send = getattr(cluster, f"{provider}_push")
    r = send(sha)
    assert r.status_code == 202, r.text
    wait_for(lambda: cluster.serves(greeting), DEPLOY_TIMEOUT, f"{greeting} through the proxy")


def test_forged_webhook_changes_nothing(cluster: Cluster) -> None:
    runs_before = cluster.metric("reconcile_runs_total")
    cluster.hello_repo("forged")
    sha = cluster.commit_and_push("a commit only a forged hook announces")
    body = b'{"ref": "refs/heads/main", "after": "' + sha.encode() + b'"}'
    r = httpx.post(
        cluster.url + "/hooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "forged-1",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 401
    # no timer in this cluster (poll interval 0): only a verified trigger may reconcile
    assert cluster.metric("reconcile_runs_total") == runs_before
    assert cluster.serves("via-bitbucket")


def test_a_burst_of_100_webhooks_gives_at_most_two_reconciles(cluster: Cluster) -> None:
    cluster.hello_repo("after-burst")
    sha = cluster.commit_and_push("burst")
    runs_before = cluster.metric("reconcile_runs_total")
    with httpx.Client() as client:
        body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
        sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        codes = [
            client.post(
                cluster.url + "/hooks/github",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": sig,
                },
            ).status_code
            for _ in range(100)
        ]
    assert codes == [202] * 100
    wait_for(lambda: cluster.serves("after-burst"), DEPLOY_TIMEOUT, "the burst's commit")
    # let a queued run (if any) finish, then count
    wait_for(
        lambda: cluster.metric("reconcile_runs_total") >= runs_before + 1, 30, "the runs to count"
    )
    time.sleep(2 * cluster.heartbeat + 1)
    runs = cluster.metric("reconcile_runs_total") - runs_before
    # at most one running and one queued for the webhooks; agent-report drift triggers
    # may add runs of their own only if the host drifted, which it must not have
    assert 1 <= runs <= 2, runs


def test_replayed_delivery_is_a_no_op(cluster: Cluster) -> None:
    head = git(cluster.work, "rev-parse", "HEAD")
    first = cluster.github_push(head, delivery="replay-me")
    assert first.status_code == 202
    runs = cluster.metric("reconcile_runs_total")
    again = cluster.github_push(head, delivery="replay-me")
    assert again.status_code == 200, again.text
    time.sleep(1)
    assert cluster.metric("reconcile_runs_total") <= runs + 1  # only the first one's run


def test_agent_killed_mid_deploy_converges_after_restart(cluster: Cluster) -> None:
    cluster.hello_repo("after-agent-crash")
    sha = cluster.commit_and_push("deploy interrupted by an agent crash")
    assert cluster.github_push(sha).status_code == 202
    journal = cluster.state_dir / "agent" / "commands"
    # kill as soon as the agent has taken the command (the journal entry exists)
    before = set(journal.glob("*.json")) if journal.exists() else set()
    wait_for(
        lambda: set(journal.glob("*.json")) - before if journal.exists() else False,
        DEPLOY_TIMEOUT,
        "the agent to take the command",
        step=0.01,
    )
    cluster.kill_agent()
    cluster.start_agent()  # credentials kept: no token needed the second time
    wait_for(lambda: cluster.serves("after-agent-crash"), DEPLOY_TIMEOUT, "convergence")
    cluster.settled()  # the redone command ran to its end (probe, record) and was reported


def test_server_restart_keeps_agents_state_and_dedup_records(cluster: Cluster) -> None:
    before = cluster.admin("/v1/events?limit=1000")
    cluster.stop_server()
    cluster.start_server()
    agents = cluster.admin("/v1/agents")
    rows = agents["agents"] if isinstance(agents, dict) else agents
    assert any(a["id"] == cluster.agent_id for a in rows)
    # the agent reconnects with its stored credentials (backoff) and is online again
    wait_for(
        lambda: any(
            a["id"] == cluster.agent_id and a["online"]
            for a in (lambda x: x["agents"] if isinstance(x, dict) else x)(
                cluster.admin("/v1/agents")
            )
        ),
        30,
        "the agent to come back online",
    )
    # a delivery seen before the restart is still a replay
    head = git(cluster.work, "rev-parse", "HEAD")
    assert cluster.github_push(head, delivery="replay-me").status_code == 200
    after = cluster.admin("/v1/events?limit=1000")
    n_before = len(before["events"] if isinstance(before, dict) else before)
    n_after = len(after["events"] if isinstance(after, dict) else after)
    assert n_after >= n_before
    assert cluster.serves("after-agent-crash")


def test_an_idle_agent_recreates_a_removed_proxy(cluster: Cluster) -> None:
    # No push, no command: the agent's housekeeping (every 2 s here) repairs the proxy.
    cluster.settled()  # idle: no command in flight whose probe the removal would fail
    client = docker_client()
    try:
        proxies = client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"})
        assert len(proxies) == 1
        old = proxies[0].id
        proxies[0].remove(force=True)

        def recreated() -> bool:
            now = client.containers.list(filters={"label": "io.reconciler.role=proxy"})
            return bool(now) and now[0].id != old and cluster.serves("after-agent-crash")

        wait_for(recreated, 60, "a new proxy serving the app's route")
    finally:
        client.close()
