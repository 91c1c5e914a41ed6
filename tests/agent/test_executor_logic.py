"""Executor logic against fakes: step order, the settle gate's verdicts, rollback, purge.

These are pure unit tests of the pipeline; tests/agent/test_apply_docker.py runs the same
executor against the real Docker Engine, Compose and Caddy.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.compose import FakeComposeDriver
from agent.executor import Executor, ExecutorSettings, StepEvent
from agent.statedir import read_record
from reconciler.load.repo import load_repository
from reconciler.model.state import ActualState, AgentState, ContainerState, DeployedApp
from reconciler.plan import PlanOptions, plan
from reconciler.render import RenderContext, RenderedDeployment, render_all
from tests.conftest import RepoFactory


@dataclass
class FakeProxy:
    routes: dict[str, str] = field(default_factory=dict)
    ensured: int = 0
    status: int = 200

    def ensure(self) -> None:
        self.ensured += 1

    def sync(self, routes: Mapping[str, str]) -> object:
        self.routes = dict(routes)
        return None

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        return self.status if domain in self.routes else 404


@dataclass
class FakeWatch:
    """Containers per deployment id; ``script`` yields successive samples."""

    script: list[list[ContainerState]] = field(default_factory=list)
    default: list[ContainerState] | None = None

    def containers(self, deployment_id: str) -> list[ContainerState]:
        if self.script:
            return self.script.pop(0)
        return self.default or [ContainerState(service="app", name="c1")]

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        return {"app": "sha256:" + "a" * 64}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


REPO = {
    "reconcile.yaml": "namespace: t\nproxy: {tls: off, http_port: 8080}\n",
    "deployments/web.yaml": "name: web\nimage: busybox:1.36\nvars: {GREETING: hi}\n",
}


def setup(
    make_repo: RepoFactory,
    tmp_path: pathlib.Path,
    files: dict[str, str] | None = None,
    **settings: float,
) -> tuple[
    Executor, FakeComposeDriver, FakeProxy, FakeWatch, Clock, pathlib.Path, list[RenderedDeployment]
]:
    root = make_repo(files or REPO)
    state = load_repository(root)
    assert state.ok, state.problems
    rendered = render_all(state, RenderContext(config=state.config))
    clock = Clock()
    driver, proxy, watch = FakeComposeDriver(), FakeProxy(), FakeWatch()
    ex = Executor(
        state_dir=tmp_path / "state",
        driver=driver,
        proxy=proxy,
        watch=watch,
        settings=ExecutorSettings(settle_seconds=1.0, settle_timeout=5.0, **settings),
        sleep=clock.sleep,
        clock=clock,
        environ={},
    )
    return ex, driver, proxy, watch, clock, root, rendered


def actual_from(ex: Executor) -> ActualState:
    from agent.statedir import list_records

    apps = {
        r.id: DeployedApp(
            id=r.id,
            name=r.name,
            namespace=r.namespace,
            spec_hash=r.spec_hash,
            status=r.status,
            services=r.services,
            containers=[ContainerState(service=s) for s in r.services],
            record=r.record,
        )
        for r in list_records(ex.state_dir)
    }
    return ActualState(source="fake", agents={"local": AgentState(agent="local", deployments=apps)})


def test_install_runs_steps_in_order_and_records(make_repo: RepoFactory, tmp_path) -> None:
    ex, driver, proxy, _w, _c, root, rendered = setup(make_repo, tmp_path)
    p = plan(rendered, ActualState.empty(["local"]), namespace="t")
    (result,) = ex.run(p, rendered, root)
    assert result.ok, result.message
    assert driver.steps() == ["up"]  # `up` checks the file itself: no `config` first
    web = rendered[0]
    assert proxy.routes == {web.domain: f"{web.id}-app:80"}
    record = read_record(ex.state_dir, web.id)
    assert record is not None and record.status == "running"
    assert record.spec_hash == web.spec_hash
    app_dir = ex.state_dir / "apps" / web.id
    env = (app_dir / ".env").read_text()
    assert "GREETING='hi'" in env
    assert oct((app_dir / ".env").stat().st_mode & 0o777) == "0o600"
    assert (app_dir / "data").is_dir()
    assert len(list((app_dir / "releases").iterdir())) == 1
    # state.json holds no secret values, only digests
    assert "hi" not in json.dumps(json.loads((app_dir / "state.json").read_text())["record"]["env"])


def test_second_plan_after_install_is_noop(make_repo: RepoFactory, tmp_path) -> None:
    ex, _driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    again = plan(rendered, actual_from(ex), namespace="t")
    assert [a.action for a in again.actions] == ["noop"]


def test_crash_loop_in_settle_window_fails_install(make_repo: RepoFactory, tmp_path) -> None:
    ex, _d, _p, watch, _c, root, rendered = setup(make_repo, tmp_path)
    watch.script = [
        [ContainerState(service="app", name="c1", restarts=0)],
        [ContainerState(service="app", name="c1", restarts=0)],
        [ContainerState(service="app", name="c1", status="restarting", restarts=1)],
    ]
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok
    assert "settle" in result.message and "crash-looping" in result.message
    record = read_record(ex.state_dir, rendered[0].id)
    assert record is not None and record.status == "failed"


def test_exit_during_settle_is_failure_not_running(make_repo: RepoFactory, tmp_path) -> None:
    ex, _d, _p, watch, _c, root, rendered = setup(make_repo, tmp_path)
    watch.script = [
        [ContainerState(service="app", name="c1")],
        [ContainerState(service="app", name="c1", status="exited", exit_code=1)],
    ]
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok
    assert "exited (code 1)" in result.message


def test_healthcheck_starting_waits_then_settles_once_healthy(
    make_repo: RepoFactory, tmp_path
) -> None:
    """A healthy service does not wait out the window: the gate's decision says so."""
    ex, _d, _p, watch, _clock, root, rendered = setup(make_repo, tmp_path)
    events: list[StepEvent] = []
    ex.on_event = events.append
    watch.script = [[ContainerState(service="app", name="c1", health="starting")]] * 8
    watch.default = [ContainerState(service="app", name="c1", health="healthy")]
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert result.ok
    (settled,) = [e.detail for e in events if e.step == "settled"]
    assert settled == "after 2.0 s: app: healthy"  # the 9th sample, 8 x 0.25 s


