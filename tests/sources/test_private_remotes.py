"""Private repositories: HTTPS with a token and SSH with a key and known_hosts, against
real servers on 127.0.0.1 (git http-backend behind basic auth over TLS; OpenSSH sshd).

What must hold: the token reaches the server as basic auth, and nowhere else (not the
cache's remote URL, not a file of the cache, not a log line, not the output, not a host
it was not meant for); a missing or wrong credential is refused and caches nothing;
strict host key checking stays on.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pathlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from private_remotes import GitHttpsServer, Sshd
from test_git_source import Remote, cache_repos, git

from reconciler.load.gitauth import GitAuth
from reconciler.load.sources import open_source, resolve_remote_ref
from reconciler.model.errors import InvalidSpec, TemporaryError
from tests.conftest import free_port

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "ghp_" + "s3cr3t" * 6
AUTH_VARS = [
    "RECONCILE_GIT_TOKEN",
    "RECONCILE_GIT_TOKEN_FILE",
    "RECONCILE_GIT_USERNAME",
    "RECONCILE_GIT_TOKEN_HOSTS",
    "RECONCILE_GIT_SSH_KEY_FILE",
    "RECONCILE_GIT_KNOWN_HOSTS_FILE",
    "RECONCILE_GIT_CA_FILE",
]


@pytest.fixture(autouse=True)
def _no_inherited_git_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> Remote:
    (tmp_path / "srv").mkdir()
    r = Remote(tmp_path / "srv", name="private")
    r.commit(
        {
            "reconcile.yaml": f"namespace: private-{secrets.token_hex(3)}\n",
            "deployments/api.yaml": "name: api\nagent: local\nimage: caddy:2\ntarget_port: 80\n",
        }
    )
    r.push("main")
    return r


@pytest.fixture
def https(remote: Remote, tmp_path: pathlib.Path) -> Iterator[GitHttpsServer]:
    server = GitHttpsServer(remote.bare.parent, tmp_path, "x-access-token", TOKEN)
    yield server
    server.close()


@pytest.fixture
def sshd(tmp_path: pathlib.Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd")
    yield server
    server.close()


def _leaks(root: pathlib.Path) -> list[str]:
    """Files under ``root`` holding the token (plain or inside a basic-auth header)."""
    needles = [TOKEN.encode(), base64.b64encode(f"x-access-token:{TOKEN}".encode())]
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and any(n in p.read_bytes() for n in needles)
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(PYTHONPATH=str(REPO_ROOT), **extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ----------------------------------------------------------------------------- HTTPS


class TestHttpsToken:
    def test_the_token_opens_the_repo_and_stays_out_of_the_cache_and_logs(
        self,
        https: GitHttpsServer,
        remote: Remote,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_TOKEN", TOKEN)
        monkeypatch.setenv("RECONCILE_GIT_CA_FILE", str(https.cert))
        cache = tmp_path / "cache"
        url = https.url("private")
        with caplog.at_level(logging.DEBUG):
            checkout = open_source(url, cache_dir=cache)
            remote.commit({"deployments/web.yaml": "name: web\n"})
            remote.push("main")
            again = open_source(url, cache_dir=cache)  # the incremental fetch too
        assert checkout.revision != again.revision == remote.head()
        assert (again.path / "deployments" / "web.yaml").is_file()
        assert https.seen and set(https.seen) == {https.expected}  # sent on every request
        [repo] = cache_repos(cache)
        assert git(repo, "config", "--get", "remote.origin.url") == url
        assert _leaks(cache) == []
        assert TOKEN not in caplog.text
        assert base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode() not in caplog.text
        assert "***" in repr(GitAuth.from_env()) and TOKEN not in repr(GitAuth.from_env())

    @pytest.mark.parametrize("token", [None, "wrong-token"])
    def test_no_or_a_wrong_token_is_refused_and_caches_nothing(
        self,
        token: str | None,
        https: GitHttpsServer,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        if token:
            monkeypatch.setenv("RECONCILE_GIT_TOKEN", token)
        monkeypatch.setenv("RECONCILE_GIT_CA_FILE", str(https.cert))
        cache = tmp_path / "cache"
        with pytest.raises(TemporaryError, match=r"cannot read https://127\.0\.0\.1") as caught:
            open_source(https.url("private"), cache_dir=cache)
        assert TOKEN not in str(caught.value)
        assert cache_repos(cache) == []

    def test_an_untrusted_certificate_is_refused(
        self, https: GitHttpsServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_TOKEN", TOKEN)
        with pytest.raises(TemporaryError, match=r"certificate|SSL"):
            open_source(https.url("private"), cache_dir=tmp_path / "cache")
        assert https.seen == []  # nothing (least of all the token) went over that TLS

    def test_the_token_goes_only_to_the_source_host_unless_listed(
        self,
        https: GitHttpsServer,
        remote: Remote,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A `git_url` deployment is looked up outside the source's scope: a repository
        could name any URL there, so the token follows only RECONCILE_GIT_TOKEN_HOSTS."""
        monkeypatch.setenv("RECONCILE_GIT_TOKEN", TOKEN)
        monkeypatch.setenv("RECONCILE_GIT_CA_FILE", str(https.cert))
        with pytest.raises(TemporaryError):
            resolve_remote_ref(https.url("private"), "main")
        assert https.seen and set(https.seen) == {None}
        monkeypatch.setenv("RECONCILE_GIT_TOKEN_HOSTS", f"example.org, 127.0.0.1:{https.port}")
        assert resolve_remote_ref(https.url("private"), "main") == remote.head()
        monkeypatch.setenv("RECONCILE_GIT_TOKEN_HOSTS", "127.0.0.1:1")  # another port
        https.seen.clear()
        with pytest.raises(TemporaryError):
            resolve_remote_ref(https.url("private"), "main")
        assert set(https.seen) == {None}

    def test_dry_run_with_a_token_file(self, https: GitHttpsServer, tmp_path: pathlib.Path) -> None:
        token_file = tmp_path / "git-token"
        token_file.write_text(TOKEN + "\n")
        env = _env(
            RECONCILE_GIT_TOKEN_FILE=str(token_file),
            RECONCILE_GIT_CA_FILE=str(https.cert),
            XDG_CACHE_HOME=str(tmp_path / "xdg"),
        )
        done = _cli("--dry-run", https.url("private"), "--against", "empty", "-f", "json", env=env)
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert [(a["deployment"], a["action"]) for a in plan["actions"]] == [("api", "install")]
        assert TOKEN not in done.stdout + done.stderr
        assert _leaks(tmp_path / "xdg") == []

    def test_serve_reads_the_private_repo(
        self, https: GitHttpsServer, remote: Remote, tmp_path: pathlib.Path
    ) -> None:
        port = free_port()
        log = tmp_path / "serve.log"
        env = _env(
            RECONCILE_GIT_TOKEN=TOKEN,
            RECONCILE_GIT_CA_FILE=str(https.cert),
            XDG_CACHE_HOME=str(tmp_path / "xdg"),
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "reconciler", "serve"),
                    *("--source", https.url("private"), "--port", str(port)),
                    *("--data-dir", str(tmp_path / "data"), "--poll-interval", "0"),
                    *("--log-level", "debug"),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        finally:
            proc.terminate()
            proc.wait(30)
        assert ready["last_reconcile"] == {"ok": True, "revision": remote.head(), "error": None}
        assert TOKEN not in log.read_text()
        assert _leaks(tmp_path / "xdg") == [] and _leaks(tmp_path / "data") == []

    @pytest.mark.docker
    def test_apply_reads_the_private_repo(
        self, https: GitHttpsServer, remote: Remote, tmp_path: pathlib.Path
    ) -> None:
        from tests.agent.docker_helpers import docker_client

        docker_client()
        git(remote.work, "rm", "--quiet", "deployments/api.yaml")
        remote.commit({"deployments/.keep": ""}, "nothing to run")  # a host left alone
        remote.push("main")
        env = _env(
            RECONCILE_GIT_TOKEN=TOKEN,
            RECONCILE_GIT_CA_FILE=str(https.cert),
            XDG_CACHE_HOME=str(tmp_path / "xdg"),
        )
        done = _cli(
            "apply", https.url("private"), "-y", "--state-dir", str(tmp_path / "state"), env=env
        )
        assert done.returncode == 0, done.stderr
        assert "0 deployments up to date" in done.stdout
        assert set(https.seen) == {https.expected}
        assert TOKEN not in done.stdout + done.stderr


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: pathlib.Path) -> dict[str, object]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            r = httpx.get(url + "/readyz", timeout=2)
            body: dict[str, object] = r.json()
            if r.status_code == 200 and body.get("last_reconcile"):
                return body
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("no reconcile: " + log.read_text())


