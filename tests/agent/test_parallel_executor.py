"""The executor under concurrency, against the shipped fakes: the host writer, the pool,
the failure ladder.

Interleavings are forced with barriers, never with sleeps: each test makes the pipelines
meet at the point where the old code raced (both past ``up``, neither record written).
tests/agent/test_parallel_docker.py runs 20 real installs through ``reconcile apply``.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from agent.compose import ComposeProject, FakeComposeDriver
from agent.executor import Executor, ExecutorSettings
from agent.host import HostWriter
from agent.statedir import read_record
from reconciler.load.repo import load_repository
from reconciler.model.errors import TemporaryError
from reconciler.model.state import ActualState, ContainerState
from reconciler.plan import PlanOptions, plan
from reconciler.render import RenderContext, RenderedDeployment, render_all
from tests.agent.test_executor_logic import Clock, FakeProxy, actual_from
from tests.conftest import RepoFactory

CONFIG = "namespace: t\nproxy: {tls: off, http_port: 8080}\n"


@dataclass
class MeetAfterUp(FakeComposeDriver):
    """``up`` returns only once ``parties`` pipelines have run it: all of them are past
    ``up`` and none has written its record, the window where pushes raced."""

    parties: int = 2
    barrier: threading.Barrier | None = None

    def up(self, project: ComposeProject) -> None:
        super().up(project)
        if self.barrier is None:
            self.barrier = threading.Barrier(self.parties, timeout=30)
        self.barrier.wait()


@dataclass
class Tor:
    calls: list[dict[str, pathlib.Path]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, keys: Mapping[str, pathlib.Path]) -> object:
        with self.lock:
            self.calls.append(dict(keys))
        return None


@dataclass
class Watch:
    """Every container runs, except those of ``crashing`` ids, whose restarts climb."""

    crashing: set[str] = field(default_factory=set)
    samples: dict[str, int] = field(default_factory=dict)

    def containers(self, deployment_id: str) -> list[ContainerState]:
        if deployment_id not in self.crashing:
            return [ContainerState(service="app", name=f"{deployment_id}-app")]
        n = self.samples[deployment_id] = self.samples.get(deployment_id, 0) + 1
        return [ContainerState(service="app", name=f"{deployment_id}-app", restarts=n)]

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        return {"app": "sha256:" + "a" * 64}


def render(
    make_repo: RepoFactory, deployments: dict[str, str]
) -> tuple[pathlib.Path, list[RenderedDeployment]]:
    root = make_repo(
        {"reconcile.yaml": CONFIG}
        | {f"deployments/{name}.yaml": text for name, text in deployments.items()}
    )
    state = load_repository(root)
    assert state.ok, state.problems
    return root, render_all(state, RenderContext(config=state.config))


def executor(
    tmp_path: pathlib.Path,
    driver: FakeComposeDriver,
    proxy: FakeProxy,
    *,
    watch: Watch | None = None,
    tor: Tor | None = None,
    max_parallel: int = 4,
) -> Executor:
    clock = Clock()
    return Executor(
        state_dir=tmp_path / "state",
        driver=driver,
        proxy=proxy,
        watch=watch or Watch(),
        onion=tor,
        settings=ExecutorSettings(settle_seconds=1.0, settle_timeout=5.0),
        sleep=clock.sleep,
        clock=clock,
        environ={},
        max_parallel=max_parallel,
    )


def test_two_parallel_installs_both_serve(make_repo: RepoFactory, tmp_path: pathlib.Path) -> None:
    """Probe C: both pipelines past ``up`` before either record exists.  Each used to push
    the records plus itself, so the later push dropped the other's route while both
    reported ``installed``; through the host writer both domains stay served."""
    root, rendered = render(
        make_repo,
        {
            "alpha": "name: alpha\nimage: busybox:1.36\n",
            "beta": "name: beta\nimage: busybox:1.36\n",
        },
    )
    proxy = FakeProxy()
    ex = executor(tmp_path, MeetAfterUp(parties=2), proxy)
    results = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert [(r.action.deployment, r.ok) for r in results] == [("alpha", True), ("beta", True)]
    assert proxy.routes == {d.domain: f"{d.id}-app:80" for d in rendered}


def test_a_concurrent_pipeline_never_empties_the_tor_set(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """An onion install and a plain one past ``up`` together: the plain one's push used to
    read no onion record yet and send an empty set, which removes the sidecar."""
    root, rendered = render(
        make_repo,
        {
            "hidden": "name: hidden\nimage: busybox:1.36\nonion: true\n",
            "plain": "name: plain\nimage: busybox:1.36\n",
        },
    )
    proxy, tor = FakeProxy(), Tor()
    ex = executor(tmp_path, MeetAfterUp(parties=2), proxy, tor=tor)
    results = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert all(r.ok for r in results), [r.message for r in results]
    hidden = next(d for d in rendered if d.name == "hidden")
    published = [i for i, keys in enumerate(tor.calls) if hidden.id in keys]
    assert published, tor.calls
    assert all(hidden.id in keys for keys in tor.calls[published[0] :]), tor.calls
    ex.repair_host()
    assert set(tor.calls[-1]) == {hidden.id}


@dataclass
class RefuseDomain(FakeProxy):
    """The admin API fails any push that would serve ``domain``."""

    domain: str = ""

    def sync(self, routes: Mapping[str, str]) -> object:
        if self.domain in routes:
            raise TemporaryError("the proxy's admin API did not answer")
        return super().sync(routes)


def test_route_push_failing_after_up_rolls_the_update_back(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """Probe B: the push of the new route fails after ``up``.  The update used to keep
    ``.env`` and the containers on the new spec with a record on the old one; now it
    takes the one ladder: failed, logs, previous release restored, record on the old
    spec and files matching it."""
    root, v1 = render(make_repo, {"web": "name: web\nimage: busybox:1.36\ndomain: one.localhost\n"})
    proxy = RefuseDomain(domain="two.localhost")
    driver = FakeComposeDriver()
    ex = executor(tmp_path, driver, proxy)
    (first,) = ex.run(plan(v1, ActualState.empty(["local"]), namespace="t"), v1, root)
    assert first.ok, first.message
    app = ex.state_dir / "apps" / v1[0].id
    env_v1 = (app / ".env").read_text()
    root2, v2 = render(
        make_repo,
        {"web": "name: web\nimage: busybox:1.37\ndomain: two.localhost\nvars: {X: '2'}\n"},
    )
    p2 = plan(v2, actual_from(ex), namespace="t")
    assert [a.action for a in p2.actions] == ["update"]
    (result,) = ex.run(p2, v2, root2)
    assert not result.ok
    assert result.message.startswith("routes: ")
    assert result.rolled_back and "previous release restored" in result.message
    assert result.logs == "fake log line"
    record = read_record(ex.state_dir, v1[0].id)
    assert record is not None and record.spec_hash == v1[0].spec_hash
    assert record.last_error is not None and "rolled back" in record.last_error
    assert (app / ".env").read_text() == env_v1
    assert "busybox:1.37" not in (app / "compose.yaml").read_text()
    assert driver.steps(v1[0].id).count("up") == 3  # v1, v2, and the rollback's
    assert proxy.routes == {"one.localhost": f"{v1[0].id}-app:80"}


def test_twenty_installs_one_crash_loop_only_it_fails_and_goes_down(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """20 installs, 8 at a time, one crash-looping: only that one fails; its stack goes
    down (an install has nothing to go back to) and its route is not served; the 19
    others are installed and served, whatever order the pool ran them in."""
    names = [f"app{i:02d}" for i in range(20)]
    root, rendered = render(make_repo, {n: f"name: {n}\nimage: busybox:1.36\n" for n in names})
    bad = next(d for d in rendered if d.name == "app07")
    proxy, driver = FakeProxy(), FakeComposeDriver()
    ex = executor(tmp_path, driver, proxy, watch=Watch(crashing={bad.id}), max_parallel=8)
    results = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert [r.action.deployment for r in results] == names
    failed = [r for r in results if not r.ok]
    assert [r.action.deployment for r in failed] == ["app07"]
    assert failed[0].rolled_back and "crash-looping" in failed[0].message
    assert driver.steps(bad.id)[-1] == "down"
    record = read_record(ex.state_dir, bad.id)
    assert record is not None and record.status == "failed"
    good = [d for d in rendered if d.id != bad.id]
    assert proxy.routes == {d.domain: f"{d.id}-app:80" for d in good}
    for d in good:
        rec = read_record(ex.state_dir, d.id)
        assert rec is not None and rec.status == "running"


def test_uninstalls_finish_before_any_install_starts(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """They free domains: an install may take the domain an uninstall gives up."""
    root, rendered = render(
        make_repo,
        {f"old{i}": f"name: old{i}\nimage: busybox:1.36\n" for i in range(3)},
    )
    driver = FakeComposeDriver()
    ex = executor(tmp_path, driver, FakeProxy())
    assert all(
        r.ok
        for r in ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    )
    root2, new = render(
        make_repo, {f"new{i}": f"name: new{i}\nimage: busybox:1.36\n" for i in range(3)}
    )
    p = plan(new, actual_from(ex), namespace="t", options=PlanOptions(allow_mass_prune=True))
    assert sorted(a.action for a in p.actions) == ["install"] * 3 + ["uninstall"] * 3
    driver.calls.clear()
    results = ex.run(p, new, root2)
    assert all(r.ok for r in results), [r.message for r in results]
    steps = [s for s, _p in driver.calls]
    assert steps.count("down") == 3
    assert max(i for i, s in enumerate(steps) if s == "down") < steps.index("up")


@dataclass
class HeldProxy(FakeProxy):
    """The first push blocks until released: the others queue up behind it."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    pushes: list[dict[str, str]] = field(default_factory=list)

    def sync(self, routes: Mapping[str, str]) -> object:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        self.pushes.append(dict(routes))
        return super().sync(routes)


