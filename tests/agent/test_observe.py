"""agent.observe: the local host's actual state, against the real Docker Engine.

The Docker tests create labelled busybox containers with the SDK, write matching
state-dir records and check the AgentState.  Other tests (and other runs) may have
labelled containers on the same engine, so assertions only look at this module's ids.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agent import observe
from agent.observe import container_state, docker_available, merge, observe_local
from agent.statedir import AppRecord, write_record
from reconciler.load.repo import LoadedDeployment
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.ids import deployment_id
from reconciler.model.state import AgentState, SpecRecord
from tests.agent.docker_helpers import (
    Containers,
    labelled_containers,
    labels_for,
    unique_namespace,
    wait_until,
)

HASH_A = "a" * 64
HASH_B = "b" * 64


def record_for(namespace: str, name: str, **kw: Any) -> AppRecord:
    fields: dict[str, Any] = {
        "id": deployment_id(namespace, name),
        "name": name,
        "namespace": namespace,
        "spec_hash": HASH_A,
        "services": ["app"],
        "record": SpecRecord(images={"app": "busybox:1.36"}),
    }
    fields.update(kw)
    return AppRecord.model_validate(fields)


# ---------------------------------------------------------------- pure parts


def test_observer_reads_the_labels_the_renderer_writes() -> None:
    """The label names are part of the on-host contract (DESIGN.md): pinned literally."""
    assert (
        observe.LABEL_NAMESPACE,
        observe.LABEL_DEPLOYMENT,
        observe.LABEL_SPEC_HASH,
    ) == ("io.reconciler.namespace", "io.reconciler.deployment", "io.reconciler.spec-hash")
    from reconciler.model.deployment import parse_deployment
    from reconciler.render.rendering import RenderContext, render

    item = LoadedDeployment(
        "deployments/x.yaml",
        pathlib.Path("."),
        load_yaml("name: x\n", "x.yaml"),
        parse_deployment({"name": "web", "image": "busybox:1.36"}),
    )
    rendered = render(item, RenderContext())
    labels = yaml.safe_load(rendered.compose_yaml)["services"]["app"]["labels"]
    assert labels[observe.LABEL_DEPLOYMENT] == rendered.id
    assert labels[observe.LABEL_SPEC_HASH] == rendered.spec_hash
    assert labels[observe.LABEL_NAME] == "web"


@pytest.mark.parametrize(
    ("state", "status_text", "status", "health", "code"),
    [
        ("running", "Up 3 seconds", "running", "none", None),
        ("running", "Up 2 minutes (healthy)", "running", "healthy", None),
        ("running", "Up 2 minutes (unhealthy)", "running", "unhealthy", None),
        ("running", "Up 1 second (health: starting)", "running", "starting", None),
        ("exited", "Exited (1) 3 seconds ago", "exited", "none", 1),
        ("exited", "Exited (0) About a minute ago", "exited", "none", 0),
        ("exited", "Exited (137) 5 hours ago", "exited", "none", 137),
        ("restarting", "Restarting (2) 1 second ago", "restarting", "none", 2),
        ("created", "Created", "created", "none", None),
        ("paused", "Up 4 seconds (Paused)", "paused", "none", None),
        ("dead", "Dead", "dead", "none", None),
        ("frobbed", "Frobbed", "dead", "none", None),  # unknown word: not healthy
    ],
)
def test_container_state_from_list_entry(
    state: str, status_text: str, status: str, health: str, code: int | None
) -> None:
    item = {
        "Id": "c0ffee" * 10,
        "Names": ["/dpl_x-app"],
        "State": state,
        "Status": status_text,
        "Labels": {"com.docker.compose.service": "app"},
    }
    got = container_state(item, one_shot=["migrate"], restarts=3)
    assert (got.status, got.health, got.exit_code) == (status, health, code)
    assert got.service == "app"
    assert got.name == "dpl_x-app"
    assert got.restarts == 3
    assert not got.one_shot


def _item(dpl: str, service: str, spec_hash: str = HASH_A, **labels: str) -> dict[str, Any]:
    return {
        "Id": f"{dpl}-{service}",
        "Names": [f"/{dpl}-{service}"],
        "State": "running",
        "Status": "Up 1 second",
        "Labels": {
            observe.LABEL_DEPLOYMENT: dpl,
            observe.LABEL_SPEC_HASH: spec_hash,
            "com.docker.compose.service": service,
            **labels,
        },
    }


def test_merge_record_wins_but_stale_labels_show_a_difference() -> None:
    rec = record_for("ns", "web")
    same = merge("local", [_item(rec.id, "app")], [rec])
    assert same.deployments[rec.id].spec_hash == HASH_A
    stale = merge("local", [_item(rec.id, "app", HASH_B)], [rec])
    app = stale.deployments[rec.id]
    assert app.spec_hash == HASH_B  # what actually runs: the planner will not say noop
    assert app.record == rec.record
    assert app.name == "web"


def test_merge_ignores_foreign_and_garbage_labels() -> None:
    items = [
        {"Id": "x", "Names": ["/x"], "State": "running", "Status": "Up", "Labels": {}},
        _item("not-a-dpl-id", "app"),
        _item("dpl_../../etc", "app"),
    ]
    assert merge("local", items, []).deployments == {}


def test_merge_labels_only() -> None:
    dpl = deployment_id("ns", "api")
    items = [
        _item(dpl, "web", **{observe.LABEL_NAMESPACE: "ns", observe.LABEL_NAME: "api"}),
        _item(dpl, "db", **{observe.LABEL_NAMESPACE: "ns", observe.LABEL_NAME: "api"}),
    ]
    app = merge("local", items, []).deployments[dpl]
    assert (app.name, app.namespace, app.spec_hash, app.record) == ("api", "ns", HASH_A, None)
    assert app.services == ["db", "web"]
    assert [c.service for c in app.containers] == ["db", "web"]


def test_merge_record_without_containers_and_uninstalled() -> None:
    gone = record_for("ns", "gone")
    old = record_for("ns", "old", status="uninstalled")
    state = merge("local", [], [gone, old])
    assert state.deployments[gone.id].containers == []
    assert state.deployments[gone.id].status == "running"
    assert state.deployments[old.id].status == "uninstalled"


def test_docker_available_is_false_fast_without_a_daemon(tmp_path: pathlib.Path) -> None:
    code = (
        "import time, agent.observe as o\n"
        "t = time.monotonic(); ok = o.docker_available(); dt = time.monotonic() - t\n"
        "print(ok, dt)\n"
    )
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    ok, took = proc.stdout.split()
    assert ok == "False"
    assert float(took) < 2.0
    assert wall < 10.0  # interpreter + SDK import included


def test_docker_available_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    start = time.monotonic()
    assert docker_available() is False
    assert time.monotonic() - start < 2.0


def test_observe_reports_offline_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    state = observe_local(state_dir=tmp_path, agent="local")
    assert state == AgentState(agent="local", online=False, reason=state.reason)
    assert state.reason is not None
    assert state.reason.startswith("offline (the Docker daemon did not answer")


# ---------------------------------------------------------------- real Docker


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A set of labelled containers and records, shared by the Docker tests below."""
    ns = unique_namespace("obs")
    other_ns = unique_namespace("other")
    state_dir = tmp_path_factory.mktemp("state")
    with labelled_containers() as made:
        ids = _populate(made, ns, other_ns, state_dir)
        yield {"ns": ns, "other_ns": other_ns, "state_dir": state_dir, "made": made, **ids}


