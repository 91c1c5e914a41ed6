"""`reconcile plan` / `reconcile --dry-run` end to end: golden files for the three formats
from one scenario holding every action kind, exit codes, and no colour off a tty.

The scenario: a repository written here ("repo"), and a snapshot of what the hosts run,
built from the renders of an older version of the same repository ("old") applied to
the in-memory host, then drifted.  Regenerate the golden files with
``UPDATE_GOLDEN=1 pytest tests/plan/test_plan_cli.py``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from reconciler.cli import app, rewrite_argv
from reconciler.load.repo import load_repository
from reconciler.model.state import ActualState, AgentState
from reconciler.plan import plan
from reconciler.render import render_all
from tests.plan import fakehost

GOLDEN = pathlib.Path(__file__).parent / "golden"
EDGE = "agt_00000000000000e1"
FAR = "agt_00000000000000f2"
NEW_TOKEN = "SECRET-feedfacecafe"
OLD_TOKEN = "SECRET-0ddba11c0ffe"

CONFIG = f"""\
namespace: golden
base_domain: example.test
agents:
  edge: {EDGE}
  far: {FAR}
proxy:
  http_port: 8080
  tls: off
"""

BLOG_COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    restart: unless-stopped
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
    networks: [default, impreza-proxy]
  migrate:
    image: busybox:1.36
    restart: "no"
    command: ["true"]
networks:
  impreza-proxy:
    external: true
"""


def _image(name: str, image: str, extra: str = "") -> str:
    return f"name: {name}\nimage: {image}\ntarget_port: 8080\n{extra}"


COMMON = {
    "reconcile.yaml": CONFIG,
    "deployments/blog/deployment.yaml": (
        'name: blog\ncompose: ./compose.yaml\nroutes:\n  - upstream: "{deployment_id}-app:80"\n'
    ),
    "deployments/blog/compose.yaml": BLOG_COMPOSE,
    "deployments/site/deployment.yaml": "name: site\nagent: edge\nbuild:\n  context: ./ctx\n",
    "deployments/site/ctx/Dockerfile": "FROM busybox:1.36\nCOPY index.html /www/\n",
    "deployments/worker.yaml": _image("worker", "busybox:1.36"),
    "deployments/far-app.yaml": _image("far-app", "busybox:1.36", "agent: far\n"),
}
OLD = {
    **COMMON,
    "deployments/api.yaml": _image(
        "api", "busybox:1.36", f"vars:\n  API_TOKEN: {OLD_TOKEN}\n  LOG_LEVEL: info\n"
    ),
    "deployments/site/ctx/index.html": "<h1>v1</h1>\n",
    "deployments/old-app.yaml": _image("old-app", "busybox:1.36"),
}
NEW = {
    **COMMON,
    "deployments/api.yaml": _image(
        "api",
        "busybox:1.37",
        f'domain: api.example.test\nvars:\n  API_TOKEN: "x {NEW_TOKEN}"\n  MODE: fast\n',
    ),
    "deployments/site/ctx/index.html": "<h1>v2</h1>\n",
    "deployments/shop.yaml": _image("shop", "caddy:2", "onion: true\n"),
}
AGENTS = ["local", EDGE, FAR]
ANSI = re.compile(r"\x1b\[")


def write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(content))
    return root


def applied(root: pathlib.Path) -> ActualState:
    """What the hosts run after applying ``root`` to empty hosts with the fake host."""
    desired = render_all(load_repository(root))
    empty = ActualState(source="snapshot", agents={a: AgentState(agent=a) for a in AGENTS})
    first = plan(desired, empty, namespace="golden")
    return fakehost.apply(first, desired, empty)


def scenario_snapshot(old_root: pathlib.Path) -> ActualState:
    """The old repository applied, then: worker crashed, `far` went offline, and another
    repository's app runs on the same host."""
    state = applied(old_root)
    local = state.agents["local"]
    worker = next(a for a in local.deployments.values() if a.name == "worker")
    crashed = worker.model_copy(
        update={
            "containers": [
                c.model_copy(update={"status": "exited", "exit_code": 1}) for c in worker.containers
            ]
        }
    )
    theirs = crashed.model_copy(
        update={"id": "dpl_00000000000000aa", "namespace": "someone-else", "name": "api"}
    )
    local = local.model_copy(
        update={"deployments": {**local.deployments, crashed.id: crashed, theirs.id: theirs}}
    )
    far = state.agents[FAR].model_copy(
        update={"online": False, "reason": "offline (no heartbeat since 2026-01-01 00:00 UTC)"}
    )
    return state.model_copy(update={"agents": {**state.agents, "local": local, FAR: far}})


