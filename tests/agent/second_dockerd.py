"""A second, private dockerd for tests that need a daemon configured differently from the
shared one (tiny address pools): its own socket, data-root, exec-root, pidfile and
managed containerd under one temporary directory, a default bridge of its own and no
iptables rules, so it never touches the shared daemon or the host's firewall.  (Never
``--bridge none``: in that mode dockerd deletes the host's ``docker0``, which the shared
daemon's default network runs on.)

Its config is written by ``scripts/daemon-pools.py``, the same code ``scripts/setup.sh``
runs for the dockerd it starts.  Whatever the test does, the daemon is stopped by its
own pid and its directory removed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tests.agent.docker_helpers import IMAGE, docker_client
from tests.conftest import REPO_ROOT

START_TIMEOUT = 60.0  # seconds for a fresh dockerd (and its containerd) to answer


@dataclass(frozen=True)
class SecondDaemon:
    base: pathlib.Path
    host: str  # DOCKER_HOST for it

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr}")
        return proc


@contextlib.contextmanager
def second_dockerd(
    pools: Sequence[str], images: Sequence[str] = (IMAGE,)
) -> Iterator[SecondDaemon]:
    """Start a dockerd whose ``default-address-pools`` are ``pools`` (``BASE:SIZE``), with
    ``images`` copied from the shared daemon; stop it and remove everything afterwards."""
    docker_client()  # the shared daemon must answer: the image comes from it
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed; `bash scripts/setup.sh --docker`", pytrace=False)
    # short: the containerd socket path inside exec-root must fit in sun_path (108 bytes)
    base = pathlib.Path(tempfile.mkdtemp(prefix="capd-", dir="/tmp"))
    config = base / "daemon.json"
    pool_args = [arg for pool in pools for arg in ("--pool", pool)]
    script = str(REPO_ROOT / "scripts/daemon-pools.py")
    subprocess.run(
        [sys.executable, script, "--file", str(config), *pool_args],
        check=True,
        capture_output=True,
    )
    sock = base / "docker.sock"
    # its own default bridge: dockerd needs a bridge it did not name created beforehand
    own_bridge = f"capd{secrets.token_hex(4)[:6]}"
    subnet = f"10.253.{secrets.randbelow(250) + 1}.1/24"
    for cmd in (
        ["ip", "link", "add", own_bridge, "type", "bridge"],
        ["ip", "addr", "add", subnet, "dev", own_bridge],
        ["ip", "link", "set", own_bridge, "up"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    log = (base / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            str(base / "data"),
            "--exec-root",
            str(base / "exec"),
            "--pidfile",
            str(base / "docker.pid"),
            "--host",
            f"unix://{sock}",
            "--bridge",
            own_bridge,
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    daemon = SecondDaemon(base=base, host=f"unix://{sock}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while daemon.docker("info", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (base / "dockerd.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the second dockerd did not start:\n{text}", pytrace=False)
            time.sleep(0.2)
        saved = subprocess.run(["docker", "save", *images], capture_output=True, check=True)
        loaded = subprocess.run(
            ["docker", "load"], input=saved.stdout, env=daemon.env(), capture_output=True
        )
        assert loaded.returncode == 0, loaded.stderr
        yield daemon
    finally:
        # Containers, then networks: dockerd leaves its bridges (and their routes) on the
        # host when it stops, and a leftover route makes the next daemon skip that subnet.
        bridges: list[str] = []
        with contextlib.suppress(Exception):
            ids = daemon.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                daemon.docker("rm", "-f", *ids, check=False)
            listed = daemon.docker("network", "ls", "-q", "--filter", "driver=bridge", check=False)
            bridges = [f"br-{net[:12]}" for net in listed.stdout.split()]
            for net in listed.stdout.split():
                daemon.docker("network", "rm", net, check=False)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: dockerd + its containerd
                proc.wait(timeout=10)
        log.close()
        for bridge in [*bridges, own_bridge]:  # only this daemon's, by id, if it left them
            if pathlib.Path("/sys/class/net", bridge).exists():
                subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
