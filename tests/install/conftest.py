"""Fixtures for the agent install: the agent wheel, built once per session from a copy
of this checkout (so no build/ dir lands in the work tree)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    # The whole checkout but its caches and environments, links kept as links: the build
    # sees what a fresh clone has, whatever the packaging configuration reads.
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(
        REPO_ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "*.pyc",
            ".*_cache",
            ".hypothesis",
            "out",
        ),
    )
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