def test_no_healthcheck_waits_out_the_window_from_the_first_sample(
    make_repo: RepoFactory, tmp_path
) -> None:
    ex, _d, _p, _watch, _clock, root, rendered = setup(make_repo, tmp_path)
    events: list[StepEvent] = []
    ex.on_event = events.append
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert result.ok
    (settled,) = [e.detail for e in events if e.step == "settled"]
    assert settled == "after 1.0 s: app: window"


def test_never_healthy_times_out(make_repo: RepoFactory, tmp_path) -> None:
    ex, _d, _p, watch, _c, root, rendered = setup(make_repo, tmp_path)
    watch.default = [ContainerState(service="app", name="c1", health="starting")]
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok
    assert "not ready after 5 s" in result.message


def test_failed_update_rolls_back(make_repo: RepoFactory, tmp_path) -> None:
    ex, driver, _proxy, watch, _c, root, rendered = setup(make_repo, tmp_path)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    web = rendered[0]
    app_dir = ex.state_dir / "apps" / web.id
    old_env = (app_dir / ".env").read_text()
    (root / "deployments" / "web.yaml").write_text(
        "name: web\nimage: busybox:1.37\nvars: {GREETING: bye}\n"
    )
    new = render_all(load_repository(root))
    update = plan(new, actual_from(ex), namespace="t")
    assert [a.action for a in update.actions] == ["update"]
    watch.script = [[ContainerState(service="app", name="c1", status="exited", exit_code=2)]]
    (result,) = ex.run(update, new, root)
    assert not result.ok and result.rolled_back
    assert "previous release restored" in result.message
    assert (app_dir / ".env").read_text() == old_env
    restored = (app_dir / "compose.yaml").read_text()
    assert "sha256:" + "a" * 64 in restored  # image pinned by id
    record = read_record(ex.state_dir, web.id)
    assert record is not None and record.spec_hash == web.spec_hash and record.status == "running"
    assert driver.steps()[-1] == "up"  # the rollback's up
    # the next plan still wants the update: level-triggered, retried next time
    assert [a.action for a in plan(new, actual_from(ex), namespace="t").actions] == ["update"]