def test_queued_publishes_go_out_in_one_push(tmp_path: pathlib.Path) -> None:
    """Ten pipelines publishing while a push is in flight cause one more push (one
    ``POST /load`` per batch), and it carries all ten routes."""
    proxy = HeldProxy()
    writer = HostWriter(tmp_path, proxy, gather=0)
    first = writer.publish("dpl_" + "0" * 16, {"a.test": "a:80"}, None)
    assert proxy.entered.wait(30)
    others = [
        writer.publish(f"dpl_{i:016x}", {f"d{i}.test": f"d{i}:80"}, None) for i in range(1, 11)
    ]
    assert writer.pending() == 10  # all queued behind the push in flight
    proxy.release.set()
    for future in [first, *others]:
        future.result(30)
    assert len(proxy.pushes) == 2
    assert set(proxy.pushes[-1]) == {"a.test"} | {f"d{i}.test" for i in range(1, 11)}


def test_a_failed_push_fails_every_request_it_carried(tmp_path: pathlib.Path) -> None:
    proxy = RefuseDomain(domain="b.test")
    writer = HostWriter(tmp_path, proxy, gather=0, sleep=lambda _s: None)
    writer.publish("dpl_" + "0" * 16, {"a.test": "a:80"}, None).result(30)
    with pytest.raises(TemporaryError):
        writer.publish("dpl_" + "1" * 16, {"b.test": "b:80"}, None).result(30)
    assert proxy.routes == {"a.test": "a:80"}


