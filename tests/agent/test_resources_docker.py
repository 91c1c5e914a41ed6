"""Resource limits for real: ``cpus`` and ``memory_mb`` of image, dockerfile and git
deployments are the containers' limits, as ``docker inspect`` shows them (``NanoCpus``,
``Memory``).

The real loader, renderer, planner, executor, Docker Compose and Docker Engine; only
the proxy is a stand-in that creates this test's own proxy network (the Caddy proxy is
one container per host, shared with every other test run on this daemon, and plays no
part in limits).  Every name is unique to the run and removed afterwards.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest

from agent.compose import WhalesComposeDriver
from agent.executor import Executor, ExecutorSettings
from agent.watch import DockerWatch
from reconciler.load.desired import load_desired
from reconciler.model.state import ActualState
from reconciler.plan import plan
from reconciler.render import RenderContext, render_all
from tests.agent.docker_helpers import docker_client

pytestmark = pytest.mark.docker

MIB = 1024 * 1024
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}
HTTPD = 'FROM busybox:1.36\nCMD ["httpd", "-f", "-p", "80", "-h", "/"]\n'


class NetworkOnlyProxy:
    """Creates the proxy network the apps join; routes are accepted and not served."""

    def __init__(self, client: Any, network: str) -> None:
        self.client = client
        self.network = network

    def ensure(self) -> None:
        if not self.client.networks.list(names=[self.network]):
            self.client.networks.create(self.network, labels={"io.reconciler.test": "1"})

    def sync(self, routes: Mapping[str, str]) -> object:
        return None

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        return 200


def git(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def test_limits_are_on_the_containers(tmp_path: pathlib.Path) -> None:
    client = docker_client()
    tag = secrets.token_hex(4)
    namespace, network = f"res-{tag}", f"res-net-{tag}"

    bare, work = tmp_path / "bot.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, env=GIT_ENV)
    (work / "Dockerfile").write_text(HTTPD)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "bot", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)

    repo = tmp_path / "repo"
    (repo / "deployments" / "site").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text(
        f"namespace: {namespace}\nproxy: {{network: {network}, tls: off}}\n"
    )
    (repo / "deployments" / "api.yaml").write_text(
        "name: api\nimage: caddy:2\ntarget_port: 80\ncpus: 0.5\nmemory_mb: 64\n"
    )
    (repo / "deployments" / "site" / "deployment.yaml").write_text(
        "name: site\nbuild: {context: .}\ntarget_port: 80\ncpus: 0.25\nmemory_mb: 48\n"
    )
    (repo / "deployments" / "site" / "Dockerfile").write_text(HTTPD)
    # no cpus / memory_mb: the defaults, 1.0 and 512, are limits too
    (repo / "deployments" / "bot.yaml").write_text(
        f"name: bot\ngit_url: file://{bare}\ngit_ref: main\ntarget_port: 80\n"
    )

    desired = load_desired(str(repo), cache_dir=tmp_path / "cache")
    assert desired.state.ok, desired.state.problems
    actual = ActualState.empty(["local"])
    rendered = render_all(
        desired.state,
        RenderContext(config=desired.state.config, git_revisions=desired.git_revisions),
        actual=actual,
    )
    result = plan(rendered, actual, namespace=namespace)
    assert {a.action for a in result.actions} == {"install"}
    executor = Executor(
        state_dir=tmp_path / "state",
        driver=WhalesComposeDriver(),
        proxy=NetworkOnlyProxy(client, network),
        watch=DockerWatch(),
        settings=ExecutorSettings(settle_seconds=1.0, probe=False),
        environ={},
    )
    ids = {d.name: d.id for d in rendered}
    try:
        results = executor.run(result, rendered, desired.state.root)
        assert [(r.action.deployment, r.ok) for r in results] == [
            ("api", True),
            ("bot", True),
            ("site", True),
        ], [r.message for r in results]
        limits = {}
        for name, dpl_id in ids.items():
            (container,) = client.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={dpl_id}"}
            )
            host = container.attrs["HostConfig"]
            limits[name] = (host["NanoCpus"], host["Memory"])
        assert limits == {
            "api": (500_000_000, 64 * MIB),
            "site": (250_000_000, 48 * MIB),
            "bot": (1_000_000_000, 512 * MIB),
        }
    finally:
        for c in client.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={namespace}"}
        ):
            c.remove(force=True)
        for dpl_id in ids.values():
            for image in client.images.list(name=f"{dpl_id}-app"):
                client.images.remove(image.id, force=True)
            for net in client.networks.list(names=[f"{dpl_id}_default"]):
                net.remove()
        for net in client.networks.list(names=[network]):
            net.remove()
