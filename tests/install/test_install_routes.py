"""``GET /install.sh``, ``/dist/<wheel>`` and ``reconcile agent token --url``, in process."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reconciler.server.app import ControlPlane, build_control_plane
from reconciler.server.config import ServerConfig, ServerSecrets
from reconciler.server.install import AGENT_UNIT, install_one_liner

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WHEEL = "compose_reconciler-0.1.0-py3-none-any.whl"


@pytest.fixture
def plane(tmp_path: pathlib.Path) -> Iterator[ControlPlane]:
    repo = tmp_path / "repo"
    (repo / "deployments").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text("namespace: inst\n")
    config = ServerConfig(source=str(repo), data_dir=tmp_path / "data", poll_interval=0)
    p = build_control_plane(config, ServerSecrets(admin_token="t"))
    yield p
    p.store.close()


def test_without_a_wheel_install_sh_says_where_to_put_one(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(plane.app) as client:
        r = client.get("/install.sh")
    assert r.status_code == 503
    assert "--dist-dir" in r.json()["error"]
    assert str(plane.config.data_dir) not in r.text  # no server paths to anonymous callers
    assert str(plane.config.data_dir / "dist") in caplog.text  # but in the server's log


def test_install_sh_names_the_wheel_and_its_digest(plane: ControlPlane) -> None:
    dist = plane.config.data_dir / "dist"
    dist.mkdir()
    (dist / WHEEL).write_bytes(b"wheel bytes")
    (dist / "compose_reconciler-0.0.9-py3-none-any.whl").write_bytes(b"older")
    (dist / "notes.txt").write_text("not served")
    with TestClient(plane.app) as client:
        script = client.get("/install.sh")
        wheel = client.get(f"/dist/{WHEEL}")
        missing = [
            client.get(f"/dist/{name}").status_code
            for name in ("notes.txt", "..%2F..%2Fdata%2Freconcile.db", "x.whl")
        ]
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/x-shellscript")
    text = script.text
    assert f"WHEEL={WHEEL}\n" in text  # the server's own version wins over a newer mtime
    assert f"WHEEL_SHA256={hashlib.sha256(b'wheel bytes').hexdigest()}\n" in text
    assert AGENT_UNIT.rstrip("\n") in text
    assert not [m for m in ("@WHEEL", "@PREFIX@", "@UNIT@", "@STATE_DIR@") if m in text]
    assert wheel.content == b"wheel bytes"
    assert missing == [404, 404, 404]


def test_the_script_is_valid_posix_sh(plane: ControlPlane, tmp_path: pathlib.Path) -> None:
    dist = plane.config.data_dir / "dist"
    dist.mkdir()
    (dist / WHEEL).write_bytes(b"w")
    with TestClient(plane.app) as client:
        text = client.get("/install.sh").text
    script = tmp_path / "install.sh"
    script.write_text(text)
    assert subprocess.run(["dash", "-n", str(script)], check=False).returncode == 0
    # refused before it touches anything: no --server, a bad URL, an unknown flag
    for args, message in (
        ([], "--server URL is required"),
        (["--server", "ftp://x"], "must be an http(s) URL"),
        (["--server", "http://127.0.0.1:1", "--frobnicate"], "unknown argument: --frobnicate"),
    ):
        done = subprocess.run(
            ["dash", str(script), *args], capture_output=True, text=True, check=False
        )
        assert done.returncode == 1
        assert message in done.stderr


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_agent_token_prints_the_one_liner_when_the_url_is_known(
    plane: ControlPlane,
) -> None:
    data = str(plane.config.data_dir)
    plain = _cli("agent", "token", "--data-dir", data)
    assert plain.returncode == 0, plain.stderr
    assert len(plain.stdout.splitlines()) == 1  # scripts read the token alone
    with_url = _cli("agent", "token", "--data-dir", data, "--url", "https://cp.example.com/")
    assert with_url.returncode == 0, with_url.stderr
    token, line = with_url.stdout.splitlines()
    assert line == install_one_liner("https://cp.example.com", token)
    assert line == (
        "curl -fsSL https://cp.example.com/install.sh | sh -s -- "
        f"--server https://cp.example.com --token {token}"
    )
    from_env = _cli("agent", "token", "--data-dir", data, RECONCILE_PUBLIC_URL="http://h:8800")
    assert "--server http://h:8800 --token" in from_env.stdout
    bad = _cli("agent", "token", "--data-dir", data, "--url", "cp.example.com")
    assert bad.returncode == 2 and "http(s) URL" in bad.stderr
    assert plane.store.consume_bootstrap_token(token)  # a real, unused token


def test_the_packaged_unit_file_agrees_with_the_installed_one() -> None:
    """deploy/systemd/reconcile-agent.service (hosts installed by hand) and the unit
    install.sh writes are one text."""
    packaged = REPO_ROOT / "deploy" / "systemd" / "reconcile-agent.service"

    def directives(text: str) -> list[str]:
        return [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", ";"))
        ]

    assert directives(packaged.read_text()) == directives(AGENT_UNIT)
