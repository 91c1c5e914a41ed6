"""`reconcile status`: a table of this host, a JSON snapshot that `plan --against
snapshot:FILE` reads (round trip on the real Docker Engine), exit 1 without a daemon."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from agent.statedir import AppRecord, write_record
from reconciler.cli import app
from reconciler.cli.status import health_summary
from reconciler.load.repo import load_repository
from reconciler.model.state import ActualState, ContainerState, DeployedApp
from reconciler.render import RenderedDeployment, render_all, spec_record
from tests.agent.docker_helpers import Containers, labelled_containers, unique_namespace
from tests.conftest import RepoFactory

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})


def repo_files(namespace: str, greeting: str) -> dict[str, str]:
    return {
        "reconcile.yaml": f"namespace: {namespace}\nbase_domain: localhost\n"
        "proxy:\n  http_port: 8080\n  tls: off\n",
        "deployments/api.yaml": "name: api\nimage: busybox:1.36\ntarget_port: 80\n"
        f"vars:\n  GREETING: {greeting}\n",
    }


def rendered_of(repo: pathlib.Path) -> RenderedDeployment:
    state = load_repository(repo)
    assert state.ok, state.problems
    (want,) = render_all(state)
    return want


def install_by_hand(made: Containers, want: RenderedDeployment, state_dir: pathlib.Path) -> None:
    """What the executor leaves behind: labelled containers + a state record."""
    compose = yaml.safe_load(want.compose_yaml)
    for service, spec in compose["services"].items():
        labels = {
            **{str(k): str(v) for k, v in spec["labels"].items()},
            "com.docker.compose.project": want.id,
            "com.docker.compose.service": service,
        }
        made.run(f"{want.id}-{service}", ["httpd", "-f", "-p", "80"], labels)
    write_record(
        state_dir,
        AppRecord(
            id=want.id,
            name=want.name,
            namespace=want.namespace,
            spec_hash=want.spec_hash,
            status="running",
            services=list(want.services),
            one_shot=list(want.one_shot),
            record=spec_record(want),
            domain=want.domain,
            url=want.url,
        ),
    )


@pytest.fixture
def made() -> Iterator[Containers]:
    with labelled_containers() as containers:
        yield containers


# ---------------------------------------------------------------- without Docker


def test_no_daemon_exits_1_with_a_clear_message(tmp_path: pathlib.Path) -> None:
    for fmt in ("text", "json"):
        result = invoke(
            "status",
            "--state-dir",
            str(tmp_path),
            "--format",
            fmt,
            env={"DOCKER_HOST": "unix:///nonexistent.sock"},
        )
        assert result.exit_code == 1
        assert "no Docker daemon answers" in result.stderr
        assert result.stdout == ""


def test_health_summary() -> None:
    def app_(*containers: ContainerState, services: list[str], **kw: Any) -> DeployedApp:
        return DeployedApp(
            id="dpl_0000000000000000",
            name="x",
            namespace="n",
            spec_hash="h",
            services=services,
            containers=list(containers),
            **kw,
        )

    up = ContainerState(service="web")
    assert health_summary(app_(up, services=["web"])) == ("1/1 running", True)
    sick = ContainerState(service="db", health="unhealthy")
    assert health_summary(app_(up, sick, services=["db", "web"])) == (
        "1/2 running, db unhealthy",
        False,
    )
    assert health_summary(app_(services=["web"])) == ("0/1 running, web missing", False)
    done = ContainerState(service="migrate", status="exited", exit_code=0, one_shot=True)
    assert health_summary(app_(up, done, services=["migrate", "web"])) == ("1/1 running", True)
    failed = done.model_copy(update={"exit_code": 2})
    assert health_summary(app_(up, failed, services=["migrate", "web"])) == (
        "1/1 running, migrate exit 2",
        False,
    )
    crashed = ContainerState(service="web", status="exited", exit_code=1)
    assert health_summary(app_(crashed, services=["web"])) == (
        "0/1 running, web exited (1)",
        False,
    )
    assert health_summary(app_(services=["web"], status="uninstalled")) == ("uninstalled", True)


# ---------------------------------------------------------------- real Docker


@pytest.mark.docker
def test_status_table_and_json(
    tmp_path: pathlib.Path, make_repo: RepoFactory, made: Containers
) -> None:
    ns = unique_namespace("st")
    want = rendered_of(make_repo(repo_files(ns, "hello")))
    state_dir = tmp_path / "state"
    install_by_hand(made, want, state_dir)

    result = invoke("status", "--state-dir", str(state_dir))
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if want.id in line)
    for cell in ("api", ns, "running", "1/1 running", want.url, want.spec_hash[:12]):
        assert cell in row, (cell, row)

    result = invoke("status", "--state-dir", str(state_dir), "--format", "json")
    assert result.exit_code == 0, result.stderr
    snapshot = ActualState.model_validate_json(result.stdout)
    assert snapshot.source == "local"
    got = snapshot.agents["local"].deployments[want.id]
    assert (got.name, got.namespace, got.spec_hash) == ("api", ns, want.spec_hash)
    assert [(c.service, c.status) for c in got.containers] == [("app", "running")]
    assert json.loads(result.stdout)["format_version"] == 1


@pytest.mark.docker
def test_status_env_var_state_dir(
    tmp_path: pathlib.Path, make_repo: RepoFactory, made: Containers
) -> None:
    ns = unique_namespace("st")
    want = rendered_of(make_repo(repo_files(ns, "hello")))
    install_by_hand(made, want, tmp_path / "state")
    result = invoke(
        "status", "--format", "json", env={"RECONCILE_STATE_DIR": str(tmp_path / "state")}
    )
    assert result.exit_code == 0, result.stderr
    got = ActualState.model_validate_json(result.stdout).agents["local"].deployments[want.id]
    assert got.record is not None


@pytest.mark.docker
def test_snapshot_round_trip_through_plan(
    tmp_path: pathlib.Path, make_repo: RepoFactory, made: Containers
) -> None:
    ns = unique_namespace("rt")
    repo = make_repo(repo_files(ns, "hello"))
    want = rendered_of(repo)
    state_dir = tmp_path / "state"
    install_by_hand(made, want, state_dir)

    result = invoke("status", "--state-dir", str(state_dir), "--format", "json")
    assert result.exit_code == 0, result.stderr
    snap = tmp_path / "snapshot.json"
    snap.write_text(result.stdout)

    def plan_of(path: pathlib.Path) -> dict[str, Any]:
        res = invoke("plan", str(path), "--against", f"snapshot:{snap}", "--format", "json")
        assert res.exit_code == 0, res.output
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    unchanged = plan_of(repo)
    (action,) = [a for a in unchanged["actions"] if a["id"] == want.id]
    assert action["action"] == "noop", action

    changed_repo = make_repo(repo_files(ns, "goodbye"))
    changed = plan_of(changed_repo)
    (action,) = [a for a in changed["actions"] if a["id"] == want.id]
    assert action["action"] == "update", action
    env_changes = [c for c in action["changes"] if c["field"] == "env"]
    assert env_changes, action
    assert env_changes[0]["keys"] == ["GREETING"]
    assert "goodbye" not in json.dumps(changed)  # values never appear, only keys
    assert "hello" not in json.dumps(changed)
    # Other namespaces on this engine (other tests' containers) are never pruned.
    assert all(a["action"] in ("noop", "update") for a in changed["actions"])

    # The containers are gone: the same snapshot taken again makes the plan a repair.
    made.cleanup()
    result = invoke("status", "--state-dir", str(state_dir), "--format", "json")
    snap.write_text(result.stdout)
    (action,) = [a for a in plan_of(repo)["actions"] if a["id"] == want.id]
    assert action["action"] == "repair"
    assert "missing" in action["reason"]
