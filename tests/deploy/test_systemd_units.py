"""``deploy/systemd/*.service`` pass ``systemd-analyze verify`` with no warning, and keep
the hardening and the secrets contract the README promises.

``systemd-analyze`` (Debian's ``systemd`` package, installed by ``scripts/setup.sh
--docker``) runs for real against a scratch root holding the host's unit library, the
units, and executables at the paths their ``ExecStart`` names; the test skips only where
the tool is absent and cannot be installed.  A broken copy proves the check can fail.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import subprocess
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
NAMES = ("reconcile-server.service", "reconcile-agent.service")
SYSTEM_UNITS = pathlib.Path("/usr/lib/systemd/system")


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"],
            env=env,
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is absent and could not be installed")
    return found


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def _scratch_root(tmp: pathlib.Path) -> pathlib.Path:
    """A root with the host's unit library, our units, and an executable at each ExecStart."""
    root = tmp / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
        exe = pathlib.Path(_unit(name)["Service"]["ExecStart"].split()[0])
        target = root / exe.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


def _verify(tool: str, root: pathlib.Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "verify", f"--root={root}", str(root / "etc/systemd/system" / name)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", NAMES)
def test_systemd_analyze_verify_passes_without_a_warning(name: str, tmp_path: pathlib.Path) -> None:
    tool = _systemd_analyze()
    done = _verify(tool, _scratch_root(tmp_path), name)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_verify_reports_a_broken_unit(tmp_path: pathlib.Path) -> None:
    """The control: a misspelled value and a missing executable are both seen."""
    tool = _systemd_analyze()
    root = _scratch_root(tmp_path)
    unit = root / "etc/systemd/system" / NAMES[0]
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    assert "stricter" in _verify(tool, root, NAMES[0]).stderr
    (root / "opt/compose-reconciler/bin/reconcile-agent").unlink()
    done = _verify(tool, root, NAMES[1])
    assert done.returncode != 0
    assert "reconcile-agent is not executable" in done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_hardened_with_a_writable_state_dir(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    state = service["StateDirectory"]
    # the directory the code is told to use is the one systemd makes writable
    environment = [
        line.removeprefix("Environment=")
        for line in (UNITS / name).read_text().splitlines()
        if line.startswith("Environment=")
    ]
    variable = "RECONCILE_DATA_DIR" if "server" in name else "RECONCILE_STATE_DIR"
    assert f"{variable}=/var/lib/{state}" in environment
    assert service["EnvironmentFile"].startswith("/etc/compose-reconciler/")


def test_exec_start_names_the_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, script in zip(NAMES, ("reconcile", "reconcile-agent"), strict=True):
        exe = _unit(name)["Service"]["ExecStart"].split()[0]
        assert pathlib.PurePath(exe).name == script
        assert script in scripts


def test_units_document_every_secret_and_its_file_form() -> None:
    server = (UNITS / NAMES[0]).read_text()
    for var in ("RECONCILE_ADMIN_TOKEN", "RECONCILE_WEBHOOK_SECRET", "RECONCILE_GITLAB_TOKEN"):
        assert var in server
    assert "VAR_FILE" in server
    agent = (UNITS / NAMES[1]).read_text()
    assert "RECONCILE_AGENT_TOKEN_FILE" in agent
