"""End to end: ``reconcile serve`` and ``reconcile-agent`` as real processes, real Docker.

A local bare git repository is the server's ``--source``; the agent bootstraps with a
one-time token from the admin API; a push (then ``POST /v1/reconcile``) deploys a compose
manifest, whose files travel in the command's bundle, onto the agent, and the app answers
through the proxy on 127.0.0.1.  Then an update is pushed and the agent is killed with
SIGKILL in the middle of it: the restarted agent (no token needed any more) gets the
unfinished command again, redoes it, and the deployment converges.

Only busybox and caddy images; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx
import pytest

from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import REPO_ROOT, free_port
from tests.e2e.cluster import HTTPD_COMPOSE

pytestmark = pytest.mark.docker

ADMIN = "e2e-admin-token"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "E2E",
    "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
    "GIT_COMMITTER_NAME": "E2E",
    "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

BLOG_DEPLOYMENT = """\
    name: blog
    agent: host1
    compose: ./compose.yaml
    routes:
      - upstream: "{deployment_id}-app:80"
        match_var: domain
"""


def wait_for(check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError, TypeError):
            value = check()
            if value:
                return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")


def git(cwd: pathlib.Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**env, **GIT_ENV}, capture_output=True, text=True
    )
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


class Remote:
    """A work tree pushing to a local bare repository: the server's ``--source``."""

    def __init__(self, root: pathlib.Path) -> None:
        self.bare = root / "desired.git"
        self.work = root / "desired-work"
        git(root, "init", "--quiet", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "--quiet", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    def commit(self, files: dict[str, str], message: str) -> None:
        for rel, content in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(content))
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", "origin", "main")


class Proc:
    """A child process with its stderr in a file (shown when something times out)."""

    def __init__(self, args: list[str], log: pathlib.Path, env: dict[str, str]) -> None:
        self.log = log
        self._fh: IO[str] = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._fh, stderr=subprocess.STDOUT, text=True
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._fh.close()
        return code


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


class Fleet:
    """One control plane and one agent on this host, with everything they made removed."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.namespace = unique_namespace("e2e")
        self.proxy_port = free_port()
        self.server_port = free_port()
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.remote = Remote(base)
        self.state = base / "agent-state"
        self.docker = docker_client()
        self.server: Proc | None = None
        self.agent: Proc | None = None

    def logs(self) -> str:
        parts = []
        for name, proc in (("server", self.server), ("agent", self.agent)):
            if proc is not None:
                parts.append(
                    f"--- {name} log (tail) ---\n" + "\n".join(proc.output().splitlines()[-60:])
                )
        return "\n".join(parts)

    def start_server(self) -> None:
        args = [
            sys.executable, "-m", "reconciler", "serve",
            "--source", self.remote.bare.as_uri(), "--data-dir", str(self.base / "data"),
            "--host", "127.0.0.1", "--port", str(self.server_port),
            "--poll-interval", "0", "--heartbeat", "2",
        ]  # fmt: skip
        self.server = Proc(args, self.base / "server.log", child_env(RECONCILE_ADMIN_TOKEN=ADMIN))
        wait_for(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
            60,
            "the control plane to answer /healthz",
            self.logs,
        )

    def admin(self, method: str, path: str) -> Any:
        response = httpx.request(
            method, self.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json()

    def start_agent(self, *extra: str, token: str | None = None) -> None:
        args = [sys.executable, "-m", "agent.daemon", "--state-dir", str(self.state)]
        args += ["--poll-wait", "5", *extra]
        env = child_env(RECONCILE_SERVER=self.url)
        if token:
            env["RECONCILE_AGENT_TOKEN"] = token
        self.agent = Proc(args, self.base / "agent.log", env)

    def agent_id(self) -> str:
        creds = self.state / "agent" / "credentials.json"
        return str(
            wait_for(
                lambda: json.loads(creds.read_text())["agent_id"], 60, "credentials", self.logs
            )
        )

    def deployment(self, name: str) -> dict[str, Any]:
        """The status API's view of one deployment ({} until the server planned it)."""
        views = self.admin("GET", "/v1/deployments")
        items = views["deployments"] if isinstance(views, dict) else views
        return next((d for d in items if d["name"] == name), {})

    def get(self, domain: str) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.proxy_port}/", headers={"Host": domain}, timeout=5
        )

    def cleanup(self) -> None:
        for proc in (self.agent, self.server):
            if proc is not None:
                proc.stop(signal.SIGKILL, timeout=10)
        ours = {"label": f"io.reconciler.namespace={self.namespace}"}
        projects = set()
        for c in self.docker.containers.list(all=True, filters=ours):
            projects.add(c.labels.get("com.docker.compose.project", ""))
            c.remove(force=True, v=True)
        for c in self.docker.containers.list(
            all=True, filters={"label": "io.reconciler.role=proxy"}
        ):
            c.remove(force=True)
        for project in projects - {""}:
            for n in self.docker.networks.list(
                filters={"label": f"com.docker.compose.project={project}"}
            ):
                with contextlib.suppress(Exception):
                    n.remove()
        self.docker.close()


