"""Every secret the server and the agent read from ``NAME`` may come from the file
``NAME_FILE`` names (Docker/Compose secrets, systemd credentials).

The rule is unit-tested on a mapping; then ``reconcile serve`` runs for real (uvicorn on a
127.0.0.1 port) with only ``*_FILE`` variables set, and must accept the admin token, a
GitHub signature and a GitLab token read from those files; and ``reconcile-agent`` joins
it with a bootstrap token read from ``RECONCILE_AGENT_TOKEN_FILE``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from reconciler.model.secretenv import MAX_SECRET_BYTES, SecretEnvError, secret_from_env
from reconciler.server.config import ServerSecrets
from tests.conftest import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET_VARS = ("RECONCILE_ADMIN_TOKEN", "RECONCILE_WEBHOOK_SECRET", "RECONCILE_GITLAB_TOKEN")


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ the rule


def test_the_variable_itself_still_works() -> None:
    assert secret_from_env("TOKEN", {"TOKEN": "abc"}) == "abc"
    assert secret_from_env("TOKEN", {}) is None
    assert secret_from_env("TOKEN", {"TOKEN": ""}) is None


def test_the_file_form_drops_one_trailing_newline(tmp_path: pathlib.Path) -> None:
    f = _write(tmp_path / "t", "s3cret\n")
    assert secret_from_env("TOKEN", {"TOKEN_FILE": str(f)}) == "s3cret"
    _write(f, "s3cret\r\n")
    assert secret_from_env("TOKEN", {"TOKEN_FILE": str(f)}) == "s3cret"
    _write(f, "two\nlines\n\n")  # only one newline is the file's; the rest is the value
    assert secret_from_env("TOKEN", {"TOKEN_FILE": str(f)}) == "two\nlines\n"
    _write(f, "  spaced  ")
    assert secret_from_env("TOKEN", {"TOKEN_FILE": str(f)}) == "  spaced  "
    _write(f, "\n")
    assert secret_from_env("TOKEN", {"TOKEN_FILE": str(f)}) is None


def test_both_forms_set_is_refused(tmp_path: pathlib.Path) -> None:
    f = _write(tmp_path / "t", "from-file")
    with pytest.raises(SecretEnvError, match="both TOKEN and TOKEN_FILE are set"):
        secret_from_env("TOKEN", {"TOKEN": "inline", "TOKEN_FILE": str(f)})


def test_an_unreadable_file_is_refused_with_its_name(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SecretEnvError, match=f"TOKEN_FILE={missing}: cannot read it"):
        secret_from_env("TOKEN", {"TOKEN_FILE": str(missing)})
    with pytest.raises(SecretEnvError, match="cannot read it"):
        secret_from_env("TOKEN", {"TOKEN_FILE": str(tmp_path)})  # a directory
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretEnvError, match="larger than"):
        secret_from_env("TOKEN", {"TOKEN_FILE": str(big)})
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(SecretEnvError, match="not UTF-8"):
        secret_from_env("TOKEN", {"TOKEN_FILE": str(binary)})


def test_every_server_secret_has_a_file_form(tmp_path: pathlib.Path) -> None:
    env = {f"{v}_FILE": str(_write(tmp_path / v, f"{v.lower()}\n")) for v in SECRET_VARS}
    secrets = ServerSecrets.from_env(env)
    assert secrets.admin_token == "reconcile_admin_token"
    assert secrets.webhook_secret == b"reconcile_webhook_secret"
    assert secrets.gitlab_token == "reconcile_gitlab_token"
    env["RECONCILE_GITLAB_TOKEN"] = "also"
    with pytest.raises(SecretEnvError, match="RECONCILE_GITLAB_TOKEN"):
        ServerSecrets.from_env(env)


# ------------------------------------------------------------------ for real


def _git(cwd: pathlib.Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECONCILE_ADMIN", "RECONCILE_WEBHOOK", "RECONCILE_GITLAB"))
        and not k.startswith("RECONCILE_AGENT_TOKEN")
    }
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path, dict[str, str]]]:
    """``reconcile serve`` with its three secrets given only as ``*_FILE``."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    values = {v: f"{v.lower()}-{uuid.uuid4().hex[:8]}" for v in SECRET_VARS}
    env = _clean_env(
        **{f"{v}_FILE": str(_write(secrets_dir / v, values[v] + "\n")) for v in SECRET_VARS}
    )
    repo = tmp_path / "desired"
    (repo / "deployments").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text("namespace: secrets-test\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "empty")
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "serve",
                "--source",
                str(repo),
                "--port",
                str(port),
                "--data-dir",
                str(data),
                "--poll-interval",
                "0",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, data, values
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not any(v in log.read_text() for v in values.values())  # never logged


def test_serve_reads_its_secrets_from_files(
    served: tuple[str, pathlib.Path, dict[str, str]],
) -> None:
    url, _, values = served
    admin = values["RECONCILE_ADMIN_TOKEN"]
    assert httpx.get(url + "/v1/deployments", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(url + "/v1/deployments", headers=wrong, timeout=10).status_code == 401
    ok = {"Authorization": f"Bearer {admin}"}
    assert httpx.get(url + "/v1/deployments", headers=ok, timeout=10).status_code == 200

    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
    key = values["RECONCILE_WEBHOOK_SECRET"].encode()
    for secret, expect in ((key, 202), (b"other", 401)):
        sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
        r = httpx.post(
            url + "/hooks/github",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": f"sha256={sig}",
            },
            timeout=10,
        )
        assert r.status_code == expect, r.text

    for token, expect in ((values["RECONCILE_GITLAB_TOKEN"], 202), ("other", 401)):
        r = httpx.post(
            url + "/hooks/gitlab",
            content=json.dumps({"object_kind": "push", "ref": "refs/heads/main"}).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Gitlab-Event": "Push Hook",
                "X-Gitlab-Token": token,
                "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            },
            timeout=10,
        )
        assert r.status_code == expect, r.text


def test_admin_cli_reads_the_token_file(
    served: tuple[str, pathlib.Path, dict[str, str]], tmp_path: pathlib.Path
) -> None:
    url, _, values = served
    token_file = _write(tmp_path / "admin", values["RECONCILE_ADMIN_TOKEN"] + "\n")
    env = _clean_env(RECONCILE_ADMIN_TOKEN_FILE=str(token_file))
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--server", url, "-f", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "deployments" in json.loads(done.stdout)


def test_serve_refuses_a_secret_set_twice(tmp_path: pathlib.Path) -> None:
    f = _write(tmp_path / "admin", "a")
    env = _clean_env(RECONCILE_ADMIN_TOKEN="b", RECONCILE_ADMIN_TOKEN_FILE=str(f))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "serve",
            "--source",
            str(tmp_path),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "both RECONCILE_ADMIN_TOKEN and RECONCILE_ADMIN_TOKEN_FILE are set" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_agent_bootstraps_with_a_token_file(
    served: tuple[str, pathlib.Path, dict[str, str]], tmp_path: pathlib.Path
) -> None:
    url, data, _ = served
    issued = subprocess.run(
        [sys.executable, "-m", "reconciler", "agent", "token", "--data-dir", str(data)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    token = issued.strip().splitlines()[-1].strip()
    token_file = _write(tmp_path / "agent-token", token + "\n")
    state = tmp_path / "state"
    agent = [sys.executable, "-m", "agent.daemon", "--server", url, "--state-dir", str(state)]
    both = subprocess.run(
        [*agent, "--once"],
        env=_clean_env(RECONCILE_AGENT_TOKEN=token, RECONCILE_AGENT_TOKEN_FILE=str(token_file)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert both.returncode == 2
    assert "both RECONCILE_AGENT_TOKEN and RECONCILE_AGENT_TOKEN_FILE" in both.stderr
    done = subprocess.run(
        [*agent, "--once"],
        env=_clean_env(RECONCILE_AGENT_TOKEN_FILE=str(token_file)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    creds = json.loads((state / "agent" / "credentials.json").read_text())
    assert creds["agent_id"].startswith("agt_")
    assert token not in done.stderr