def test_uninstall_keeps_data_unless_purge(make_repo: RepoFactory, tmp_path) -> None:
    ex, driver, proxy, _w, _c, root, rendered = setup(make_repo, tmp_path)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    web = rendered[0]
    data = ex.state_dir / "apps" / web.id / "data" / "keep.txt"
    data.write_text("precious")
    (root / "deployments" / "web.yaml").unlink()
    (root / "deployments" / "other.yaml").write_text("name: other\nimage: busybox:1.36\n")
    new = render_all(load_repository(root))
    # the only running deployment goes: that is "everything", so the guard needs the flag
    guarded = plan(new, actual_from(ex), namespace="t")
    assert {a.action for a in guarded.actions} == {"install", "blocked"}
    p = plan(new, actual_from(ex), namespace="t", options=PlanOptions(allow_mass_prune=True))
    assert {a.action for a in p.actions} == {"install", "uninstall"}
    results = ex.run(p, new, root)
    assert all(r.ok for r in results), [r.message for r in results]
    assert data.read_text() == "precious"
    assert web.domain not in proxy.routes
    record = read_record(ex.state_dir, web.id)
    assert record is not None and record.status == "uninstalled"
    assert ("down", web.id) in driver.calls


def test_purge_removes_app_dir(make_repo: RepoFactory, tmp_path) -> None:
    ex, driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path, purge=True)
    ex.settings.purge = False
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    ex.settings.purge = True
    p = plan([], actual_from(ex), namespace="t", options=PlanOptions(allow_mass_prune=True))
    (result,) = ex.run(p, [], root)
    assert result.ok and "purged" in result.message
    assert not (ex.state_dir / "apps" / rendered[0].id).exists()
    assert ("down-volumes", rendered[0].id) in driver.calls


def test_compose_failure_reports_step_and_hint(make_repo: RepoFactory, tmp_path) -> None:
    ex, driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path)
    driver.fail["up"] = "Error response from daemon: pull access denied for x"
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok
    assert result.message.startswith("up: ")
    assert "no registry answered" in result.message
    assert result.logs == "fake log line"


def test_a_file_compose_refuses_fails_as_config_and_nothing_is_taken_down(
    make_repo: RepoFactory, tmp_path
) -> None:
    """``up`` failed and ``compose config`` refuses the file too: the failure is the
    file's (step ``config``), and an install that started nothing is not taken down."""
    ex, driver, proxy, _w, _c, root, rendered = setup(make_repo, tmp_path)
    driver.fail["up"] = "validating compose.yaml: services.app Additional property x"
    driver.fail["config"] = "validating compose.yaml: services.app Additional property x"
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok and result.message.startswith("config: ")
    assert driver.steps() == ["up", "config"]
    assert not result.rolled_back and proxy.routes == {}
    record = read_record(ex.state_dir, rendered[0].id)
    assert record is not None and record.status == "failed"


def test_a_failed_up_with_a_good_file_is_the_ups_and_goes_down(
    make_repo: RepoFactory, tmp_path
) -> None:
    ex, driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path)
    driver.fail["up"] = "Error response from daemon: port is already allocated"
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok and result.message.startswith("up: ")
    assert driver.steps() == ["up", "config", "logs", "down"]
    assert result.rolled_back


@dataclass
class CountingProxy(FakeProxy):
    clock: Clock = field(default_factory=Clock)
    probes: list[float] = field(default_factory=list)

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        self.probes.append(self.clock.now)
        return super().probe(domain, path=path, timeout=timeout)


def test_the_probe_answers_during_the_settle_window_and_is_not_repeated(
    make_repo: RepoFactory, tmp_path
) -> None:
    """Once the route is pushed, the probe is asked during the settle window; an answer
    there is not asked again after the gate, and the gate still decides."""
    ex, _d, _p, watch, clock, root, rendered = setup(make_repo, tmp_path)
    proxy = CountingProxy(clock=clock)
    ex.proxy = ex.host.proxy = proxy
    pushed: list[Future[None]] = []
    publish = ex.host.publish

    def publish_and_keep(*args: Any) -> Future[None]:
        pushed.append(publish(*args))
        return pushed[-1]

    ex.host.publish = publish_and_keep  # type: ignore[method-assign]
    sample = watch.containers

    def after_the_push(dpl_id: str) -> list[ContainerState]:
        if pushed:
            pushed[0].result(10)  # the samples after it see the route served
        return sample(dpl_id)

    watch.containers = after_the_push  # type: ignore[method-assign]
    events: list[str] = []
    ex.on_event = lambda e: events.append(f"{e.step}: {e.detail}")
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert result.ok, result.message
    assert len(proxy.probes) == 1 and proxy.probes[0] < 1.0  # inside the 1 s window
    assert any("answered during the settle" in e for e in events), events


