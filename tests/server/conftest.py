"""Fixtures for the control plane: a real git remote holding a desired-state repository,
a data dir with a real SQLite store, and the wired control plane (app + worker)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reconciler.server.app import ControlPlane, build_control_plane
from reconciler.server.config import ServerConfig, ServerSecrets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
ADMIN = "admin-token-for-tests"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(cwd: pathlib.Path, *args: str) -> str:
    """The git CLI, to BUILD fixtures (the code under test goes through reconciler.load)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV)
    done = subprocess.run(
        ["git", "-c", "protocol.file.allow=always", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


class Remote:
    """A work tree that pushes to a bare repository: the server's ``--source``."""

    def __init__(self, root: pathlib.Path) -> None:
        self.bare = root / "desired.git"
        self.work = root / "desired-work"
        git(root, "init", "--quiet", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "--quiet", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.url = self.bare.as_uri()

    def write(self, files: dict[str, str | None]) -> None:
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(content))

    def commit(self, files: dict[str, str | None] | None = None, message: str = "change") -> str:
        self.write(files or {})
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "origin", "HEAD")
        return git(self.work, "rev-parse", "HEAD")


def examples_for(agent: str, namespace: str = "srv") -> dict[str, str]:
    """The example deployments (image, catalog, inline manifest, compose, Dockerfile) moved
    from ``local`` onto the agent alias ``host1`` -> ``agent``."""
    files: dict[str, str] = {}
    for path in sorted((EXAMPLES / "deployments").rglob("*")):
        if path.is_file():
            rel = path.relative_to(EXAMPLES).as_posix()
            text = path.read_text()
            if path.suffix == ".yaml" and "agent: local" in text:
                text = text.replace("agent: local", "agent: host1")
            files[rel] = text
    files["reconcile.yaml"] = (
        f"namespace: {namespace}\nagents:\n  host1: {agent}\n"
        "proxy:\n  http_port: 18080\n  tls: off\n"
    )
    return files


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> Remote:
    r = Remote(tmp_path)
    r.commit({"reconcile.yaml": "namespace: srv\n", "deployments/.keep": ""}, "empty repo")
    return r


def make_config(remote: Remote, data_dir: pathlib.Path, **extra: object) -> ServerConfig:
    values: dict[str, object] = {
        "source": remote.url,
        "data_dir": data_dir,
        "poll_interval": 0,
        "heartbeat": 10.0,
    }
    values.update(extra)
    return ServerConfig.model_validate(values)


@pytest.fixture
def plane(remote: Remote, tmp_path: pathlib.Path) -> Iterator[ControlPlane]:
    """The control plane with its worker running (no timer), admin token set."""
    p = build_control_plane(
        make_config(remote, tmp_path / "data"), ServerSecrets(admin_token=ADMIN)
    )
    p.worker.start()
    assert p.worker.wait_idle(60)
    yield p
    p.worker.stop()
    p.store.close()


def copy_examples(dest: pathlib.Path) -> pathlib.Path:
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns("invalid", "upstream"))
    return dest


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    """The control plane's app in process (FastAPI's TestClient, lifespan run)."""
    with TestClient(plane.app) as c:
        yield c
