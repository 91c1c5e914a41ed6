"""What the production-kit tests share: the image they run, waiting on real services, git as
the server's uid, subprocesses that fail with their stderr, the images checked and a
scratch dir made (``kit_dir``), and one Compose project of a kit (``ComposeKit``): its
repository, secrets, Caddy's CA, signed pushes and logs."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pytest

from tests.agent.docker_helpers import docker_client
from tests.conftest import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"compose-reconciler:{VERSION}"
SERVER_UID = 10001  # the image's `reconcile` user
DOMAIN = "localhost"  # Caddy's internal CA certifies it; no ACME, no DNS
CADDY_ROOT_CA = "/data/caddy/pki/authorities/local/root.crt"


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first truthy answer; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, subprocess.CalledProcessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def git(cwd: pathlib.Path, *args: str) -> str:
    """git as the server's uid: the repositories are its own, as on a real host where the
    server's user owns what it serves (git refuses a repository owned by someone else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(cwd),
        GIT_AUTHOR_NAME="deploy-test",
        GIT_AUTHOR_EMAIL="deploy-test@example.invalid",
        GIT_COMMITTER_NAME="deploy-test",
        GIT_COMMITTER_EMAIL="deploy-test@example.invalid",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    as_server = ["setpriv", f"--reuid={SERVER_UID}", f"--regid={SERVER_UID}", "--clear-groups"]
    return subprocess.run(
        [*as_server, "git", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def published(ps_json: str) -> list[dict[str, Any]]:
    """The published ports in ``docker compose ps --format json`` (one object per line in
    Compose >= 2.21, one array before)."""
    return [
        p
        for line in ps_json.splitlines()
        if line.strip()
        for row in ([json.loads(line)] if line.lstrip().startswith("{") else json.loads(line))
        for p in row.get("Publishers") or []
        if p.get("PublishedPort")
    ]


@contextlib.contextmanager
def kit_dir(prefix: str, *images: str) -> Iterator[tuple[Any, pathlib.Path]]:
    """A Docker client, once every one of ``images`` is there (else the test fails and says
    how to build them), and a fresh dir under /tmp: short, as the agent's proxy admin socket
    lives below it (sun_path is 108 bytes), and 0755, so the containers' users reach into
    it.  The client is closed and the dir removed afterwards."""
    client = docker_client()
    try:
        for image in images:
            try:
                client.images.get(image)
            except Exception:
                pytest.fail(f"image {image} is missing: run `bash scripts/setup.sh --docker`")
        base = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        try:
            base.chmod(0o755)
            yield client, base
        finally:
            # root removes what the containers' users left (a database cluster, say)
            shutil.rmtree(base, ignore_errors=True)
    finally:
        client.close()


@dataclass
class ComposeKit:
    """One Compose project of a production kit under a unique name, published on 127.0.0.1
    only: ``compose_file`` with the test's ``test.yaml`` over it, the desired-state
    repository, the secrets and Caddy's root certificate in ``base``."""

    compose_file: ClassVar[pathlib.Path]
    prefix: ClassVar[str]

    base: pathlib.Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.project = f"{self.prefix}-{self.suffix}"
        self.namespace = f"{self.prefix}-{self.suffix}"
        self.origin = self.base / "origin.git"
        self.work = self.base / "work"
        self.secrets = self.base / "secrets"
        self.ca = self.base / "caddy-root.crt"
        self.admin_token = secrets.token_hex(16)
        self.webhook_secret = secrets.token_hex(16)

    @property
    def compose_env(self) -> dict[str, str]:
        """The kit's variables, and none of the caller's that Compose or the database read."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "POSTGRES_"))}
        env.update(
            RECONCILE_DOMAIN=DOMAIN,
            RECONCILE_SOURCE=self.origin.as_uri(),
            RECONCILE_BRANCH="main",
            RECONCILE_VERSION=VERSION,
            RECONCILE_SECRETS_DIR=str(self.secrets),
            RECONCILE_HTTPS_BIND=f"127.0.0.1:{self.https_port}",
            RECONCILE_HTTP_BIND=f"127.0.0.1:{self.http_port}",
        )
        return env

    def compose_args(self, *args: str) -> list[str]:
        files = ["-f", str(self.compose_file), "-f", str(self.base / "test.yaml")]
        return ["docker", "compose", "-p", self.project, *files, *args]

    def compose(self, *args: str, timeout: float = 300) -> str:
        return run(*self.compose_args(*args), env=self.compose_env, timeout=timeout)

    def init_repo(self, files: dict[str, str]) -> str:
        """The desired-state repository with ``files`` as its first commit: a bare one the
        server reads (the test mounts it) and a work tree that pushes to it, both owned by
        the server's uid."""
        for d in (self.origin, self.work):
            d.mkdir()
            os.chown(d, SERVER_UID, SERVER_UID)
        git(self.origin, "init", "-q", "--bare", "-b", "main")
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", str(self.origin))
        return self.commit_and_push(files)

    def commit_and_push(self, files: dict[str, str]) -> str:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chown(path.parent, SERVER_UID, SERVER_UID)
            path.write_text(text)
            os.chown(path, SERVER_UID, SERVER_UID)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "change")
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def write_secrets(self, **more: tuple[str, int]) -> None:
        """As the compose files' headers say: the server's admin token and webhook secret
        owned by its uid, and ``more`` (name: (text, owner uid)), all 0400."""
        self.secrets.mkdir()
        owned = {
            "admin_token": (self.admin_token + "\n", SERVER_UID),
            "webhook_secret": (self.webhook_secret + "\n", SERVER_UID),
            **more,
        }
        for name, (text, uid) in owned.items():
            path = self.secrets / name
            path.write_text(text)
            os.chown(path, uid, 0)
            path.chmod(0o400)

    def up(self, wait: int) -> list[dict[str, Any]]:
        """``up --wait``, the logs in the error if it fails; the published ports, each
        checked to be on 127.0.0.1 only."""
        try:
            self.compose("up", "-d", "--wait", "--wait-timeout", str(wait), timeout=wait + 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        ports = published(self.compose("ps", "--format", "json"))
        assert ports and all(p["URL"] == "127.0.0.1" for p in ports), ports
        return ports

    def fetch_ca(self) -> None:
        """Caddy's own root certificate, which signs ``localhost``: the one the test trusts."""
        cert = wait_for(
            lambda: self.compose("exec", "-T", "caddy", "cat", CADDY_ROOT_CA, timeout=60),
            60,
            "Caddy's local root CA",
        )
        self.ca.write_text(cert)

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """``wait_for``, with the project's logs in the error."""
        try:
            return wait_for(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def signed_push(self, sha: str, delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of GitHub's push webhook for ``sha`` on main, signed with
        the kit's secret."""
        body = json.dumps(
            {"ref": "refs/heads/main", "before": "0" * 40, "after": sha, "deleted": False}
        ).encode()
        signature = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        return body, {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={signature}",
        }

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            return self.compose("logs", "--no-color", "--tail", "60", timeout=60)
        return "(no logs)"

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=120)

    def leftovers(self) -> str:
        """The ids of the project's containers, volumes and networks that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        return "".join(
            run("docker", *kind, "-q", "--filter", label)
            for kind in (("ps", "-a"), ("volume", "ls"), ("network", "ls"))
        )