def test_an_app_that_answers_then_crashes_in_the_window_still_fails(
    make_repo: RepoFactory, tmp_path
) -> None:
    """The early probe gets its 200, the container restarts at 0.6 s of a 1 s window:
    the install fails and goes down, as without the early probe, however seldom the
    gate samples while only the window is left."""
    ex, driver, _p, watch, clock, root, rendered = setup(make_repo, tmp_path)

    def restarts_at_0_6(dpl_id: str) -> list[ContainerState]:
        return [ContainerState(service="app", name="c1", restarts=int(clock.now >= 0.6))]

    watch.containers = restarts_at_0_6  # type: ignore[method-assign]
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok and "crash-looping" in result.message
    assert driver.steps()[-1] == "down"


def test_probe_gateway_error_fails(make_repo: RepoFactory, tmp_path) -> None:
    ex, _d, proxy, _w, _c, root, rendered = setup(make_repo, tmp_path)
    proxy.status = 502
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok and result.message.startswith("probe:")


def test_from_env_secret_missing_fails_before_compose(make_repo: RepoFactory, tmp_path) -> None:
    files = {
        **REPO,
        "deployments/web.yaml": "name: web\nimage: busybox:1.36\n"
        "vars: {TOKEN: {from_env: WEB_TOKEN}}\n",
    }
    ex, driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path, files)
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert not result.ok and "WEB_TOKEN" in result.message
    assert driver.steps() == []
    ex.environ = {"WEB_TOKEN": "s3cret"}
    (result,) = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert result.ok
    env = (ex.state_dir / "apps" / rendered[0].id / ".env").read_text()
    assert "TOKEN='s3cret'" in env
    state_json = (ex.state_dir / "apps" / rendered[0].id / "state.json").read_text()
    assert "s3cret" not in state_json


def test_generated_secret_is_created_once(make_repo: RepoFactory, tmp_path) -> None:
    from agent.secrets import resolve_secrets

    manifest_repo = {
        "deployments/app/deployment.yaml": """\
name: gen
manifest:
  vars:
    - {name: KEY, secret: true, generate: "hex:40"}
  runtime:
    type: docker-compose
    compose_yaml: |
      services:
        app: {image: busybox:1.36, environment: {KEY: "${KEY}"}}
""",
    }
    root = make_repo(manifest_repo)
    (want,) = render_all(load_repository(root))
    first, keep = resolve_secrets(want, tmp_path, {})
    assert len(first["KEY"]) == 40
    (tmp_path / "secrets.json").write_text(json.dumps(keep))
    again, _ = resolve_secrets(want, tmp_path, {})
    assert again == first


def test_remote_agent_actions_are_skipped(make_repo: RepoFactory, tmp_path) -> None:
    files = {
        **REPO,
        "deployments/web.yaml": "name: web\nimage: busybox:1.36\nagent: agt_0123456789abcdef\n",
    }
    ex, driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path, files)
    p = plan(rendered, ActualState.empty(["local", "agt_0123456789abcdef"]), namespace="t")
    (result,) = ex.run(p, rendered, root)
    assert result.skipped and driver.calls == []


def test_env_values_are_quoted_literally() -> None:
    from agent.secrets import env_file_text

    assert env_file_text({"B": "x$y", "A": "it's"}) == "A=\"it's\"\nB='x$y'\n"


@pytest.mark.parametrize("spec", ["hex:8", "alnum:12", "password:16", "base64url:20", "uuid"])
def test_generate_lengths(spec: str) -> None:
    from agent.secrets import generate

    value = generate(spec)
    if spec == "uuid":
        assert len(value) == 36
    else:
        assert len(value) == int(spec.split(":")[1])


def test_lock_file_is_private(make_repo: RepoFactory, tmp_path) -> None:
    ex, *_rest, root, rendered = setup(make_repo, tmp_path)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    app_dir = ex.state_dir / "apps" / rendered[0].id
    assert oct(os.stat(app_dir).st_mode & 0o777) == "0o700"


BUNDLE_REPO = {
    "reconcile.yaml": "namespace: t\nproxy: {tls: off, http_port: 8080}\n",
    "deployments/blog/deployment.yaml": (
        "name: blog\ncompose: ./compose.yaml\n"
        "routes:\n  - upstream: '{deployment_id}-app:80'\n    match_var: domain\n"
    ),
    "deployments/blog/compose.yaml": (
        "services:\n  app:\n    image: busybox:1.36\n    container_name: ${DEPLOYMENT_ID}-app\n"
        "    command: [httpd, -f, -p, '80', -h, /seed]\n    volumes: ['./public:/seed:ro']\n"
        "    healthcheck: {test: [CMD, 'true'], interval: 2s}\n"
        "    networks: [default, impreza-proxy]\n"
        "networks:\n  impreza-proxy: {external: true}\n"
    ),
    "deployments/blog/public/index.html": "v1\n",
    "deployments/blog/notes.txt": "only in v1\n",
}