@pytest.fixture
def world(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """tmp_path with repo/ (new), old/ and snapshot.json; the cwd, so paths print short."""
    write(tmp_path / "old", OLD)
    write(tmp_path / "repo", NEW)
    snapshot = scenario_snapshot(tmp_path / "old")
    (tmp_path / "snapshot.json").write_text(snapshot.model_dump_json(indent=2))
    (tmp_path / "current.json").write_text(applied(tmp_path / "repo").model_dump_json())
    monkeypatch.chdir(tmp_path)
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def reconcile(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, rewrite_argv(list(args)))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


SNAPSHOT = "--against=snapshot:snapshot.json"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.parametrize(
    ("fmt", "golden"), [("text", "plan.txt"), ("markdown", "plan.md"), ("json", "plan.json")]
)
def test_golden_plan(world: pathlib.Path, fmt: str, golden: str) -> None:
    code, out, err = reconcile("plan", "repo", SNAPSHOT, "-f", fmt)
    assert code == 0, err
    check_golden(golden, out)
    assert not ANSI.search(out)
    assert "SECRET-" not in out
    assert "SECRET-" not in err


def test_golden_scenario_holds_every_action_kind(world: pathlib.Path) -> None:
    _code, out, _err = reconcile("plan", "repo", SNAPSHOT, "-f", "json")
    doc = json.loads(out)
    kinds = {a["action"]: a for a in doc["actions"]}
    assert set(kinds) == {"install", "update", "uninstall", "repair", "noop", "blocked"}
    assert doc["summary"] == {
        "install": 1,
        "update": 2,
        "uninstall": 1,
        "repair": 1,
        "noop": 1,
        "blocked": 1,
    }
    names = {a["deployment"]: a["action"] for a in doc["actions"]}
    assert names == {
        "api": "update",
        "blog": "noop",
        "far-app": "blocked",
        "old-app": "uninstall",
        "shop": "install",
        "site": "update",
        "worker": "repair",
    }
    api = next(a for a in doc["actions"] if a["deployment"] == "api")
    env = next(c for c in api["changes"] if c["field"] == "env")
    assert env["keys"] == ["API_TOKEN", "DOMAIN", "DOMAIN_URL", "-LOG_LEVEL", "+MODE"]


def test_colour_only_when_asked_and_never_in_machine_formats(
    world: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # what a tty would get
    _code, text, _ = reconcile("plan", "repo", SNAPSHOT)
    assert ANSI.search(text)
    assert re.sub(r"\x1b\[[0-9;]*m", "", text) == (GOLDEN / "plan.txt").read_text()
    for fmt, golden in (("json", "plan.json"), ("markdown", "plan.md")):
        _code, out, _ = reconcile("plan", "repo", SNAPSHOT, "-f", fmt)
        assert out == (GOLDEN / golden).read_text()


def test_dry_run_is_plan(world: pathlib.Path) -> None:
    for fmt in ("text", "markdown", "json"):
        assert reconcile("--dry-run", "repo", SNAPSHOT, "-f", fmt) == reconcile(
            "plan", "repo", SNAPSHOT, "-f", fmt
        )


def test_dry_run_console_script_literally(world: pathlib.Path) -> None:
    """`reconcile --dry-run PATH` as a CI job types it: a real process, not a tty."""
    script = pathlib.Path(sys.executable).with_name("reconcile")
    proc = subprocess.run(
        [str(script), "--dry-run", "repo", SNAPSHOT, "--detailed-exitcode"],
        capture_output=True,
        text=True,
        cwd=world,
        env={k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == (GOLDEN / "plan.txt").read_text()
    assert not ANSI.search(proc.stdout + proc.stderr)


def test_detailed_exitcode_two_when_changes(world: pathlib.Path) -> None:
    code, out, _ = reconcile("plan", "repo", SNAPSHOT, "--detailed-exitcode")
    assert code == 2
    assert "Plan: 1 to install, 2 to update, 1 to repair, 1 to uninstall" in out
    # Without the flag a plan with changes is still a success.
    assert reconcile("plan", "repo", SNAPSHOT)[0] == 0


def test_detailed_exitcode_zero_when_nothing_to_do(world: pathlib.Path) -> None:
    code, out, _ = reconcile(
        "plan", "repo", "--against", "snapshot:current.json", "--detailed-exitcode"
    )
    assert code == 0
    assert out.rstrip().endswith("No changes. 6 deployments up to date.")
    code, out, _ = reconcile(
        "plan", "repo", "--against", "snapshot:current.json", "-f", "json", "--detailed-exitcode"
    )
    assert code == 0
    assert {a["action"] for a in json.loads(out)["actions"]} == {"noop"}


def test_detailed_exitcode_one_when_invalid_and_no_plan(world: pathlib.Path) -> None:
    write(world / "repo", {"deployments/shop.yaml": "name: shop\nimage: caddy:2\nimgae: x\n"})
    for fmt in ("text", "json", "markdown"):
        code, out, err = reconcile(
            "plan", "repo", SNAPSHOT, "-f", fmt, "--detailed-exitcode", "--allow-mass-prune"
        )
        assert code == 1
        assert "deployments/shop.yaml:3:1: error[schema]: unknown field 'imgae'" in err
        assert "No plan: the desired state is invalid" in err
        # No plan at all: in particular nothing to uninstall from a half-loaded repo.
        assert "uninstall" not in err + out
        if fmt == "text":
            assert out == ""
        elif fmt == "json":  # a document saying why, never an empty file (tests/cli)
            assert json.loads(out)["plan"] is None
        else:
            assert "No plan" in out


def test_against_empty_is_all_installs(world: pathlib.Path) -> None:
    code, out, _ = reconcile("plan", "repo", "--against", "empty", "-f", "json")
    assert code == 0
    doc = json.loads(out)
    assert {a["action"] for a in doc["actions"]} == {"install"}
    assert len(doc["actions"]) == 6


def test_bad_snapshot_is_an_error_not_a_plan(world: pathlib.Path) -> None:
    (world / "bad.json").write_text('{"agents": {"local": {"agent": 1}}}')
    code, out, err = reconcile("plan", "repo", "--against", "snapshot:bad.json")
    assert code == 1
    assert out == ""
    assert "not an actual-state file" in err
