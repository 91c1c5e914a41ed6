"""End to end: a push is told to a webhook receiver and to the forge, on real Docker.

Real processes (``reconcile serve`` with a ``server.yaml`` naming a ``notify:`` target
and ``commit_status:``, ``reconcile-agent``), a bare git repository, the Docker Engine
and Caddy; the receiver and the fake GitHub are HTTP servers of this test on 127.0.0.1.
The tests share one cluster and run in file order.
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.agent.docker_helpers import docker_client
from tests.e2e.cluster import Cluster
from tests.server.receiver import Receiver, Seen

pytestmark = pytest.mark.docker

DEPLOY_TIMEOUT = 180.0  # one retry (30 s backoff) of a deploy the shared engine upset
HOOK_SECRET = "e2e-notify-secret"
REPO = "e2e/repo"  # what Cluster.github_push names as repository.full_name

SITE = {
    "deployments/site/deployment.yaml": (
        "name: site\nagent: host1\nbuild:\n  context: .\n  dockerfile: Dockerfile\n"
        "target_port: 80\ncpus: 0.25\nmemory_mb: 32\n"
    ),
    "deployments/site/index.html": "<p>site</p>\n",
}
GOOD_DOCKERFILE = (
    "FROM busybox:1.36\nCOPY index.html /www/index.html\n"
    'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]\n'
)
# A file the build context lacks: the build fails without running a container.
BROKEN_DOCKERFILE = "FROM busybox:1.36\nCOPY no-such-file.html /www/index.html\n"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def forge() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, forge: Receiver
) -> Iterator[Cluster]:
    docker_client().close()  # fails (not skips) without an engine
    base = tmp_path_factory.mktemp("e2e-notify")
    config = base / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "notify": [
                    {
                        "url": receiver.url + "/hook",
                        "secret_env": "HOOK_SECRET",
                        "events": ["deployment.*", "agent.*"],
                        "format": "json",
                    }
                ],
                "commit_status": {
                    "provider": "github",
                    "api_url": forge.url + "/api/v3",
                    "token_env": "FORGE_TOKEN",
                    "context": "reconcile",
                },
            }
        )
    )
    c = Cluster(pathlib.Path(base))
    try:
        c.start_server(config=config, env={"HOOK_SECRET": HOOK_SECRET, "FORGE_TOKEN": "ghp-e2e"})
        c.start_agent(token=c.agent_token())
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.teardown()


def _signed(seen: Seen) -> bool:
    expected = hmac.new(HOOK_SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
    return seen.headers.get("x-reconcile-signature") == f"sha256={expected}"


def _events(receiver: Receiver, kind: str, deployment: str) -> list[dict[str, Any]]:
    return [
        s.json()
        for s in receiver.seen
        if s.path == "/hook"
        and s.json()["type"] == kind
        and s.json()["data"].get("deployment") == deployment
    ]


def _statuses(forge: Receiver, sha: str) -> list[dict[str, Any]]:
    path = f"/api/v3/repos/{REPO}/statuses/{sha}"
    return [s.json() for s in forge.seen if s.path == path]


def _push(cluster: Cluster, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        cluster.write(rel, text)
    sha = cluster.commit_and_push(message)
    assert cluster.github_push(sha).status_code == 202
    return sha


def _final(forge: Receiver, sha: str, state: str) -> None:
    """Pending first, then ``state`` as the latest verdict (a command that failed for a
    reason of the shared engine is retried, and the commit's status follows the retry)."""

    def done(_: object) -> bool:
        states = [s["state"] for s in _statuses(forge, sha)]
        return len(states) >= 2 and states[0] == "pending" and states[-1] == state

    forge.wait_for(done, DEPLOY_TIMEOUT)


def test_a_push_is_told_to_the_receiver_and_the_forge(
    cluster: Cluster, receiver: Receiver, forge: Receiver
) -> None:
    cluster.hello_repo("first")
    _final(forge, _push(cluster, {}, "hello"), "success")
    assert _events(receiver, "deployment.installed", "hello")
    assert any(s.json()["type"] == "agent.online" for s in receiver.seen)

    cluster.hello_repo("second")
    sha = _push(cluster, {}, "hello says something else")
    _final(forge, sha, "success")
    seen = receiver.wait_for(lambda _: _events(receiver, "deployment.updated", "hello"), 30)
    updated = next(
        s
        for s in seen
        if s.path == "/hook"
        and s.json()["type"] == "deployment.updated"
        and s.json()["data"]["deployment"] == "hello"
    )
    assert _signed(updated)
    assert updated.json()["data"]["revision"] == sha
    assert updated.headers["x-reconcile-delivery"].startswith("dlv_")
    assert _statuses(forge, sha)[-1] == {
        "state": "success",
        "description": "1 deployments applied",
        "context": "reconcile",
    }
    assert all(s.headers["authorization"] == "Bearer ghp-e2e" for s in forge.seen)


def test_a_push_that_breaks_an_app_fails_with_its_hint(
    cluster: Cluster, receiver: Receiver, forge: Receiver
) -> None:
    site = {**SITE, "deployments/site/Dockerfile": GOOD_DOCKERFILE}
    _final(forge, _push(cluster, site, "a site beside hello"), "success")
    assert _events(receiver, "deployment.installed", "site")

    sha = _push(cluster, {"deployments/site/Dockerfile": BROKEN_DOCKERFILE}, "break the site")
    _final(forge, sha, "failure")
    assert _statuses(forge, sha)[-1]["description"] == "failed: site"
    seen = receiver.wait_for(lambda _: _events(receiver, "deployment.failed", "site"), 30)
    failed = next(
        s
        for s in seen
        if s.path == "/hook"
        and s.json()["type"] == "deployment.failed"
        and s.json()["data"]["revision"] == sha
    )
    assert _signed(failed)
    data = failed.json()["data"]
    assert data["hint"] == "the Dockerfile failed to build; see the build output"
    assert data["reason"].startswith("build")
    assert data["agent"] == cluster.agent_id
    # hello is untouched by the broken site: no event about it at that commit
    assert not [
        s
        for s in receiver.seen
        if s.json().get("data", {}).get("deployment") == "hello"
        and s.json()["data"].get("revision") == sha
    ]
