"""A real control plane and a real agent on this host, for end-to-end tests and benchmarks.

Everything is a real process: ``python -m reconciler serve`` watching a local bare git
repository, ``python -m agent.daemon`` applying onto the local Docker Engine behind the
Caddy proxy.  The desired state is pushed with the ``git`` CLI, announced with a signed
webhook, and checked by fetching the app through the proxy on 127.0.0.1 (never a
container address).  Used by ``tests/e2e`` and ``benchmarks/push_to_serving.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "adm-" + "0" * 8 + "e2e"
WEBHOOK_SECRET = "It's a Secret to Everybody"
GITLAB_TOKEN = "gl-e2e-token"

# A busybox httpd app serving the deployment's ``public/`` (bundled), on the proxy network:
# the app the agent/server end-to-end tests deploy (tests/e2e, tests/replicas).
HTTPD_COMPOSE = """\
    services:
      app:
        image: busybox:1.36
        container_name: ${DEPLOYMENT_ID}-app
        init: true
        restart: unless-stopped
        command: [httpd, -f, -p, "80", -h, /seed]
        volumes: ["./public:/seed:ro"]
        healthcheck: {test: [CMD, "true"], interval: 2s}
        networks: [default, impreza-proxy]
    networks:
      impreza-proxy: {external: true}