def _bundle_update(root: pathlib.Path) -> None:
    (root / "deployments/blog/public/index.html").write_text("v2\n")
    (root / "deployments/blog/notes.txt").unlink()
    (root / "deployments/blog/added.txt").write_text("only in v2\n")


def test_an_update_replaces_the_bundle_and_drops_files_it_no_longer_ships(
    make_repo: RepoFactory, tmp_path
) -> None:
    ex, _driver, _proxy, _watch, _c, root, rendered = setup(make_repo, tmp_path, BUNDLE_REPO)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    app_dir = ex.state_dir / "apps" / rendered[0].id
    (app_dir / "data" / "kept.db").write_text("user data")
    _bundle_update(root)
    new = render_all(load_repository(root))
    (result,) = ex.run(plan(new, actual_from(ex), namespace="t"), new, root)
    assert result.ok, result.message
    assert (app_dir / "public" / "index.html").read_text() == "v2\n"
    assert (app_dir / "added.txt").exists() and not (app_dir / "notes.txt").exists()
    assert (app_dir / "data" / "kept.db").read_text() == "user data"  # never a bundle entry


def test_a_failed_update_restores_the_bundle_files_of_the_release_that_worked(
    make_repo: RepoFactory, tmp_path
) -> None:
    ex, _driver, _proxy, watch, _c, root, rendered = setup(make_repo, tmp_path, BUNDLE_REPO)
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    app_dir = ex.state_dir / "apps" / rendered[0].id
    _bundle_update(root)
    new = render_all(load_repository(root))
    watch.script = [[ContainerState(service="app", name="c1", status="exited", exit_code=2)]]
    (result,) = ex.run(plan(new, actual_from(ex), namespace="t"), new, root)
    assert not result.ok and result.rolled_back
    assert (app_dir / "public" / "index.html").read_text() == "v1\n"
    assert (app_dir / "notes.txt").read_text() == "only in v1\n"
    assert not (app_dir / "added.txt").exists()


def test_a_rotated_from_env_value_is_drift_and_the_repair_writes_it(
    make_repo: RepoFactory, tmp_path
) -> None:
    from agent.observe import merge
    from agent.statedir import list_records

    files = {
        **REPO,
        "deployments/web.yaml": "name: web\nimage: busybox:1.36\n"
        "vars: {TOKEN: {from_env: WEB_TOKEN}}\n",
    }
    ex, _driver, _p, _w, _c, root, rendered = setup(make_repo, tmp_path, files)
    ex.environ = {"WEB_TOKEN": "first"}
    ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    web = rendered[0]
    record = read_record(ex.state_dir, web.id)
    assert record is not None and set(record.from_env) == {"TOKEN"}
    assert record.from_env["TOKEN"][0] == "WEB_TOKEN"
    assert "first" not in (ex.state_dir / "apps" / web.id / "state.json").read_text()

    def observed(environ: dict[str, str]) -> ActualState:
        running = [
            {
                "Id": "c1",
                "State": "running",
                "Labels": {
                    "io.reconciler.deployment": web.id,
                    "io.reconciler.spec-hash": web.spec_hash,
                    "com.docker.compose.service": "app",
                },
            }
        ]
        agent = merge("local", running, list_records(ex.state_dir), environ=environ)
        return ActualState(source="fake", agents={"local": agent})

    same = plan(rendered, observed({"WEB_TOKEN": "first"}), namespace="t")
    assert [a.action for a in same.actions] == ["noop"]
    rotated = plan(rendered, observed({"WEB_TOKEN": "second"}), namespace="t")
    (action,) = rotated.actions
    assert action.action == "repair" and "var TOKEN" in action.reason
    assert "second" not in action.model_dump_json()
    unset = plan(rendered, observed({}), namespace="t")
    assert [a.action for a in unset.actions] == ["repair"]

    ex.environ = {"WEB_TOKEN": "second"}
    (result,) = ex.run(rotated, rendered, root)
    assert result.ok, result.message
    assert "TOKEN='second'" in (ex.state_dir / "apps" / web.id / ".env").read_text()
    after = plan(rendered, observed({"WEB_TOKEN": "second"}), namespace="t")
    assert [a.action for a in after.actions] == ["noop"]
