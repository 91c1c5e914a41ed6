"""``python -m agent.daemon`` on the real Docker Engine, Compose and Caddy, fed by a stub
control plane (a real HTTP server on 127.0.0.1 that hands out exactly the commands the
test adds): an install with a bundle answers through the proxy; an update killed with
SIGKILL mid-deploy is redone by the restarted agent and converges; an uninstall stops it.

The end-to-end tests with the real ``reconcile serve`` are tests/e2e/; these pin the
agent's own behaviour with nothing else moving.  Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler.model.deployment import ProxyConfig
from tests.agent.agent_fakes import (
    FakeControlPlane,
    make_command,
    rendered_repo,
    repo_files,
    tar_of,
)
from tests.agent.docker_helpers import docker_client, unique_namespace, wait_until
from tests.agent.stub_control_plane import agent_cmd, agent_env, stub_server
from tests.conftest import RepoFactory, free_port

pytestmark = pytest.mark.docker


class AgentProcess:
    """One ``python -m agent.daemon`` process; its stderr goes to a file we can show."""

    def __init__(self, url: str, state: pathlib.Path, log: pathlib.Path) -> None:
        self.log = log
        args = ["--server", url, "--token", "tok-1", "--state-dir", str(state)]
        self.proc = subprocess.Popen(
            agent_cmd(*args, "--poll-wait", "2", "--settle", "1"),
            env=agent_env(),
            stdout=subprocess.DEVNULL,
            stderr=open(log, "a"),  # noqa: SIM115 - closed with the process
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def cleanup(client: Any, namespace: str, dpl_id: str) -> None:
    """Our containers, the proxy container, and the compose network of our deployment."""
    ours = {"label": f"io.reconciler.namespace={namespace}"}
    for c in client.containers.list(all=True, filters=ours):
        c.remove(force=True, v=True)
    for c in client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
        c.remove(force=True)
    project = {"label": f"com.docker.compose.project={dpl_id}"}
    for n in client.networks.list(filters=project):
        with contextlib.suppress(Exception):
            n.remove()


@pytest.fixture
def docker() -> Iterator[Any]:
    client = docker_client()
    yield client
    client.close()


def test_agent_installs_survives_kill_9_mid_update_and_uninstalls(
    make_repo: RepoFactory, tmp_path: pathlib.Path, docker: Any
) -> None:
    namespace = unique_namespace("agentd")
    port = free_port()
    root = make_repo(repo_files(namespace, port))
    blog = next(d for d in rendered_repo(root) if d.name == "blog")
    assert blog.domain is not None
    proxy = ProxyConfig(http_port=port, tls="off")
    plane = FakeControlPlane(tokens={"tok-1"})
    state = tmp_path / "state"
    log = tmp_path / "agent.log"

    def answer() -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": blog.domain}, timeout=5)

    def serves(text: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            r = answer()
            return r.status_code == 200 and text in r.text
        return False

    cleanup(docker, namespace, blog.id)
    with stub_server(plane) as stub:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        agent = AgentProcess(url, state, log)
        try:
            # 1. install, files from the bundle
            install = make_command(blog, cid="cmd_install", bundle=True, settle=1, proxy=proxy)
            plane.add(install, tar_of(root, "deployments/blog"))
            wait_until(lambda: "cmd_install" in plane.results, 300, "the install result")
            result = plane.results["cmd_install"]
            assert result.ok, f"{result.message}\n{result.logs}\n{agent.output()}"
            assert serves("hello from the bundle")
            reports = [r for r in plane.reports if blog.id in r["state"]["deployments"]]  # type: ignore[operator]
            assert reports, "no heartbeat carried the new deployment"

            # 2. update, killed with SIGKILL while it runs
            (root / "deployments/blog/public/index.html").write_text("<h1>version two</h1>\n")
            blog2 = next(d for d in rendered_repo(root) if d.name == "blog")
            assert blog2.spec_hash != blog.spec_hash
            update = make_command(
                blog2, cid="cmd_update", kind="update", bundle=True, settle=30, proxy=proxy
            )
            journal = state / "agent" / "commands" / "cmd_update.json"
            plane.add(update, tar_of(root, "deployments/blog"))
            wait_until(
                lambda: journal.exists() and json.loads(journal.read_text())["status"] == "running",
                120,
                "the update to start",
            )
            time.sleep(1.5)  # into compose up / the 30 s settle window
            assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
            assert "cmd_update" not in plane.results
            assert json.loads(journal.read_text())["status"] == "running"

            # 3. the restarted agent redoes it (the command is still unfinished); a short
            # settle this time, only to keep the test quick
            plane.add(update.model_copy(update={"settle_seconds": 1}))
            agent = AgentProcess(url, state, log)
            wait_until(lambda: "cmd_update" in plane.results, 300, "the redone update")
            result = plane.results["cmd_update"]
            assert result.ok, f"{result.message}\n{result.logs}\n{agent.output()}"
            entry = json.loads(journal.read_text())
            assert entry["attempts"] == 2 and entry["acked"]
            assert serves("version two")
            assert "interrupted earlier (attempt 1); redoing it" in agent.output()

            # 4. uninstall: the proxy no longer routes it, data kept
            gone = make_command(blog2, cid="cmd_gone", kind="uninstall", settle=1)
            plane.add(gone.model_copy(update={"proxy": None}))
            wait_until(lambda: "cmd_gone" in plane.results, 120, "the uninstall result")
            assert plane.results["cmd_gone"].ok, plane.results["cmd_gone"].message
            assert answer().status_code == 404
            assert not docker.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={blog.id}"}
            )
            assert agent.stop() == 0
            assert "stopped" in agent.output()
        finally:
            agent.stop()
            cleanup(docker, namespace, blog.id)


def test_a_bundle_with_the_repositorys_inner_symlinks_is_served(
    make_repo: RepoFactory, tmp_path: pathlib.Path, docker: Any
) -> None:
    """Server and agent agree on links: ``build_bundle`` ships the repository's links
    that point inside (a file link and a directory link), the agent unpacks them as links,
    the executor copies them into the app dir, and httpd serves through them."""
    from reconciler.server.worker import build_bundle

    namespace = unique_namespace("agentl")
    port = free_port()
    root = make_repo(repo_files(namespace, port))
    public = root / "deployments/blog/public"
    (public / "v2").mkdir()
    (public / "v2/page.html").write_text("<h1>through the links</h1>\n")
    (public / "index.html").unlink()
    (public / "index.html").symlink_to("v2/page.html")
    (public / "current").symlink_to("v2")
    blog = next(d for d in rendered_repo(root) if d.name == "blog")
    assert blog.domain is not None
    archive = tmp_path / "cmd_links.tar"
    build_bundle(root, blog.shipped_dirs(), archive)
    plane = FakeControlPlane(tokens={"tok-1"})
    proxy = ProxyConfig(http_port=port, tls="off")
    plane.add(
        make_command(blog, cid="cmd_links", bundle=True, settle=1, proxy=proxy),
        archive.read_bytes(),
    )
    state = tmp_path / "state"

    def get(path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Host": blog.domain}, timeout=5)

    cleanup(docker, namespace, blog.id)
    with stub_server(plane) as stub:
        agent = AgentProcess(
            f"http://127.0.0.1:{stub.server_address[1]}", state, tmp_path / "a.log"
        )
        try:
            wait_until(lambda: "cmd_links" in plane.results, 300, "the install result")
            result = plane.results["cmd_links"]
            assert result.ok, f"{result.message}\n{result.logs}\n{agent.output()}"
            app = state / "apps" / blog.id
            assert (app / "public/index.html").is_symlink()
            assert (app / "public/current").resolve() == (app / "public/v2").resolve()

            def page() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return get("/").status_code == 200
                return False

            wait_until(page, 60, "the page")
            assert "through the links" in get("/").text
            assert "through the links" in get("/current/page.html").text
        finally:
            agent.stop()
            cleanup(docker, namespace, blog.id)
