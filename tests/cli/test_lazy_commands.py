"""The console script registers only the command it runs; everyone else gets them all.

typer builds a click command of every registered command on each run, so ``main``
imports the module of a leaf command (apply, plan, status, validate) alone.  Whatever
lists commands (help, completion, a typo) and ``from reconciler.cli import app`` get the
full set, in the order ``--help`` has always shown.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from reconciler.cli import COMMAND_MODULES, modules_for
from tests.conftest import RepoFactory

ALL_COMMANDS = [
    "apply",
    "logs",
    "restart",
    "show",
    "history",
    "rollback",
    "credentials",
    "backup",
    "events",
    "plan",
    "status",
    "validate",
    "catalog",
    "agent",
    "hook",
    "serve",
    "mcp",
]


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["apply", "repo", "--yes"], ("apply",)),
        (["plan", "repo", "--against", "empty"], ("plan",)),
        (["validate", "repo"], ("validate",)),
        (["status"], ("status",)),
        (["apply", "repo", "--help"], COMMAND_MODULES),  # help may list siblings
        (["--help"], COMMAND_MODULES),
        ([], COMMAND_MODULES),
        (["-V"], COMMAND_MODULES),
        (["agent", "list"], COMMAND_MODULES),  # a group: subcommands from two modules
        (["logs", "web"], COMMAND_MODULES),
        (["aply", "repo"], COMMAND_MODULES),  # a typo: click suggests from the full set
    ],
)
def test_the_modules_a_run_registers(argv: list[str], modules: tuple[str, ...]) -> None:
    assert modules_for(argv) == modules


def test_shell_completion_registers_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_RECONCILE_COMPLETE", "bash_complete")
    assert modules_for(["apply"]) == COMMAND_MODULES


def _python(code: str, *args: str) -> str:
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_app_has_every_command_even_after_one_command_module_was_imported() -> None:
    # Importing a command module first binds the submodule `reconciler.cli.app` on the
    # package; `from reconciler.cli import app` must still be the full typer app.
    out = _python(
        "import reconciler.cli.apply, typer.main\n"
        "from reconciler.cli import app\n"
        "print(' '.join(typer.main.get_command(app).commands))\n"
    )
    assert out.split() == ALL_COMMANDS


def test_a_dry_run_process_loads_neither_the_server_nor_the_other_commands(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    repo = make_repo({"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"})
    loaded = tmp_path / "modules.txt"
    probe = (
        "import atexit, pathlib, sys\n"
        "out = pathlib.Path(sys.argv.pop(1))\n"
        "atexit.register(lambda: out.write_text('\\n'.join(sorted(sys.modules))))\n"
        "from reconciler.cli import main\n"
        "main()\n"
    )
    out = _python(probe, str(loaded), "--dry-run", str(repo), "--against", "empty", "-f", "json")
    assert '"install"' in out
    modules = set(loaded.read_text().split())
    assert "reconciler.cli.plan" in modules
    never = ("reconciler.cli.serve", "reconciler.cli.day2", "reconciler.server", "fastapi")
    assert [m for m in never if m in modules] == []