# ------------------------------------------------------------------------------- SSH


class TestSshKey:
    def test_key_and_known_hosts_open_the_repo(
        self, sshd: Sshd, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_SSH_KEY_FILE", str(sshd.client_key))
        monkeypatch.setenv("RECONCILE_GIT_KNOWN_HOSTS_FILE", str(sshd.known_hosts))
        checkout = open_source(sshd.url(remote.bare), cache_dir=tmp_path / "cache")
        assert checkout.revision == remote.head()
        assert (checkout.path / "deployments" / "api.yaml").is_file()
        assert resolve_remote_ref(sshd.url(remote.bare), "main") == remote.head()

    @pytest.mark.parametrize("known", ["wrong", "none"])
    def test_an_unknown_or_changed_host_key_is_refused(
        self,
        known: str,
        sshd: Sshd,
        remote: Remote,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_SSH_KEY_FILE", str(sshd.client_key))
        if known == "wrong":
            monkeypatch.setenv("RECONCILE_GIT_KNOWN_HOSTS_FILE", str(sshd.wrong_known_hosts))
        else:  # an empty file: strict checking refuses instead of learning the key
            empty = tmp_path / "empty_known_hosts"
            empty.write_text("")
            monkeypatch.setenv("RECONCILE_GIT_KNOWN_HOSTS_FILE", str(empty))
        cache = tmp_path / "cache"
        with pytest.raises(TemporaryError, match="Host key verification failed"):
            open_source(sshd.url(remote.bare), cache_dir=cache)
        assert cache_repos(cache) == []
        if known == "none":
            assert (tmp_path / "empty_known_hosts").read_text() == ""  # nothing learned

    def test_without_the_key_the_login_is_refused(
        self, sshd: Sshd, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_KNOWN_HOSTS_FILE", str(sshd.known_hosts))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys of this machine
        with pytest.raises(TemporaryError, match="Permission denied"):
            open_source(sshd.url(remote.bare), cache_dir=tmp_path / "cache")

    def test_dry_run_over_ssh(self, sshd: Sshd, remote: Remote, tmp_path: pathlib.Path) -> None:
        env = _env(
            RECONCILE_GIT_SSH_KEY_FILE=str(sshd.client_key),
            RECONCILE_GIT_KNOWN_HOSTS_FILE=str(sshd.known_hosts),
            XDG_CACHE_HOME=str(tmp_path / "xdg"),
        )
        done = _cli("--dry-run", sshd.url(remote.bare), "--against", "empty", "-f", "json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["actions"][0]["action"] == "install"


# -------------------------------------------------------------------------- settings


class TestSettings:
    def test_missing_files_name_the_variable(self, tmp_path: pathlib.Path) -> None:
        for var in (
            "RECONCILE_GIT_TOKEN_FILE",
            "RECONCILE_GIT_SSH_KEY_FILE",
            "RECONCILE_GIT_KNOWN_HOSTS_FILE",
            "RECONCILE_GIT_CA_FILE",
        ):
            with pytest.raises(InvalidSpec, match=f"{var}: .* is not a file"):
                GitAuth.from_env({var: str(tmp_path / "missing")})

    def test_token_settings_are_checked(self, tmp_path: pathlib.Path) -> None:
        empty = tmp_path / "empty"
        empty.write_text("\n")
        with pytest.raises(InvalidSpec, match="is empty"):
            GitAuth.from_env({"RECONCILE_GIT_TOKEN_FILE": str(empty)})
        with pytest.raises(InvalidSpec, match="not both"):
            GitAuth.from_env({"RECONCILE_GIT_TOKEN": "a", "RECONCILE_GIT_TOKEN_FILE": str(empty)})
        with pytest.raises(InvalidSpec, match="whitespace"):
            GitAuth.from_env({"RECONCILE_GIT_TOKEN": "a b"})
        with pytest.raises(InvalidSpec, match="RECONCILE_GIT_USERNAME"):
            GitAuth.from_env({"RECONCILE_GIT_TOKEN": "t", "RECONCILE_GIT_USERNAME": "a:b"})

    def test_a_bad_setting_fails_the_read_before_git_runs(
        self, remote: Remote, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RECONCILE_GIT_SSH_KEY_FILE", str(tmp_path / "missing"))
        with pytest.raises(InvalidSpec, match="RECONCILE_GIT_SSH_KEY_FILE"):
            open_source(remote.url, cache_dir=tmp_path / "cache")
        assert not (tmp_path / "cache" / "git").exists() or cache_repos(tmp_path / "cache") == []