"""


def git(cwd: pathlib.Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECONCILE_ADMIN_TOKEN": ADMIN_TOKEN,
        "RECONCILE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RECONCILE_GITLAB_TOKEN": GITLAB_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }


def wait_for(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    """One bare repository, one server, one agent; torn down with everything they ran."""

    base: pathlib.Path
    namespace: str = field(default_factory=lambda: f"e2e-{secrets.token_hex(3)}")
    server_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    heartbeat: float = 1.0
    http: httpx.Client = field(default_factory=httpx.Client)  # one pool: no per-call set-up
    server: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    agent_id: str = ""

    def __post_init__(self) -> None:
        self.origin = self.base / "origin.git"
        self.work = self.base / "work"
        self.data_dir = self.base / "server-data"
        self.state_dir = self.base / "agent-state"
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        git(self.base, "init", "-q", "--bare", "-b", "main", str(self.origin))
        git(self.base, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.origin))

    # ------------------------------------------------------------ processes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def start_server(
        self,
        poll_interval: float = 0,
        log_format: str | None = None,
        *,
        config: pathlib.Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log = open(self.logs / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [
            sys.executable, "-m", "reconciler", "serve",
            "--source", str(self.origin),
            "--branch", "main",
            "--data-dir", str(self.data_dir),
            "--host", "127.0.0.1",
            "--port", str(self.server_port),
            "--poll-interval", str(poll_interval),
            "--heartbeat", str(self.heartbeat),
        ]  # fmt: skip
        if config is not None:
            cmd += ["--config", str(config)]
        if log_format:
            cmd += ["--log-format", log_format]
        self.server = subprocess.Popen(
            cmd,
            env={**_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200,
            30,
            "the server's /healthz",
        )

    def stop_agent(self) -> None:
        self._stop(self.agent, signal.SIGTERM)
        self.agent = None

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        self._stop(self.server, sig)
        self.server = None

    def agent_token(self) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "agent",
                "token",
                "--data-dir",
                str(self.data_dir),
            ],
            env=_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().splitlines()[-1].strip()

    def start_agent(
        self,
        token: str | None = None,
        settle: float = 1.0,
        repair_interval: float = 2.0,
        log_format: str | None = None,
    ) -> None:
        log = open(self.logs / "agent.log", "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [
            sys.executable, "-m", "agent.daemon",
            "--server", self.url,
            "--state-dir", str(self.state_dir),
            "--poll-wait", "10",
            "--settle", str(settle),
            "--repair-interval", str(repair_interval),
        ]  # fmt: skip
        if token:
            cmd += ["--token", token]
        if log_format:
            cmd += ["--log-format", log_format]
        self.agent = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        creds = self.state_dir / "agent" / "credentials.json"
        wait_for(creds.exists, 30, "the agent's credentials file")
        self.agent_id = json.loads(creds.read_text())["agent_id"]

    def kill_agent(self) -> None:
        self._stop(self.agent, signal.SIGKILL)
        self.agent = None

    def _stop(self, proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # ------------------------------------------------------------ the repository

    def write(self, rel: str, text: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def hello_repo(self, greeting: str, domain: str | None = None) -> None:
        """A one-app repository: the catalog `hello` app on this cluster's agent."""
        self.write(
            "reconcile.yaml",
            f"namespace: {self.namespace}\n"
            f"agents:\n  host1: {self.agent_id}\n"
            "base_domain: localhost\n"
            f"proxy:\n  http_port: {self.proxy_port}\n  tls: off\n",
        )
        self.write(
            "deployments/hello.yaml",
            "name: hello\nagent: host1\napp: hello\n"
            f"domain: {domain or self.domain}\n"
            f"vars:\n  greeting: {greeting}\n",
        )

    @property
    def domain(self) -> str:
        return f"hello-{self.namespace}.localhost"

    def commit_and_push(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    # ------------------------------------------------------------ webhooks

    def github_push(
        self, sha: str, *, branch: str = "main", delivery: str | None = None
    ) -> httpx.Response:
        body = json.dumps(
            {
                "ref": f"refs/heads/{branch}",
                "before": "0" * 40,
                "after": sha,
                "deleted": False,
                "repository": {"full_name": "e2e/repo"},
            }
        ).encode()
        sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return self.http.post(
            self.url + "/hooks/github",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                "X-Hub-Signature-256": "sha256=" + sig,
            },
            timeout=10,
        )

    def gitea_push(self, sha: str) -> httpx.Response:
        body = json.dumps({"ref": "refs/heads/main", "before": "0" * 40, "after": sha}).encode()
        sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return self.http.post(
            self.url + "/hooks/gitea",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Gitea-Event": "push",
                "X-Gitea-Delivery": str(uuid.uuid4()),
                "X-Gitea-Signature": sig,
            },
            timeout=10,
        )

    def gitlab_push(self, sha: str) -> httpx.Response:
        body = json.dumps(
            {"object_kind": "push", "ref": "refs/heads/main", "before": "0" * 40, "after": sha}
        ).encode()
        return self.http.post(
            self.url + "/hooks/gitlab",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Gitlab-Event": "Push Hook",
                "X-Gitlab-Token": GITLAB_TOKEN,
                "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            },
            timeout=10,
        )

    def bitbucket_push(self, sha: str) -> httpx.Response:
        body = json.dumps(
            {
                "push": {
                    "changes": [
                        {
                            "new": {"type": "branch", "name": "main", "target": {"hash": sha}},
                            "old": {"type": "branch", "name": "main"},
                        }
                    ]
                }
            }
        ).encode()
        sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return self.http.post(
            self.url + "/hooks/bitbucket",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Event-Key": "repo:push",
                "X-Request-UUID": str(uuid.uuid4()),
                "X-Hub-Signature": "sha256=" + sig,
            },
            timeout=10,
        )

    # ------------------------------------------------------------ observing

    def admin(self, path: str) -> Any:
        r = httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        r.raise_for_status()
        return r.json()

    def settled(self, name: str = "hello", timeout: float = 120) -> None:
        """Wait until the agent has finished the deployment's last command (settle gate,
        health hook, probe) and reported the result: serving starts before that."""

        def done() -> bool:
            rows = self.admin("/v1/deployments")["deployments"]
            row = next((d for d in rows if d["name"] == name), None)
            last = (row or {}).get("last_command") or {}
            return bool(row and row["in_sync"] and last.get("state") == "done")

        wait_for(done, timeout, f"{name}'s deploy to finish and be reported", step=0.1)

    def serves(self, text: str, domain: str | None = None) -> bool:
        r = httpx.get(
            f"http://127.0.0.1:{self.proxy_port}/",
            headers={"Host": domain or self.domain},
            timeout=2,
        )
        return r.status_code == 200 and text in r.text

    def metric(self, name: str) -> float:
        """Sum of every sample of one Prometheus metric (all label sets)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head = line.split(" ")[0]
                if head == name or head.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def dump_logs(self) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def teardown(self) -> None:
        self.http.close()
        self._stop(self.agent, signal.SIGTERM)
        self._stop(self.server, signal.SIGTERM)
        with contextlib.suppress(Exception):
            import docker

            client = docker.from_env()
            for c in client.containers.list(
                all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
            ):
                c.remove(force=True, v=True)
            # A test that named its own proxy (RECONCILE_PROXY_CONTAINER) removes only it;
            # otherwise only this cluster's proxy (its state dir is mounted): other runs on
            # the same daemon have theirs.
            own = os.environ.get("RECONCILE_PROXY_CONTAINER")
            only = {"name": f"^{own}$"} if own else {"label": "io.reconciler.role=proxy"}
            for c in client.containers.list(all=True, filters=only):
                mounts = [m.get("Source", "") for m in c.attrs.get("Mounts", [])]
                if own or any(m.startswith(str(self.state_dir.resolve())) for m in mounts):
                    c.remove(force=True)
            for net in client.networks.list(filters={"label": "com.docker.compose.network"}):
                if net.name.startswith("dpl_") and not net.containers:
                    with contextlib.suppress(Exception):
                        net.remove()
            client.close()


@contextlib.contextmanager
def running_cluster(base: pathlib.Path) -> Iterator[Cluster]:
    cluster = Cluster(base)
    try:
        yield cluster
    finally:
        cluster.teardown()