def _populate(made: Containers, ns: str, other_ns: str, state_dir: pathlib.Path) -> dict[str, Any]:
    tag = ns
    # web: two long-running services, record says both.
    web = deployment_id(ns, "web")
    made.run(f"{tag}-web-app", ["sleep", "300"], labels_for(ns, "web", "app", HASH_A))
    made.run(
        f"{tag}-web-http", ["httpd", "-f", "-p", "8080"], labels_for(ns, "web", "http", HASH_A)
    )
    write_record(state_dir, record_for(ns, "web", services=["app", "http"]))
    # crash: exits 1 (restart "no").
    crash = deployment_id(ns, "crash")
    c_crash = made.run(f"{tag}-crash-app", ["sh", "-c", "exit 1"], labels_for(ns, "crash", "app"))
    write_record(state_dir, record_for(ns, "crash"))
    # job: a long-running app and a one-shot migrate that exits 0.
    job = deployment_id(ns, "job")
    made.run(f"{tag}-job-app", ["sleep", "300"], labels_for(ns, "job", "app"))
    c_migrate = made.run(
        f"{tag}-job-migrate", ["sh", "-c", "exit 0"], labels_for(ns, "job", "migrate")
    )
    write_record(
        state_dir, record_for(ns, "job", services=["app", "migrate"], one_shot=["migrate"])
    )
    # loop: crash-looping under restart: always.
    loop = deployment_id(ns, "loop")
    c_loop = made.run(
        f"{tag}-loop-app",
        ["sh", "-c", "exit 3"],
        labels_for(ns, "loop", "app"),
        restart_policy={"Name": "always"},
    )
    write_record(state_dir, record_for(ns, "loop"))
    # health: one passes its healthcheck, one fails it.
    health = deployment_id(ns, "health")
    hc = {"interval": 100_000_000, "timeout": 1_000_000_000, "retries": 1, "start_period": 0}
    made.run(
        f"{tag}-health-ok",
        ["sleep", "300"],
        labels_for(ns, "health", "ok"),
        healthcheck={"test": ["CMD", "true"], **hc},
    )
    made.run(
        f"{tag}-health-bad",
        ["sleep", "300"],
        labels_for(ns, "health", "bad"),
        healthcheck={"test": ["CMD", "false"], **hc},
    )
    write_record(state_dir, record_for(ns, "health", services=["bad", "ok"]))
    # orphan: labelled containers, no record (state dir lost or never written).
    orphan = deployment_id(ns, "orphan")
    made.run(f"{tag}-orphan-app", ["sleep", "300"], labels_for(ns, "orphan", "app", HASH_B))
    # missing: a record whose containers are gone.
    missing = deployment_id(ns, "missing")
    write_record(state_dir, record_for(ns, "missing"))
    # gone: uninstalled, data kept.
    gone = deployment_id(ns, "gone")
    write_record(state_dir, record_for(ns, "gone", status="uninstalled"))
    # another namespace: reported, with its namespace (the planner filters).
    foreign = deployment_id(other_ns, "web")
    made.run(f"{tag}-foreign-app", ["sleep", "300"], labels_for(other_ns, "web", "app"))
    # unlabelled: must never appear.
    c_plain = made.run(
        f"{tag}-plain", ["sleep", "300"], {"com.docker.compose.service": "app", "x": ns}
    )

    for c in (c_crash, c_migrate):
        c.wait(timeout=30)
    client = made.client
    wait_until(
        lambda: client.api.inspect_container(c_loop.id)["RestartCount"] >= 2,
        what="the crash-looping container to restart twice",
    )

    def healthy_both() -> bool:
        states = [
            client.api.inspect_container(f"{tag}-health-{n}")["State"].get("Health", {})
            for n in ("ok", "bad")
        ]
        return [s.get("Status") for s in states] == ["healthy", "unhealthy"]

    wait_until(healthy_both, what="healthchecks to settle")
    return {
        "web": web,
        "crash": crash,
        "job": job,
        "loop": loop,
        "health": health,
        "orphan": orphan,
        "missing": missing,
        "gone": gone,
        "foreign": foreign,
        "plain_id": c_plain.id,
    }


