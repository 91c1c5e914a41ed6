"""Every Impreza deploy body in ``impreza_bodies/`` validates and plans with no edits.

Real loader, renderer and planner; no Docker.  Each body is copied byte for byte into a
repository of its own.  Without ``reconcile.yaml`` the only problem allowed is the
reference's agent placeholder; with ``reconcile.yaml`` mapping that placeholder (it has
the shape of an alias) to an agent id, the body plans as an install on that agent.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from reconciler.load.repo import load_repository
from reconciler.model.state import ActualState, AgentState
from reconciler.plan import plan
from reconciler.render import render_all

BODIES = pathlib.Path(__file__).parent / "impreza_bodies"
PLACEHOLDER = "agt_xxxxxxxxxxxx"
AGENT = "agt_0123456789abcdef"
ALL = sorted(p for p in BODIES.iterdir() if p.suffix in (".json", ".yaml"))
UPLOAD = {"upload.json"}
VALID = [p for p in ALL if p.name not in UPLOAD]


def repo_with(tmp_path: pathlib.Path, body: pathlib.Path, *, map_agent: bool) -> pathlib.Path:
    root = tmp_path / "repo"
    (root / "deployments").mkdir(parents=True)
    shutil.copyfile(body, root / "deployments" / body.name)
    if map_agent:
        (root / "reconcile.yaml").write_text(f"agents:\n  {PLACEHOLDER}: {AGENT}\n")
    return root


def test_the_corpus_covers_every_body_kind() -> None:
    """Catalog (JSON and YAML, with and without a version), image, git, manifest, upload."""
    kinds = set()
    for body in ALL:
        text = body.read_text()
        data = json.loads(text) if body.suffix == ".json" else None
        if data is not None:
            kinds.add(data.get("mode", "catalog"))
            if "context_id" in data:
                kinds.add("upload")
    assert kinds >= {"catalog", "image", "dockerfile", "manifest", "upload"}
    assert any(p.suffix == ".yaml" for p in ALL)


@pytest.mark.parametrize("body", VALID, ids=[p.name for p in VALID])
def test_body_has_no_problem_but_the_placeholder_agent(
    tmp_path: pathlib.Path, body: pathlib.Path
) -> None:
    state = load_repository(repo_with(tmp_path, body, map_agent=False))
    assert [(p.rule, p.message) for p in state.errors] == [
        ("agent-unknown", f"unknown agent {PLACEHOLDER!r}")
    ]
    (problem,) = state.errors
    line = next(i for i, text in enumerate(body.read_text().splitlines(), 1) if "agent_id" in text)
    assert (problem.file, problem.line) == (f"deployments/{body.name}", line)


@pytest.mark.parametrize("body", VALID, ids=[p.name for p in VALID])
def test_body_plans_as_an_install(tmp_path: pathlib.Path, body: pathlib.Path) -> None:
    state = load_repository(repo_with(tmp_path, body, map_agent=True))
    assert state.ok, [p.render() for p in state.errors]
    (want,) = render_all(state)
    actual = ActualState(source="empty", agents={AGENT: AgentState(agent=AGENT)})
    (action,) = plan([want], actual).actions
    assert (action.action, action.agent) == ("install", AGENT)
    data = json.loads(body.read_text()) if body.suffix == ".json" else {}
    expected_name = data.get("name", body.stem)
    assert action.deployment == expected_name
    if data.get("domain"):
        assert data["domain"] in action.routes


def test_catalog_body_vars_fill_the_upstream_environment(tmp_path: pathlib.Path) -> None:
    """``signups_allowed``/``admin_password`` land in SIGNUPS_ALLOWED/ADMIN_TOKEN, and the
    given admin password replaces the generated one (it is no longer a generated secret)."""
    state = load_repository(repo_with(tmp_path, BODIES / "vault.json", map_agent=True))
    (want,) = render_all(state)
    assert want.env["SIGNUPS_ALLOWED"] == "true"
    assert want.env["ADMIN_TOKEN"] == "change-me-to-a-long-random-string"
    assert "ADMIN_TOKEN" in want.secret_keys and "ADMIN_TOKEN" not in want.secrets
    assert "vaultwarden/server:1.32.0" in want.compose_yaml
    assert "signups_allowed" not in want.env


def test_two_route_body_plans_both_hostnames(tmp_path: pathlib.Path) -> None:
    state = load_repository(repo_with(tmp_path, BODIES / "wiki.json", map_agent=True))
    (want,) = render_all(state)
    actual = ActualState(source="empty", agents={AGENT: AgentState(agent=AGENT)})
    (action,) = plan([want], actual).actions
    assert action.routes == ["wiki.example.com", "wiki-admin.example.com"]


def test_upload_body_says_git_cannot_use_it(tmp_path: pathlib.Path) -> None:
    state = load_repository(repo_with(tmp_path, BODIES / "upload.json", map_agent=True))
    (problem,) = state.errors
    assert problem.rule == "upload-mode"
    assert (problem.file, problem.line) == ("deployments/upload.json", 5)
    assert "cannot use an upload" in problem.message
    assert problem.fix is not None and "`build: {context: ./upload}`" in problem.fix


def test_catalog_bodies_plan_through_the_console_script(tmp_path: pathlib.Path) -> None:
    """``reconcile --dry-run -f json --against empty`` on all catalog bodies at once."""
    root = tmp_path / "repo"
    (root / "deployments").mkdir(parents=True)
    (root / "reconcile.yaml").write_text(f"agents:\n  {PLACEHOLDER}: {AGENT}\n")
    catalog = [p for p in VALID if "app_name" in p.read_text()]
    for body in catalog:
        shutil.copyfile(body, root / "deployments" / body.name)
    script = pathlib.Path(sys.executable).with_name("reconcile")
    proc = subprocess.run(
        [str(script), "--dry-run", str(root), "--against", "empty", "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {a["deployment"]: a["action"] for a in doc["actions"]} == {
        p.stem: "install" for p in catalog
    }
