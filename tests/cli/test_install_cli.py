"""What a freshly installed ``reconcile`` must do before anything else: say its version,
answer ``-h`` everywhere, install shell completion, and refuse to run with a missing or
empty catalog or schema (an empty catalog would blame every ``app:`` deployment).

The console scripts run for real in subprocesses where the shell is involved; the
missing-data cases point the package's data paths at an empty directory in-process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from reconciler import __version__
from reconciler.cli import app
from reconciler.load import catalog as catalog_module
from reconciler.load import packaged, schema
from reconciler.load.catalog import Catalog
from reconciler.load.packaged import CATALOG_DIR, MissingData

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
runner = CliRunner()


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of a click group (typer may bring its own click: duck-typed)."""
    out: list[tuple[str, ...]] = [prefix]
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_version_of_both_console_scripts() -> None:
    for script, name in (("reconcile", "reconcile"), ("reconcile-agent", "reconcile-agent")):
        for flag in ("--version", "-V"):
            done = subprocess.run(
                [str(BIN / script), flag], capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == f"{name} (compose-reconciler) {__version__}"


def test_dash_h_is_help_on_every_command() -> None:
    commands = _commands(typer.main.get_command(app))
    assert ("catalog", "list") in commands and ("serve",) in commands
    for path in commands:
        short = runner.invoke(app, [*path, "-h"])
        long = runner.invoke(app, [*path, "--help"])
        assert short.exit_code == 0, (path, short.output)
        assert short.output == long.output
        assert "Usage:" in short.output


def test_agent_dash_h() -> None:
    done = subprocess.run(
        [str(BIN / "reconcile-agent"), "-h"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "--server" in done.stdout and "--version" in done.stdout


def test_bash_completion_installs_and_completes(tmp_path: pathlib.Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # name the shell instead of detecting the test runner's parent process
        "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
    }
    done = subprocess.run(
        ["reconcile", "--install-completion", "bash"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".bash_completions" / "reconcile.sh"
    assert str(script) in (tmp_path / ".bashrc").read_text()
    complete = (
        "source ~/.bashrc\n"
        "COMP_WORDS=(reconcile cat); COMP_CWORD=1; _reconcile_completion reconcile\n"
        'echo "1:${COMPREPLY[*]}"\n'
        'COMP_WORDS=(reconcile catalog ""); COMP_CWORD=2; _reconcile_completion reconcile\n'
        'echo "2:${COMPREPLY[*]}"\n'
    )
    shell = subprocess.run(
        ["bash", "--norc", "-c", complete], env=env, capture_output=True, text=True, check=False
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["1:catalog", "2:list show"]


def test_the_builtin_catalog_is_the_packaged_one() -> None:
    catalog = Catalog.builtin()
    assert catalog.root == CATALOG_DIR
    assert len(catalog.apps()) == len([p for p in CATALOG_DIR.iterdir() if p.is_dir()])


@pytest.mark.parametrize("make", ["missing", "empty", "no-manifests"])
def test_a_missing_or_empty_catalog_is_refused(tmp_path: pathlib.Path, make: str) -> None:
    root = tmp_path / "catalog"
    if make != "missing":
        root.mkdir()
    if make == "no-manifests":
        (root / "notes").mkdir()
        (root / "notes" / "README.md").write_text("not a manifest\n")
    with pytest.raises(MissingData, match="catalog"):
        Catalog.at(root)


def test_catalog_list_with_an_empty_builtin_catalog_exits_1(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "CATALOG_DIR", tmp_path)
    result = runner.invoke(app, ["catalog", "list"])
    assert result.exit_code == 1
    assert "holds no app manifests" in result.output
    assert "Traceback" not in result.output


def test_catalog_option_pointing_at_an_empty_dir_exits_1(tmp_path: pathlib.Path) -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "examples"), "--catalog", str(tmp_path)])
    assert result.exit_code == 1
    assert "holds no app manifests" in result.output


def test_a_missing_schema_is_one_clear_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaged, "SCHEMAS_DIR", tmp_path)
    schema.schema.cache_clear()
    try:
        result = runner.invoke(app, ["validate", str(ROOT / "examples")])
        with pytest.raises(MissingData, match="reinstall"):
            schema.schema("deployment")
    finally:
        schema.schema.cache_clear()
    assert result.exit_code == 1
    assert "manifest.schema.json is missing from this installation" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_to_start_with_an_empty_catalog(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "catalog"
    empty.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "serve",
            "--source",
            str(ROOT / "examples"),
            "--catalog",
            str(empty),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "0",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"catalog {empty} holds no app manifests" in done.stderr