def _mine(state: AgentState, host: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in state.deployments.items() if v.namespace in (host["ns"], host["other_ns"])
    }


@pytest.mark.docker
def test_observe_local_sees_every_case(host: dict[str, Any]) -> None:
    state = observe_local(state_dir=host["state_dir"], agent="local")
    assert state.agent == "local"
    assert state.online
    mine = _mine(state, host)
    assert set(mine) == {
        host[k]
        for k in ("web", "crash", "job", "loop", "health", "orphan", "missing", "gone", "foreign")
    }

    web = mine[host["web"]]
    assert (web.name, web.namespace, web.spec_hash, web.status) == (
        "web",
        host["ns"],
        HASH_A,
        "running",
    )
    assert web.services == ["app", "http"]
    assert web.record == SpecRecord(images={"app": "busybox:1.36"})
    assert [(c.service, c.status, c.health) for c in web.containers] == [
        ("app", "running", "none"),
        ("http", "running", "none"),
    ]
    assert web.containers[0].name == f"{host['ns']}-web-app"

    (crash,) = mine[host["crash"]].containers
    assert (crash.status, crash.exit_code, crash.one_shot, crash.restarts) == (
        "exited",
        1,
        False,
        0,
    )

    job = {c.service: c for c in mine[host["job"]].containers}
    assert job["app"].status == "running"
    assert (job["migrate"].status, job["migrate"].exit_code, job["migrate"].one_shot) == (
        "exited",
        0,
        True,
    )
    assert not job["app"].one_shot

    health = {c.service: c.health for c in mine[host["health"]].containers}
    assert health == {"ok": "healthy", "bad": "unhealthy"}

    orphan = mine[host["orphan"]]
    assert orphan.record is None
    assert (orphan.name, orphan.namespace, orphan.spec_hash) == ("orphan", host["ns"], HASH_B)
    assert orphan.services == ["app"]

    missing = mine[host["missing"]]
    assert (missing.status, missing.containers, missing.services) == ("running", [], ["app"])
    assert mine[host["gone"]].status == "uninstalled"
    assert mine[host["gone"]].containers == []

    foreign = mine[host["foreign"]]
    assert foreign.namespace == host["other_ns"]
    assert foreign.record is None

    names = {c.name for app in state.deployments.values() for c in app.containers}
    assert f"{host['ns']}-plain" not in names


