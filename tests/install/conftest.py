"""Fixtures for the agent install: the agent wheel, built once per session from this
checkout (a copy, so no build/ dir lands in the work tree)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).is_file():
            shutil.copy(REPO_ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in ("reconciler", "agent"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=ignore)
    for data in ("catalog", "schemas"):  # the packages' data, wherever it is kept
        if (REPO_ROOT / data).is_dir():
            shutil.copytree(REPO_ROOT / data, src / data, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.glob("compose_reconciler-*.whl"))) == 1
    return out
