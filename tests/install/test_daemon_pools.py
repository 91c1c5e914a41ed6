"""scripts/daemon-pools.py, which scripts/setup.sh runs before it starts dockerd: it adds
``default-address-pools`` to the daemon's config and never takes anything away.  Run as
the real script on files in tmp_path (a real dockerd reads its output in
tests/agent/test_capacity_docker.py)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "daemon-pools.py"


def run(path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--file", str(path), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_adds_512_networks_and_keeps_the_other_keys(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "daemon.json"
    config.write_text('{"log-driver": "local", "storage-driver": "overlay2"}')
    proc = run(config)
    assert proc.returncode == 0, proc.stderr
    assert "(512 networks)" in proc.stdout
    assert json.loads(config.read_text()) == {
        "log-driver": "local",
        "storage-driver": "overlay2",
        "default-address-pools": [
            {"base": "172.17.0.0/16", "size": 24},
            {"base": "172.18.0.0/16", "size": 24},
        ],
    }


def test_creates_a_missing_file_and_keeps_pools_already_there(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "docker" / "daemon.json"
    assert run(config, "--pool", "10.77.0.0/16:26").returncode == 0
    written = config.read_text()
    assert json.loads(written) == {"default-address-pools": [{"base": "10.77.0.0/16", "size": 26}]}
    again = run(config)  # the operator's (here: the first run's) pools are kept
    assert again.returncode == 0 and "configured already, kept" in again.stdout
    assert config.read_text() == written


def test_refuses_what_it_cannot_merge_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "daemon.json"
    for content in ("{not json", "[1, 2]"):
        config.write_text(content)
        proc = run(config)
        assert proc.returncode == 2 and "left unchanged" in proc.stderr
        assert config.read_text() == content
    for bad in ("10.0.0.0/16", "10.0.0.0/16:8", "10.0.0.1/16:24", "nonsense:24"):
        proc = run(tmp_path / "other.json", "--pool", bad)
        assert proc.returncode == 2, bad
        assert not (tmp_path / "other.json").exists()
