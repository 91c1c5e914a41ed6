"""``reconcile status --server`` prints what hosts sent as plain text (issue 13).

Real parts: ``reconcile serve`` (uvicorn on a free 127.0.0.1 port, SQLite, a local
directory as its source), an agent registered through the bootstrap API that fails its
install with a hostile result message, and the ``reconcile`` console script reading
the table back.  The message used to crash the command (``[/oops]``: MarkupError) and
to put a hyperlink, hidden text and escape codes on the operator's terminal.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port

SCRIPT = pathlib.Path(sys.executable).with_name("reconcile")
ADMIN = "admin-token-for-status-tests"
HOSTILE = (
    "[/oops] [link=https://evil.example]click[/link] [conceal]secret[/conceal] "
    "\x1b]8;;https://evil.example\x1b\\here\x1b]8;;\x1b\\ \x1b[8mhidden\x1b[0m\r"
    "\u202eevil\nfake row"
)


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    out.update(RECONCILE_ADMIN_TOKEN=ADMIN, COLUMNS="400")
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env(), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    repo = tmp_path / "repo"
    (repo / "deployments").mkdir(parents=True)
    (repo / "reconcile.yaml").write_text("namespace: status-text\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(SCRIPT),
                "serve",
                "--source",
                str(repo),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--poll-interval",
                "0",
            ],
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready: " + log.read_text()
            time.sleep(0.1)
        yield url, repo
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_host_message_is_plain_text_with_control_characters_escaped(
    server: tuple[str, pathlib.Path],
) -> None:
    url, repo = server
    token = cli("agent", "token", "--server", url)
    assert token.returncode == 0, token.stderr
    boot = httpx.post(url + "/v1/agent/bootstrap", json={"token": token.stdout.strip()})
    assert boot.status_code == 201, boot.text
    agent = boot.json()["agent_id"]
    headers = {"X-Agent-Id": agent, "X-Agent-Secret": boot.json()["secret"]}
    report = {"state": {"agent": agent}}
    assert httpx.post(url + "/v1/agent/report", json=report, headers=headers).status_code == 200

    (repo / "reconcile.yaml").write_text(f"namespace: status-text\nagents:\n  h1: {agent}\n")
    (repo / "deployments" / "api.yaml").write_text("name: api\nimage: busybox:1.36\nagent: h1\n")
    hook = cli("hook", "create", "status-text", "--server", url)
    assert hook.returncode == 0, hook.stderr
    assert httpx.post(hook.stdout.split()[1]).status_code == 202
    deadline = time.monotonic() + 60
    commands: list[dict[str, object]] = []
    while not commands:
        assert time.monotonic() < deadline, "no command for the agent"
        polled = httpx.get(
            url + "/v1/agent/commands", params={"wait": 10}, headers=headers, timeout=30
        )
        commands = polled.json()["commands"]
    done = httpx.post(
        f"{url}/v1/agent/commands/{commands[0]['id']}/result",
        json={"ok": False, "message": HOSTILE},
        headers=headers,
    )
    assert done.status_code == 200, done.text

    table = cli("status", "--server", url)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr
    out = table.stdout
    # No escape sequence, carriage return or bidi override reaches the terminal ...
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    # ... and the text the host sent is all there, as text: markup kept literally,
    # control characters as escapes, its newline unable to start a row of its own.
    row = next(line for line in out.splitlines() if "[/oops]" in line)
    assert "install failed: [/oops] [link=https://evil.example]click[/link]" in row
    assert "[conceal]secret[/conceal]" in row
    assert r"\x1b]8;;https://evil.example\x1b\here\x1b]8;;\x1b\ \x1b[8mhidden\x1b[0m\r" in row
    assert r"\u202eevil\nfake row" in row
    assert not any(line.startswith("fake row") for line in out.splitlines())


def test_follow_prints_the_live_steps_as_plain_text(
    server: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """``status --server --follow``: a host's hostile step detail and result message are
    shown as text, each on its one line, as they arrive."""
    url, repo = server
    token = cli("agent", "token", "--server", url)
    boot = httpx.post(url + "/v1/agent/bootstrap", json={"token": token.stdout.strip()})
    agent = boot.json()["agent_id"]
    headers = {"X-Agent-Id": agent, "X-Agent-Secret": boot.json()["secret"]}
    assert httpx.post(
        url + "/v1/agent/report", json={"state": {"agent": agent}}, headers=headers
    ).is_success
    shown = tmp_path / "follow.txt"
    follower = subprocess.Popen(
        [str(SCRIPT), "status", "--server", url, "--follow", "--deployment", "api"],
        env=env(),
        stdout=shown.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while "following" not in shown.read_text():
            assert time.monotonic() < deadline, shown.read_text()
            time.sleep(0.05)
        (repo / "reconcile.yaml").write_text(f"namespace: status-text\nagents:\n  h1: {agent}\n")
        (repo / "deployments" / "api.yaml").write_text(
            "name: api\nimage: busybox:1.36\nagent: h1\n"
        )
        (repo / "deployments" / "other.yaml").write_text(
            "name: other\nimage: busybox:1.36\nagent: h1\n"
        )
        hook = cli("hook", "create", "status-text", "--server", url)
        assert httpx.post(hook.stdout.split()[1]).status_code == 202
        commands: list[dict[str, object]] = []
        while len(commands) < 2:
            assert time.monotonic() < deadline, "no commands for the agent"
            polled = httpx.get(
                url + "/v1/agent/commands", params={"wait": 10}, headers=headers, timeout=30
            )
            commands = polled.json()["commands"]
        for c in commands:
            steps = {"steps": [{"deployment": "x", "step": "up", "detail": HOSTILE}]}
            base = f"{url}/v1/agent/commands/{c['id']}"
            assert httpx.post(base + "/progress", json=steps, headers=headers).status_code == 202
            done = httpx.post(
                base + "/result", json={"ok": False, "message": HOSTILE}, headers=headers
            )
            assert done.status_code == 200
        while "FAILED" not in shown.read_text():
            assert time.monotonic() < deadline, shown.read_text()
            time.sleep(0.05)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(30)
    out = shown.read_text()
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    lines = [ln for ln in out.splitlines() if " api " in ln]
    assert [ln.split()[2] for ln in lines] == ["install", "up:", "install"], out
    assert "api install sent to " + agent in lines[0]
    assert "api up: [/oops] [link=https://evil.example]click[/link]" in lines[1]
    assert r"\u202eevil\nfake row" in lines[1] and r"\u202eevil\nfake row" in lines[2]
    assert "api install FAILED: [/oops]" in lines[2]
    assert " other " not in out  # filtered by deployment
    assert not any(line.startswith("fake row") for line in out.splitlines())
