"""``python -m agent.daemon`` as a real process against a real (stub) HTTP control plane:
bootstrap through the command line, credentials reused on the next start, a refused token
exits 2, and SIGTERM during an idle long poll exits 0 at once.  No Docker needed: no
command is handed out (the heartbeat reports Docker offline when it is missing)."""

from __future__ import annotations

import json
import pathlib
import signal
import stat
import subprocess
import time

import pytest

from tests.agent.agent_fakes import FakeControlPlane
from tests.agent.stub_control_plane import agent_cmd, agent_env, stub_server


def test_bootstrap_once_then_reuse_the_credentials(tmp_path: pathlib.Path) -> None:
    plane = FakeControlPlane(tokens={"tok-abc"})
    state = tmp_path / "state"
    with stub_server(plane) as stub:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        first = subprocess.run(
            agent_cmd("--once", "--state-dir", str(state)),
            env=agent_env(RECONCILE_SERVER=url, RECONCILE_AGENT_TOKEN="tok-abc"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 0, first.stderr
        creds_file = state / "agent" / "credentials.json"
        creds = json.loads(creds_file.read_text())
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        assert creds["server"] == url and creds["agent_id"] in plane.agents
        assert f"this agent is {creds['agent_id']}" in first.stderr
        assert "agents: {" in first.stderr  # how to map it in reconcile.yaml
        assert plane.reports and plane.reports[-1]["state"]["agent"] == creds["agent_id"]

        # No server, no token: the stored credentials are enough.
        second = subprocess.run(
            agent_cmd("--once", "--state-dir", str(state)),
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 0, second.stderr
        assert plane.requests.count("POST /v1/agent/bootstrap") == 1
        assert "bootstrapped" not in second.stderr


def test_refused_token_exits_2_without_retrying(tmp_path: pathlib.Path) -> None:
    plane = FakeControlPlane(tokens=set())
    with stub_server(plane) as stub:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        proc = subprocess.run(
            agent_cmd("--server", url, "--token", "stale", "--state-dir", str(tmp_path)),
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert "refused the bootstrap token" in proc.stderr
    assert plane.requests == ["POST /v1/agent/bootstrap"]
    assert not (tmp_path / "agent" / "credentials.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_an_idle_long_poll_exits_0_at_once(
    tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    plane = FakeControlPlane(tokens={"tok-1"})
    with stub_server(plane) as stub:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        proc = subprocess.Popen(
            agent_cmd("--server", url, "--token", "tok-1", "--state-dir", str(tmp_path)),
            env=agent_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not stub.held and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stub.held == [30.0], "the agent never long-polled"
            time.sleep(0.3)  # inside the held poll
            sent = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(timeout=20)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert took < 15, f"exit took {took:.1f} s: the held poll was not dropped"
    assert "stopped" in stderr
