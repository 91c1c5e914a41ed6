"""The git kind for real: a deployment built from a commit of a local bare repository.

The plan resolves `git_ref` to a sha; the agent fetches exactly that commit (hooks off),
builds it, and the app answers through the proxy.  A new commit on the branch is an
update whose change is the source revision.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import httpx
import pytest

from tests.agent.test_apply_docker import RECONCILE, _docker_client
from tests.conftest import free_port

pytestmark = pytest.mark.docker

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(*args: str, cwd: pathlib.Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_site(work: pathlib.Path, body: str) -> str:
    (work / "index.html").write_text(body)
    git("add", "-A", cwd=work)
    git("commit", "-qm", body, cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_git_deployment_builds_the_resolved_commit(tmp_path: pathlib.Path) -> None:
    client = _docker_client()
    bare = tmp_path / "app.git"
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, env=GIT_ENV)
    (work / "Dockerfile").write_text(
        "FROM busybox:1.36\nCOPY index.html /www/index.html\n"
        'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]\n'
    )
    first = commit_site(work, "first commit")

    port = free_port()
    repo = tmp_path / "repo"
    (repo / "deployments").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text(
        f"namespace: gittest\nproxy: {{tls: off, http_port: {port}}}\n"
    )
    (repo / "deployments" / "bot.yaml").write_text(
        f"name: bot\ngit_url: file://{bare}\ngit_ref: main\ndomain: bot.localhost\n"
        "cpus: 0.25\nmemory_mb: 32\n"
    )
    env = {**os.environ, "RECONCILE_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}

    def reconcile(*args: str) -> dict:  # type: ignore[type-arg]
        proc = subprocess.run(
            [*RECONCILE, *args], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    try:
        plan = reconcile("plan", str(repo), "--against", "empty", "-f", "json")
        assert [a["action"] for a in plan["actions"]] == ["install"]
        result = reconcile("apply", str(repo), "--yes", "-f", "json")
        assert [r["ok"] for r in result["results"]] == [True], result["results"]
        served = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "bot.localhost"})
        assert served.status_code == 200
        assert served.text == "first commit"

        second = commit_site(work, "second commit")
        assert second != first
        plan = reconcile("plan", str(repo), "--against", "local", "-f", "json")
        (action,) = plan["actions"]
        assert action["action"] == "update"
        assert action["changes"][0]["field"] == "source_revision"
        assert action["changes"][0]["before"] == first[:12]
        assert action["changes"][0]["after"] == second[:12]
        reconcile("apply", str(repo), "--yes", "-f", "json")
        served = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "bot.localhost"})
        assert served.text == "second commit"
    finally:
        for c in client.containers.list(
            all=True, filters={"label": "io.reconciler.namespace=gittest"}
        ):
            c.remove(force=True)
        for c in client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
            c.remove(force=True)