@pytest.fixture
def fleet(tmp_path: pathlib.Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.cleanup()


def test_push_deploys_through_the_agent_and_a_killed_agent_converges(fleet: Fleet) -> None:
    fleet.remote.commit(
        {"reconcile.yaml": f"namespace: {fleet.namespace}\n", "deployments/.keep": ""}, "empty"
    )
    fleet.start_server()
    token = fleet.admin("POST", "/v1/agent-tokens")["token"]
    # A long settle window on the first agent: the update below is killed inside it.
    fleet.start_agent("--settle", "8", token=token)
    agent_id = fleet.agent_id()
    assert agent_id.startswith("agt_")

    files = {
        "reconcile.yaml": f"""\
            namespace: {fleet.namespace}
            agents: {{host1: {agent_id}}}
            proxy: {{http_port: {fleet.proxy_port}, tls: off}}
        """,
        "deployments/blog/deployment.yaml": BLOG_DEPLOYMENT,
        "deployments/blog/compose.yaml": HTTPD_COMPOSE,
        "deployments/blog/public/index.html": "<h1>version one</h1>\n",
    }
    fleet.remote.commit(files, "blog on host1")
    fleet.admin("POST", "/v1/reconcile")

    blog = wait_for(lambda: fleet.deployment("blog").get("url"), 60, "the blog's plan", fleet.logs)
    domain = blog.split("://", 1)[1].split(":")[0].split("/")[0]
    wait_for(
        lambda: "version one" in fleet.get(domain).text,
        240,
        "blog v1 through the proxy",
        fleet.logs,
    )
    view = wait_for(
        lambda: (d := fleet.deployment("blog")) and d["last_command"]["state"] != "pending" and d,
        60,
        "the install's result",
        fleet.logs,
    )
    assert view["last_command"]["result"]["ok"], view
    install_id = view["last_command"]["id"]

    # Push an update and kill the agent with SIGKILL while it runs.
    fleet.remote.commit({"deployments/blog/public/index.html": "<h1>version two</h1>\n"}, "v2")
    fleet.admin("POST", "/v1/reconcile")
    journal = fleet.state / "agent" / "commands"

    def running_update() -> str | None:
        for path in journal.glob("cmd_*.json"):
            entry = json.loads(path.read_text())
            if entry["id"] != install_id and entry["status"] == "running":
                return str(entry["id"])
        return None

    update_id = wait_for(running_update, 120, "the update to start on the agent", fleet.logs)
    time.sleep(2)  # well inside the 8 s settle window (or compose up before it)
    assert fleet.agent is not None
    assert fleet.agent.stop(signal.SIGKILL) == -signal.SIGKILL
    assert json.loads((journal / f"{update_id}.json").read_text())["status"] == "running"
    assert fleet.deployment("blog")["last_command"]["state"] == "pending"

    # The restarted agent needs no token; it gets the unfinished command again.
    fleet.start_agent("--settle", "1")
    wait_for(
        lambda: "version two" in fleet.get(domain).text,
        240,
        "blog v2 after the restart",
        fleet.logs,
    )
    view = wait_for(
        lambda: (
            (d := fleet.deployment("blog"))["in_sync"]
            and d["last_command"]["state"] != "pending"
            and d
        ),
        120,
        "the deployment to converge",
        fleet.logs,
    )
    assert view["last_command"]["id"] == update_id, view
    assert view["last_command"]["result"]["ok"], view
    # The agent journals the ack once the server's answer is back: after the server shows it.
    entry = wait_for(
        lambda: (e := json.loads((journal / f"{update_id}.json").read_text()))["acked"] and e,
        30,
        "the agent to journal the server's ack",
        fleet.logs,
    )
    assert entry["attempts"] == 2 and entry["status"] == "done" and entry["acked"]
    assert "interrupted earlier (attempt 1); redoing it" in fleet.agent.output()
    assert "bootstrapped" in fleet.agent.output()  # once, by the first process only
    assert fleet.agent.output().count("bootstrapped") == 1
    assert fleet.agent.stop() == 0
