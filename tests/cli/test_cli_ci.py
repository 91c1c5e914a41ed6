"""The CLI as a CI job runs it: the real ``reconcile`` console script in a subprocess, no
tty, stdout and stderr apart.  Each test is one case of issue 12's "CLI correctness in
CI": machine formats are whole documents even without a plan, ``-f github``, ``--strict``
verdicts, ``--detailed-exitcode``, text never read as markup, no ``:0:0``, a missing
directory named as such, and a plan that defaulted to this machine saying so."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

SCRIPT = pathlib.Path(sys.executable).with_name("reconcile")
NO_DOCKER = "unix:///nonexistent/docker.sock"

GOOD = {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"}
INVALID = {"deployments/api.yaml": "name: api\nimage: busybox:1.36\ndomian: x\n"}
WARNING_ONLY = {"deployments/api.yaml": "name: api\nimage: busybox\n"}
EDGE = "agt_00000000000000e1"
REMOTE_AGENT = {
    "reconcile.yaml": f"agents:\n  edge: {EDGE}\n",
    "deployments/api.yaml": "name: api\nimage: busybox:1.36\n",
    "deployments/far.yaml": "name: far\nimage: busybox:1.36\nagent: edge\n",
}


def write_repo(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    (root / "deployments").mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(content))
    return root


def run(
    *args: str | pathlib.Path, cwd: pathlib.Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "GITHUB_STEP_SUMMARY", "DOCKER_HOST")
    }
    # No Docker unless a test asks: the default --against is then `empty`.
    base.update(COLUMNS="200", DOCKER_HOST=NO_DOCKER, RECONCILE_STATE_DIR=str(cwd / "state"))
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        check=False,
        timeout=120,
    )


# ------------------------------------------------ machine formats without a plan


def test_plan_json_on_an_invalid_repo_is_a_document_with_the_problems(
    tmp_path: pathlib.Path,
) -> None:
    write_repo(tmp_path / "repo", INVALID)
    proc = run("--dry-run", "repo", "-f", "json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["plan"] is None and doc["valid"] is False
    assert doc["errors"] == 1
    (problem,) = doc["problems"]
    assert problem["file"] == "deployments/api.yaml" and problem["line"] == 3
    assert problem["message"] == "unknown field 'domian'"
    # People reading the job log still get the compiler-style report.
    assert "repo/deployments/api.yaml:3:1: error[schema]" in proc.stderr


def test_plan_json_when_the_source_cannot_be_opened(tmp_path: pathlib.Path) -> None:
    proc = run("plan", "missing", "-f", "json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["plan"] is None and doc["valid"] is False
    assert "neither a directory nor a git URL" in doc["error"]


def test_plan_json_when_the_actual_state_cannot_be_read(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", GOOD)
    proc = run("plan", "repo", "-f", "json", "--against", "snapshot:nope.json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["plan"] is None
    assert doc["valid"] is True  # the repository is fine; the snapshot is not
    assert "snapshot nope.json" in doc["error"]


def test_plan_markdown_on_an_invalid_repo_is_an_error_report(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", INVALID)
    proc = run("--dry-run", "repo", "-f", "markdown", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == "### compose-reconciler plan"
    assert "**✗ No plan: the desired state is invalid (1 error, 0 warnings" in proc.stdout
    row = next(line for line in lines if "domian" in line)
    assert row.startswith("| ✗ error | `repo/deployments/api.yaml:3:1` | schema |")
    assert "fix: did you mean 'domain'?" in row


def test_plan_markdown_when_the_source_cannot_be_opened(tmp_path: pathlib.Path) -> None:
    """A PR-comment step posts whatever stdout holds: never an empty file."""
    proc = run("--dry-run", "missing", "-f", "markdown", cwd=tmp_path)
    assert proc.returncode == 1
    assert "No plan: 'missing' is neither a directory nor a git URL" in proc.stdout


# ------------------------------------------------------------------- -f github


def test_plan_github_annotations_notice_and_step_summary(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", WARNING_ONLY)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    proc = run(
        "--dry-run",
        "repo",
        "-f",
        "github",
        "--against",
        "empty",
        cwd=tmp_path,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(
        "::warning file=repo/deployments/api.yaml,line=2,col=1,title=compose-image-unpinned::"
    )
    (notice,) = [line for line in lines if line.startswith("::notice ")]
    title, body = notice.removeprefix("::notice title=").split("::", 1)
    assert title == (
        "Plan%3A 1 to install%2C 0 to update%2C 0 to repair%2C 0 to uninstall%2C 0 unchanged."
    )
    body_lines = body.split("%0A")
    assert body_lines[0].startswith("Plan for repo (namespace default) against empty")
    assert body_lines[1].split() == ["+", "api", "install", "local", "new", "deployment"]
    # The Markdown plan is appended; what an earlier step wrote stays.
    text = summary.read_text()
    assert text.startswith("earlier step\n### compose-reconciler plan\n")
    assert "| + | `api` | install | `local` | new deployment |" in text


def test_plan_github_without_step_summary_writes_no_file(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", GOOD)
    proc = run("--dry-run", "repo", "-f", "github", "--against", "empty", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("::notice title=Plan%3A 1 to install")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_plan_github_on_an_invalid_repo(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", INVALID)
    summary = tmp_path / "summary.md"
    proc = run(
        "--dry-run",
        "repo",
        "-f",
        "github",
        cwd=tmp_path,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "::error file=repo/deployments/api.yaml,line=3,col=1,title=schema::"
        "unknown field 'domian'. Fix: did you mean 'domain'?"
    )
    assert lines[1].startswith("::error title=No plan::the desired state is invalid")
    assert not any(line.startswith("::notice") for line in lines)
    assert "No plan: the desired state is invalid" in summary.read_text()


def test_plan_github_step_summary_unwritable_is_a_warning_not_a_crash(
    tmp_path: pathlib.Path,
) -> None:
    write_repo(tmp_path / "repo", GOOD)
    proc = run(
        "--dry-run",
        "repo",
        "-f",
        "github",
        "--against",
        "empty",
        cwd=tmp_path,
        env={"GITHUB_STEP_SUMMARY": str(tmp_path / "no" / "such" / "summary.md")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "::warning::could not append the plan to $GITHUB_STEP_SUMMARY" in proc.stdout


# --------------------------------------------------------------- validate --strict


def test_strict_failure_never_says_valid(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", WARNING_ONLY)
    loose = run("validate", "repo", cwd=tmp_path)
    assert loose.returncode == 0
    assert "✓ 1 deployment valid (1 warning)" in loose.stdout
    for fmt in ("text", "github"):
        strict = run("validate", "repo", "--strict", "-f", fmt, cwd=tmp_path)
        assert strict.returncode == 1
        assert "valid" not in strict.stdout.splitlines()[-1]
        assert "✗ 0 errors, 1 warning in 1 deployment file (--strict: warnings are errors)" in (
            strict.stdout
        )
        if fmt == "github":  # the annotation fails the check run too
            assert strict.stdout.startswith("::error file=repo/deployments/api.yaml,line=2")
    doc = json.loads(run("validate", "repo", "--strict", "-f", "json", cwd=tmp_path).stdout)
    assert doc["valid"] is False
    assert json.loads(run("validate", "repo", "-f", "json", cwd=tmp_path).stdout)["valid"]


# ----------------------------------------------------------- --detailed-exitcode


@pytest.mark.parametrize(
    "usage_error",
    [
        ["--bogus"],  # unknown flag
        ["--against"],  # missing argument
        ["-f", "yaml"],  # bad value
    ],
)
def test_detailed_exitcode_usage_error_exits_one(
    tmp_path: pathlib.Path, usage_error: list[str]
) -> None:
    write_repo(tmp_path / "repo", GOOD)
    proc = run("--dry-run", "repo", "--detailed-exitcode", *usage_error, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Error" in proc.stderr and proc.stdout == ""
    # Without the flag click's usual 2 stands, and with it a real change is still 2.
    without = run("--dry-run", "repo", *usage_error, cwd=tmp_path)
    assert without.returncode == 2
    changes = run("--dry-run", "repo", "--detailed-exitcode", "--against", "empty", cwd=tmp_path)
    assert changes.returncode == 2, changes.stderr


# ------------------------------------------------------------- text, not markup


def test_paths_with_brackets_print_as_they_are(tmp_path: pathlib.Path) -> None:
    root = write_repo(tmp_path / "[prod]" / "[/]", INVALID)
    validate = run("validate", root, cwd=tmp_path)
    assert validate.returncode == 1
    assert "[prod]/[/]/deployments/api.yaml:3:1: error[schema]" in validate.stdout
    plan = run("--dry-run", root, cwd=tmp_path)
    assert plan.returncode == 1 and "Traceback" not in plan.stderr
    assert "[prod]/[/]/deployments/api.yaml:3:1: error[schema]" in plan.stderr
    # An error about the path itself (no such source): printed, not read as a closing tag.
    missing = run("--dry-run", "[/]missing", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "'[/]missing' is neither a directory nor a git URL" in missing.stderr


def test_plan_text_prints_names_and_source_as_they_are(tmp_path: pathlib.Path) -> None:
    root = write_repo(tmp_path / "[bold]x[/bold]", GOOD)
    proc = run("--dry-run", root, "--against", "empty", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Plan for {root} (namespace default) against empty")


def test_hook_create_shows_the_name_rule_with_its_brackets(tmp_path: pathlib.Path) -> None:
    proc = run("hook", "create", "Bad_Name", "--data-dir", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: hook name 'Bad_Name' must match ^[a-z0-9][a-z0-9_-]{1,98}[a-z0-9]$"
    )


def test_host_text_in_a_plan_is_plain_and_escaped(tmp_path: pathlib.Path) -> None:
    """A snapshot is what hosts reported: an app's name and an agent's offline reason are
    printed as text.  Markup stays literal (no crash on ``[/oops]``, no link), and escape
    sequences (an OSC 8 hyperlink, "hide text") reach the terminal only as ``\\x1b``."""
    write_repo(tmp_path / "repo", REMOTE_AGENT)
    name = "[/oops] \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
    reason = "[link=https://evil.example]down[/link] \x1b[8mhidden <img src=x><!--"
    snapshot = {
        "source": "snapshot",
        "agents": {
            "local": {
                "agent": "local",
                "deployments": {
                    "dpl_00000000000000aa": {
                        "id": "dpl_00000000000000aa",
                        "name": name,
                        "namespace": "default",
                        "spec_hash": "0" * 64,
                    }
                },
            },
            EDGE: {"agent": EDGE, "online": False, "reason": reason},
        },
    }
    (tmp_path / "snapshot.json").write_text(json.dumps(snapshot))
    proc = run("--dry-run", "repo", "--against", "snapshot:snapshot.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    gone = next(line for line in proc.stdout.splitlines() if "[/oops]" in line)
    assert gone.split()[:2] == ["✗", "[/oops]"]  # blocked by the mass-prune guard
    assert r"\x1b]8;;https://evil.example\x1b\click\x1b]8;;\x1b\ " in gone
    far = next(line for line in proc.stdout.splitlines() if " far " in line)
    assert r"[link=https://evil.example]down[/link] \x1b[8mhidden <img src=x><!--" in far
    # A PR comment: no raw HTML (an image, a comment hiding the rest), no escape codes.
    markdown = run(
        "--dry-run", "repo", "-f", "markdown", "--against", "snapshot:snapshot.json", cwd=tmp_path
    )
    assert "\x1b" not in markdown.stdout and "<img" not in markdown.stdout
    assert r"\x1b[8mhidden &lt;img src=x>&lt;!--" in markdown.stdout


# ------------------------------------------------------ places that are not files


def test_a_problem_without_a_file_prints_no_zero_position(tmp_path: pathlib.Path) -> None:
    validate = run("validate", "missing", cwd=tmp_path)
    assert validate.returncode == 1
    assert ":0:0" not in validate.stdout
    assert validate.stdout.startswith("error[repo-layout]: missing is not a directory\n")
    plan = run("--dry-run", "missing", cwd=tmp_path)
    assert plan.returncode == 1
    assert plan.stderr.strip() == "error: 'missing' is neither a directory nor a git URL"
    annotations = run("validate", "missing", "-f", "github", cwd=tmp_path)
    assert ",line=0" not in annotations.stdout


@pytest.mark.parametrize("path", ["/no/such/dir", "./nope", "../nope/repo"])
def test_reconcile_missing_directory_says_so(tmp_path: pathlib.Path, path: str) -> None:
    proc = run(path, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: directory {path} does not exist"
    assert "No such command" not in proc.stderr


def test_reconcile_file_is_not_a_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "api.yaml").write_text("name: api\n")
    proc = run("./api.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: ./api.yaml is not a directory" in proc.stderr


def test_a_mistyped_command_is_still_a_mistyped_command(tmp_path: pathlib.Path) -> None:
    proc = run("statsu", cwd=tmp_path)
    assert proc.returncode == 2
    assert "No such command 'statsu'" in proc.stderr


# --------------------------------------------------- where the actual state came from


def test_default_without_docker_plans_against_empty_and_says_so(tmp_path: pathlib.Path) -> None:
    write_repo(tmp_path / "repo", REMOTE_AGENT)
    proc = run("--dry-run", "repo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Plan for repo (namespace default) against empty (default: no Docker")
    assert "blocked" not in proc.stdout


@pytest.mark.docker
def test_default_with_docker_plans_against_this_host_and_says_so(
    tmp_path: pathlib.Path,
) -> None:
    """A CI runner with Docker: the plan is against the runner, remote agents blocked,
    and the first line (and the Markdown, and a GitHub warning) say so."""
    from tests.agent.docker_helpers import docker_client

    docker_client()  # fails (never skips) without a daemon
    write_repo(tmp_path / "repo", REMOTE_AGENT)
    docker = {"DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")}
    proc = run("--dry-run", "repo", cwd=tmp_path, env=docker)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Plan for repo (namespace default) against local Docker host (")
    assert "every agent other than `local` is blocked" in first
    assert "--against empty, --against snapshot:FILE or the control plane's URL" in first
    far = next(line for line in proc.stdout.splitlines() if " far " in line)
    assert far.split()[:4] == ["✗", "far", "blocked", EDGE]

    markdown = run("--dry-run", "repo", "-f", "markdown", cwd=tmp_path, env=docker)
    assert markdown.stdout.splitlines()[2].startswith("> **Note:** no --against given")
    github = run("--dry-run", "repo", "-f", "github", cwd=tmp_path, env=docker)
    assert "::warning title=plan against this host::no --against given" in github.stdout
    # With --against, nothing to say.
    empty = run("--dry-run", "repo", "--against", "empty", cwd=tmp_path, env=docker)
    assert "blocked" not in empty.stdout