def test_a_closed_writer_refuses(tmp_path: pathlib.Path) -> None:
    writer = HostWriter(tmp_path, FakeProxy())
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.publish("dpl_" + "0" * 16, {}, None)


@dataclass
class CountingProxy(FakeProxy):
    """Counts the pushes (``sync``) the host writer makes; thread-safe."""

    syncs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, routes: Mapping[str, str]) -> object:
        with self.lock:
            self.syncs += 1
        return super().sync(routes)


def test_a_batch_in_the_pool_costs_one_push_and_one_proxy_check(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """20 installs, all in the pool at once: the writer waits for every registered
    pipeline's request, so their routes go out in one push; the proxy container is
    checked once for the batch, and again by the repair after it."""
    names = [f"app{i:02d}" for i in range(20)]
    root, rendered = render(make_repo, {n: f"name: {n}\nimage: busybox:1.36\n" for n in names})
    proxy = CountingProxy()
    ex = executor(tmp_path, FakeComposeDriver(), proxy, max_parallel=20)
    # Bounds far above any scheduling delay: the push waits for the 20 requests alone.
    ex.host.gather, ex.host.gather_max = 600.0, 600.0
    results = ex.run(plan(rendered, ActualState.empty(["local"]), namespace="t"), rendered, root)
    assert all(r.ok for r in results), [r.message for r in results]
    assert proxy.syncs == 1 and ex.host.pushes == 1
    assert proxy.routes == {d.domain: f"{d.id}-app:80" for d in rendered}
    assert proxy.ensured == 1
    ex.repair_host()
    assert proxy.ensured == 2  # a new batch checks again


def test_a_pipeline_that_never_publishes_holds_the_push_back_only_so_long(
    tmp_path: pathlib.Path,
) -> None:
    """A pipeline stuck before its request (a long build) does not keep the others'
    routes from being served: the push goes once no request came for ``gather``."""
    proxy = CountingProxy()
    writer = HostWriter(tmp_path, proxy, gather=0.2, gather_max=600.0)
    writer.begin("dpl_" + "1" * 16)  # registered, never publishes
    writer.begin("dpl_" + "2" * 16)
    writer.publish("dpl_" + "2" * 16, {"b.test": "b:80"}, None).result(30)
    assert proxy.routes == {"b.test": "b:80"} and proxy.syncs == 1


def test_the_push_waits_for_every_registered_pipeline(tmp_path: pathlib.Path) -> None:
    """Two pipelines registered: the first one's request is not pushed alone; the
    second's request completes the batch, and one push carries both."""
    proxy = CountingProxy()
    writer = HostWriter(tmp_path, proxy, gather=600.0, gather_max=600.0)
    for dpl in ("dpl_" + "1" * 16, "dpl_" + "2" * 16):
        writer.begin(dpl)
    first = writer.publish("dpl_" + "1" * 16, {"a.test": "a:80"}, None)
    assert writer.pending() == 1 and proxy.syncs == 0  # held for the other pipeline
    second = writer.publish("dpl_" + "2" * 16, {"b.test": "b:80"}, None)
    first.result(30)
    second.result(30)
    assert proxy.syncs == 1 and set(proxy.routes) == {"a.test", "b.test"}


def test_an_update_that_keeps_its_routes_pushes_nothing(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    root, v1 = render(make_repo, {"web": "name: web\nimage: busybox:1.36\ndomain: a.localhost\n"})
    proxy = CountingProxy()
    ex = executor(tmp_path, FakeComposeDriver(), proxy)
    (first,) = ex.run(plan(v1, ActualState.empty(["local"]), namespace="t"), v1, root)
    assert first.ok and proxy.syncs == 1
    root2, v2 = render(
        make_repo,
        {"web": "name: web\nimage: busybox:1.36\ndomain: a.localhost\nvars: {X: '2'}\n"},
    )
    p2 = plan(v2, actual_from(ex), namespace="t")
    assert [a.action for a in p2.actions] == ["update"]
    (second,) = ex.run(p2, v2, root2)
    assert second.ok, second.message
    assert proxy.syncs == 1 and ex.host.unchanged == 1  # same routes: no push at all
    ex.repair_host()
    assert proxy.syncs == 2  # a repair always asks the proxy


def test_the_writer_reads_a_record_again_only_when_it_changed(tmp_path: pathlib.Path) -> None:
    """Records are cached by their file's identity: a repair with nothing changed parses
    none; a record rewritten (by anyone: here straight through the state dir) or removed
    is seen by the next push."""
    import shutil

    from agent.statedir import AppRecord, write_record
    from reconciler.model.state import RouteRecord, SpecRecord

    state = tmp_path / "state"

    def record(i: int, domain: str, status: str = "running") -> AppRecord:
        spec = SpecRecord(routes=[RouteRecord(domain=domain, upstream=f"u{i}:80")])
        return AppRecord(
            id=f"dpl_{i:016x}",
            name=f"app{i}",
            namespace="t",
            spec_hash="0" * 64,
            status=status,  # type: ignore[arg-type]
            record=spec,
            updated_at="2026-01-01T00:00:00Z",
        )

    for i in range(5):
        (state / "apps" / f"dpl_{i:016x}").mkdir(parents=True)
        write_record(state, record(i, f"d{i}.test"))
    proxy = CountingProxy()
    writer = HostWriter(state, proxy, gather=0)
    writer.repair()
    assert writer.records_read == 5 and len(proxy.routes) == 5
    writer.repair()
    assert writer.records_read == 5  # nothing changed: nothing parsed
    write_record(state, record(2, "moved.test"))
    write_record(state, record(3, "d3.test", status="failed"))
    shutil.rmtree(state / "apps" / f"dpl_{4:016x}")
    writer.repair()
    assert writer.records_read == 7
    assert proxy.routes == {"d0.test": "u0:80", "d1.test": "u1:80", "moved.test": "u2:80"}
