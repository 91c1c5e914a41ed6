"""Two replicas, a real ``reconcile-agent`` and real Docker: the agent polls replica B
only; pushes are announced to replica A.  The app's files travel in a bundle that A
built and B serves.  Then A (the leader) is SIGKILLed, the next push goes to B, which
takes over and deploys it: the agent never talks to A, and never needs to.

Only busybox and caddy images; traffic only to 127.0.0.1.  Fails (never skips) without
Docker.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port
from tests.e2e.cluster import HTTPD_COMPOSE, Cluster, _env, running_cluster, wait_for

pytestmark = pytest.mark.docker

DEPLOYMENT = """\
    name: page
    agent: host1
    domain: {domain}
    compose: ./compose.yaml
    routes:
      - upstream: "{{deployment_id}}-app:80"
        match_var: domain
"""


class Pair:
    """Replica A started by hand on the cluster's database; B is the cluster's server."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.database = cluster.data_dir / "reconcile.db"  # B's own: the CLI finds it
        self.a_port = free_port()
        self.a_url = f"http://127.0.0.1:{self.a_port}"
        config = cluster.base / "replica.yaml"
        config.write_text(f"database: {self.database}\nlease_ttl: 3\n")
        log = open(cluster.logs / "server-a.log", "ab")  # noqa: SIM115 - the process's
        cmd = [
            sys.executable, "-m", "reconciler", "serve",
            "--source", str(cluster.origin), "--branch", "main",
            "--data-dir", str(cluster.base / "server-a-data"),
            "--port", str(self.a_port), "--poll-interval", "0",
            "--heartbeat", str(cluster.heartbeat),
            "--config", str(config),
        ]  # fmt: skip
        self.a = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ready(self.a_url).get("leader") is True, 60, "replica A leading")
        cluster.start_server(config=config)  # B, on the same database
        wait_for(lambda: self.ready(cluster.url).get("status") == "ready", 60, "replica B ready")

    @staticmethod
    def ready(url: str) -> dict[str, object]:
        answer = httpx.get(url + "/readyz", timeout=5)
        body: dict[str, object] = answer.json()
        return body

    def push_to_a(self, sha: str) -> httpx.Response:
        b_port = self.cluster.server_port
        self.cluster.server_port = self.a_port  # the cluster's signed push, sent to A
        try:
            return self.cluster.github_push(sha)
        finally:
            self.cluster.server_port = b_port

    def stop(self) -> None:
        if self.a.poll() is None:
            self.a.terminate()
            self.a.wait(20)


@pytest.fixture
def pair(tmp_path: pathlib.Path) -> Iterator[Pair]:
    docker_client().close()
    with running_cluster(tmp_path) as cluster:
        p = Pair(cluster)
        try:
            yield p
        except BaseException:
            print(cluster.dump_logs())
            raise
        finally:
            p.stop()


def commit(cluster: Cluster, text: str) -> str:
    cluster.write(
        "reconcile.yaml",
        f"namespace: {cluster.namespace}\nagents:\n  host1: {cluster.agent_id}\n"
        f"proxy:\n  http_port: {cluster.proxy_port}\n  tls: off\n",
    )
    cluster.write(
        "deployments/page/deployment.yaml",
        textwrap.dedent(DEPLOYMENT.format(domain=cluster.domain)),
    )
    cluster.write("deployments/page/compose.yaml", textwrap.dedent(HTTPD_COMPOSE))
    cluster.write("deployments/page/public/index.html", f"<p>{text}</p>\n")
    return cluster.commit_and_push(text)


def test_an_agent_on_one_replica_deploys_pushes_announced_to_the_other_and_survives_its_death(
    pair: Pair,
) -> None:
    cluster = pair.cluster
    cluster.start_agent(cluster.agent_token())  # polls B, and only B
    assert pair.ready(cluster.url)["leader"] is False

    sha = commit(cluster, "served via replica B, built by A")
    assert pair.push_to_a(sha).status_code == 202
    wait_for(lambda: cluster.serves("served via replica B"), 180, "the app through the proxy")
    cluster.settled("page")
    # the bundle (the app's public/ directory) was built by A, fetched from B
    assert list((cluster.base / "server-a-data").rglob("*.tar")) == []

    # The leader dies; the next push reaches B, which takes over and deploys it.
    pair.a.send_signal(signal.SIGKILL)
    pair.a.wait(10)
    sha = commit(cluster, "after the leader died")
    assert cluster.github_push(sha).status_code == 202
    wait_for(lambda: pair.ready(cluster.url).get("leader") is True, 30, "B to take over")
    wait_for(lambda: cluster.serves("after the leader died"), 180, "the update through B")
    cluster.settled("page")
    results = [
        e for e in cluster.admin("/v1/events?limit=1000")["events"] if e["kind"] == "command.result"
    ]
    assert len(results) == 2 and all(e["fields"].get("ok") for e in results)
