"""The executor's onion logic against fakes: keys and DOMAIN before the first up, the
``.onion`` proxy route, the sidecar told the full set, toggles, uninstall and purge."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.compose import FakeComposeDriver
from agent.executor import Executor, ExecutorSettings
from agent.observe import merge
from agent.onion import SECRET_KEY, read_identity
from agent.statedir import list_records, read_record
from reconciler.load.repo import load_repository
from reconciler.model.state import ActualState, AgentState, ContainerState, DeployedApp
from reconciler.plan import PlanOptions, plan
from reconciler.render import RenderContext, RenderedDeployment, render_all
from tests.agent.test_executor_logic import Clock, FakeProxy, FakeWatch
from tests.conftest import RepoFactory

CONFIG = "namespace: t\nproxy: {tls: off, http_port: 8080}\n"


@dataclass
class FakeTor:
    calls: list[dict[str, pathlib.Path]] = field(default_factory=list)

    def sync(self, keys: Mapping[str, pathlib.Path]) -> object:
        self.calls.append(dict(keys))
        return None


@dataclass
class Host:
    ex: Executor
    proxy: FakeProxy
    tor: FakeTor
    make_repo: RepoFactory

    def apply(self, deployments: dict[str, str]) -> list[RenderedDeployment]:
        root = self.make_repo(
            {"reconcile.yaml": CONFIG}
            | {f"deployments/{name}.yaml": text for name, text in deployments.items()}
        )
        state = load_repository(root)
        assert state.ok, state.problems
        rendered = render_all(state, RenderContext(config=state.config))
        actual = merge("local", [], list_records(self.ex.state_dir))
        actual = actual.model_copy(
            update={
                "deployments": {
                    k: v.model_copy(
                        update={"containers": [ContainerState(service=s) for s in v.services]}
                    )
                    for k, v in actual.deployments.items()
                }
            }
        )
        p = plan(
            rendered,
            ActualState(source="fake", agents={"local": actual}),
            namespace="t",
            options=PlanOptions(allow_mass_prune=True),
        )
        assert not [a for a in p.actions if a.action == "blocked"]
        for result in self.ex.run(p, rendered, root):
            assert result.ok, result.message
        return rendered


def make_host(make_repo: RepoFactory, tmp_path: pathlib.Path, **settings: bool) -> Host:
    clock = Clock()
    proxy, tor = FakeProxy(), FakeTor()
    ex = Executor(
        state_dir=tmp_path / "state",
        driver=FakeComposeDriver(),
        proxy=proxy,
        watch=FakeWatch(),
        settings=ExecutorSettings(settle_seconds=1.0, settle_timeout=5.0, **settings),
        onion=tor,
        sleep=clock.sleep,
        clock=clock,
        environ={},
    )
    return Host(ex, proxy, tor, make_repo)


HIDDEN = "name: hidden\nimage: busybox:1.36\nonion: {}\n"
BOTH = "name: both\nimage: busybox:1.36\ndomain: both.example.test\nonion: true\n"


def _env(ex: Executor, dpl_id: str) -> str:
    return (ex.state_dir / "apps" / dpl_id / ".env").read_text()


def test_onion_only_boots_with_its_address_and_is_published(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    host = make_host(make_repo, tmp_path)
    [hidden] = host.apply({"hidden": HIDDEN.format("true")})
    key_dir = host.ex.state_dir / "apps" / hidden.id / "onion"
    identity = read_identity(key_dir)
    assert identity is not None
    address = identity.address
    env = _env(host.ex, hidden.id)
    assert f"DOMAIN='{address}'" in env
    assert f"DOMAIN_URL='http://{address}'" in env
    assert host.proxy.routes == {address: f"{hidden.id}-app:80"}
    assert host.tor.calls[-1] == {hidden.id: key_dir}
    record = read_record(host.ex.state_dir, hidden.id)
    assert record is not None
    assert record.onion_address == address
    assert record.urls == [f"http://{address}"]
    # observe copies them into the actual state the status API serves
    app = merge("local", [], [record]).deployments[hidden.id]
    assert (app.onion_address, app.urls) == (address, [f"http://{address}"])


def test_domain_and_onion_keep_the_domain_and_list_both_urls(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    host = make_host(make_repo, tmp_path)
    [both] = host.apply({"both": BOTH})
    record = read_record(host.ex.state_dir, both.id)
    assert record is not None and record.onion_address is not None
    assert "DOMAIN='both.example.test'" in _env(host.ex, both.id)
    assert record.urls == ["http://both.example.test:8080", f"http://{record.onion_address}"]
    assert host.proxy.routes == {
        "both.example.test": f"{both.id}-app:80",
        record.onion_address: f"{both.id}-app:80",
    }


def test_toggle_off_unpublishes_keeps_the_key_and_back_on_is_the_same_address(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    host = make_host(make_repo, tmp_path)
    [hidden] = host.apply({"hidden": HIDDEN.format("true"), "both": BOTH})[1:]
    key = host.ex.state_dir / "apps" / hidden.id / "onion" / SECRET_KEY
    secret = key.read_bytes()
    address = read_record(host.ex.state_dir, hidden.id).onion_address  # type: ignore[union-attr]
    host.apply({"hidden": HIDDEN.format("false"), "both": BOTH})
    assert hidden.id not in host.tor.calls[-1]
    assert len(host.tor.calls[-1]) == 1  # the other onion app stays published
    assert address not in host.proxy.routes
    assert key.read_bytes() == secret
    record = read_record(host.ex.state_dir, hidden.id)
    assert record is not None and record.onion_address is None and record.urls
    host.apply({"hidden": HIDDEN.format("true"), "both": BOTH})
    assert read_record(host.ex.state_dir, hidden.id).onion_address == address  # type: ignore[union-attr]
    assert hidden.id in host.tor.calls[-1]


def test_uninstall_keeps_the_key_and_purge_deletes_it(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    host = make_host(make_repo, tmp_path)
    [hidden] = host.apply({"hidden": HIDDEN.format("true")})
    key_dir = host.ex.state_dir / "apps" / hidden.id / "onion"
    host.apply({})
    assert host.tor.calls[-1] == {}
    assert (key_dir / SECRET_KEY).exists()
    host.ex.settings.purge = True
    host.apply({"hidden": HIDDEN.format("true")})
    host.apply({})
    assert not key_dir.exists()


def test_no_sidecar_still_makes_the_key_and_domain(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    host = make_host(make_repo, tmp_path)
    host.ex.onion = None
    [hidden] = host.apply({"hidden": HIDDEN.format("true")})
    record = read_record(host.ex.state_dir, hidden.id)
    assert record is not None and record.onion_address
    assert f"DOMAIN='{record.onion_address}'" in _env(host.ex, hidden.id)


def test_old_snapshots_without_onion_fields_still_load() -> None:
    app = DeployedApp.model_validate(
        {"id": "dpl_" + "0" * 16, "name": "a", "namespace": "n", "spec_hash": "h"}
    )
    assert app.onion_address is None and app.urls == []
    assert AgentState.model_validate({"agent": "local", "deployments": {}}).deployments == {}