@pytest.mark.docker
def test_observe_local_counts_restarts_of_a_crash_loop(host: dict[str, Any]) -> None:
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = observe_local(state_dir=host["state_dir"])
        (c,) = state.deployments[host["loop"]].containers
        seen.append((c.status, c.restarts))
        if c.status == "restarting" and c.restarts >= 2:
            assert c.exit_code == 3
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw the loop restarting with a count: {seen[-5:]}")


@pytest.mark.docker
def test_observe_local_is_one_list_plus_inspects_of_stopped_only(host: dict[str, Any]) -> None:
    import docker

    calls: list[str] = []
    client = docker.from_env(timeout=30)
    real_list, real_inspect = client.api.containers, client.api.inspect_container

    def list_spy(*a: Any, **kw: Any) -> Any:
        calls.append("list")
        assert kw.get("all") is True
        assert kw.get("filters") == {"label": observe.LABEL_DEPLOYMENT}
        return real_list(*a, **kw)

    def inspect_spy(cid: str) -> Any:
        calls.append("inspect")
        return real_inspect(cid)

    client.api.containers = list_spy
    client.api.inspect_container = inspect_spy
    try:
        state = observe_local(state_dir=host["state_dir"], client=client)
    finally:
        client.close()
    assert calls.count("list") == 1
    stopped = sum(
        1
        for app in state.deployments.values()
        for c in app.containers
        if c.status in ("exited", "restarting")
    )
    # Inspected: exactly the exited/restarting ones (a crash loop may flip between list
    # and inspect, hence the tolerance of one).
    assert abs(calls.count("inspect") - stopped) <= 1
    assert calls.count("inspect") < sum(len(a.containers) for a in state.deployments.values())


@pytest.mark.docker
def test_observe_local_default_state_dir(
    host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_STATE_DIR", str(host["state_dir"]))
    state = observe_local()
    assert state.deployments[host["web"]].record is not None


@pytest.mark.docker
def test_docker_available_true_with_the_engine(host: dict[str, Any]) -> None:
    start = time.monotonic()
    assert docker_available() is True
    assert time.monotonic() - start < 2.0
