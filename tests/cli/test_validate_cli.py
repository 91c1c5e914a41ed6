"""`reconcile validate`: every problem reported, three formats, exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from reconciler.cli import app
from tests.conftest import RepoFactory

runner = CliRunner()

GOOD = {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"}
TWO_ERRORS = {
    "deployments/api.yaml": "name: api\nimage: busybox:1.36\nimage: busybox:1.37\n",
    "deployments/web.yaml": "name: web\nimage: busybox:1.36\ndomian: web.example.com\n",
}
WARNING_ONLY = {"deployments/api.yaml": "name: api\nimage: busybox\n"}


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", *args])
    return result.exit_code, result.stdout


def test_valid_repo_exits_zero(make_repo: RepoFactory) -> None:
    code, out = invoke(str(make_repo(GOOD)))
    assert code == 0
    assert "1 deployment valid" in out


def test_reports_all_problems_not_the_first(make_repo: RepoFactory) -> None:
    code, out = invoke(str(make_repo(TWO_ERRORS)))
    assert code == 1
    assert "api.yaml:3:1: error[yaml-duplicate-key]" in out
    assert "web.yaml:3:1: error[schema]: unknown field 'domian'" in out
    assert "did you mean 'domain'?" in out
    assert "2 errors" in out


def test_text_shows_source_line_and_caret(make_repo: RepoFactory) -> None:
    _code, out = invoke(str(make_repo(TWO_ERRORS)))
    assert "   3 | domian: web.example.com" in out
    assert "     | ^" in out


def test_warnings_pass_unless_strict(make_repo: RepoFactory) -> None:
    root = str(make_repo(WARNING_ONLY))
    code, out = invoke(root)
    assert code == 0
    assert "warning[compose-image-unpinned]" in out
    code, out = invoke(root, "--strict")
    assert code == 1
    assert "--strict" in out


def test_json_format_is_machine_readable(make_repo: RepoFactory) -> None:
    code, out = invoke(str(make_repo(TWO_ERRORS)), "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert doc["format_version"] == 1
    assert doc["valid"] is False
    assert doc["summary"] == {"errors": 2, "warnings": 0, "files": 2}
    rules = sorted((p["file"], p["line"], p["col"], p["rule"]) for p in doc["problems"])
    assert rules == [
        ("deployments/api.yaml", 3, 1, "yaml-duplicate-key"),
        ("deployments/web.yaml", 3, 1, "schema"),
    ]


def test_github_annotations(make_repo: RepoFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_repo(TWO_ERRORS)
    monkeypatch.chdir(root.parent)
    code, out = invoke("repo", "--format", "github")
    assert code == 1
    lines = out.splitlines()
    assert (
        "::error file=repo/deployments/web.yaml,line=3,col=1,title=schema::"
        "unknown field 'domian'. Fix: did you mean 'domain'?"
    ) in lines
    assert any(
        line.startswith("::error file=repo/deployments/api.yaml,line=3,col=1,") for line in lines
    )


def test_github_escapes_newlines_and_percent() -> None:
    from reconciler.cli.report import github_annotations
    from reconciler.model.errors import Problem

    (line,) = github_annotations([Problem("a,b.yaml", 1, 2, "r", "50%\nnext")], lambda f: f)
    assert line == "::error file=a%2Cb.yaml,line=1,col=2,title=r::50%25%0Anext"


def test_warning_annotation_level(make_repo: RepoFactory) -> None:
    _code, out = invoke(str(make_repo(WARNING_ONLY)), "--format", "github")
    assert out.startswith("::warning file=")


def test_missing_path_is_an_error(tmp_path: pathlib.Path) -> None:
    code, out = invoke(str(tmp_path / "nope"))
    assert code == 1
    assert "repo-layout" in out


def test_directory_without_deployments_is_an_error(tmp_path: pathlib.Path) -> None:
    code, out = invoke(str(tmp_path))
    assert code == 1
    assert "no deployments/ directory" in out


def test_bad_format_is_a_usage_error(make_repo: RepoFactory) -> None:
    result = runner.invoke(app, ["validate", str(make_repo(GOOD)), "--format", "xml"])
    assert result.exit_code == 2


def test_console_script_runs_as_a_process(make_repo: RepoFactory) -> None:
    """The installed entry point, not just the typer app: exit codes survive the process."""
    root = make_repo(TWO_ERRORS)
    exe = pathlib.Path(sys.executable).with_name("reconcile")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "reconciler"]
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        [*cmd, "validate", str(root), "-f", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["summary"]["errors"] == 2
    proc = subprocess.run(
        [*cmd, "validate", str(make_repo(GOOD))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
