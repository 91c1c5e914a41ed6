"""The reconcile worker: single-flight coalescing, the timer, and what one reconcile does
against a real git remote and a real store."""

from __future__ import annotations

import io
import pathlib
import tarfile
import threading
import time

import pytest
from conftest import Remote, copy_examples, examples_for, git

from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY
from reconciler.model.errors import InvalidSpec
from reconciler.server.app import ControlPlane
from reconciler.server.config import ServerConfig
from reconciler.server.store import Store
from reconciler.server.worker import LOCAL_REASON, Reconciler, Worker, build_bundle


def _until(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


class TestCoalescing:
    def test_a_burst_during_a_slow_run_gives_exactly_two_runs(self) -> None:
        release = threading.Event()
        started = threading.Event()
        reasons: list[str] = []

        def slow(reason: str) -> None:
            reasons.append(reason)
            started.set()
            release.wait(30)

        worker = Worker(slow, poll_interval=0)
        worker.start(initial=None)
        worker.trigger("webhook: first")
        assert started.wait(30)
        for i in range(100):
            worker.trigger(f"webhook: push {i % 3}")
        release.set()
        assert worker.wait_idle(30)
        worker.stop()
        assert worker.runs == 2
        assert reasons[0] == "webhook: first"
        assert set(reasons[1].split(", ")) == {f"webhook: push {i}" for i in range(3)}

    def test_a_burst_spread_over_a_second_gives_two_runs_not_one_per_gap(self) -> None:
        # Fast runs: single flight alone would start a new run in every gap of the burst.
        reasons: list[str] = []
        worker = Worker(reasons.append, poll_interval=0, quiet=1.0, max_delay=10)
        worker.start(initial=None)
        for i in range(100):
            worker.trigger(f"webhook: {i}")
            time.sleep(0.01)
        assert worker.wait_idle(30)
        worker.stop()
        assert worker.runs == 2
        assert reasons[0] == "webhook: 0"
        assert len(reasons[1].split(", ")) == 20  # the queued slot keeps up to 20 reasons

    def test_a_lone_trigger_on_an_idle_worker_is_not_debounced(self) -> None:
        ran = threading.Event()
        worker = Worker(lambda _r: ran.set(), poll_interval=0, quiet=60, max_delay=60)
        worker.start(initial=None)
        worker.trigger("webhook: lone push")
        assert ran.wait(10)  # would wait the 60 s quiet window if debounced
        worker.stop()

    def test_max_delay_bounds_a_never_ending_burst(self) -> None:
        runs: list[str] = []
        worker = Worker(runs.append, poll_interval=0, quiet=60, max_delay=0.3)
        worker.start(initial=None)
        deadline = time.monotonic() + 10
        while len(runs) < 3 and time.monotonic() < deadline:
            worker.trigger("webhook: again")
            time.sleep(0.02)
        worker.stop()
        assert len(runs) >= 3  # quiet never comes; max_delay still lets runs through

    def test_triggers_from_many_threads_never_overlap_runs(self) -> None:
        active = 0
        overlap = False
        lock = threading.Lock()

        def run(_: str) -> None:
            nonlocal active, overlap
            with lock:
                active += 1
                overlap = overlap or active > 1
            time.sleep(0.005)
            with lock:
                active -= 1

        worker = Worker(run, poll_interval=0)
        worker.start(initial=None)
        threads = [
            threading.Thread(target=lambda: [worker.trigger("api: x") for _ in range(50)])
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert worker.wait_idle(30)
        worker.stop()
        assert not overlap
        assert 1 <= worker.runs <= 400

    def test_a_failing_run_does_not_stop_the_loop(self) -> None:
        calls: list[str] = []

        def run(reason: str) -> None:
            calls.append(reason)
            if len(calls) == 1:
                raise RuntimeError("boom")

        worker = Worker(run, poll_interval=0)
        worker.start(initial="startup")
        assert _until(lambda: worker.runs == 1)
        assert worker.last_error == "RuntimeError: boom"
        worker.trigger("api: again")
        assert _until(lambda: worker.runs == 2)
        assert worker.alive and worker.last_error is None
        worker.stop()

    def test_the_timer_runs_reconciles_and_zero_disables_it(self) -> None:
        timed: list[str] = []
        worker = Worker(timed.append, poll_interval=0.05)
        worker.start(initial=None)
        assert _until(lambda: timed.count("timer") >= 3)
        worker.stop()

        untimed: list[str] = []
        off = Worker(untimed.append, poll_interval=0)
        off.start(initial="startup")
        assert off.wait_idle(30)
        time.sleep(0.3)
        off.stop()
        assert untimed == ["startup"]


def _bootstrap(plane: ControlPlane, *, report: bool = True) -> str:
    created = plane.store.bootstrap_agent(plane.store.create_bootstrap_token(), "h1")
    assert created is not None
    if report:
        plane.store.record_report(created[0], {"state": {"agent": created[0]}})
    return created[0]


def _run(plane: ControlPlane, reason: str = "api: test") -> None:
    plane.worker.trigger(reason)
    assert plane.worker.wait_idle(60)


def _events(plane: ControlPlane, kind: str) -> list[dict[str, object]]:
    return [e.fields for e in plane.store.events(limit=1000) if e.kind == kind]


class TestReconcile:
    def test_commands_for_every_install_once(self, plane: ControlPlane, remote: Remote) -> None:
        agent = _bootstrap(plane)
        rev = remote.commit(examples_for(agent))
        _run(plane)
        pending = plane.store.pending_commands(agent)
        assert sorted(c.payload["action"]["deployment"] for c in pending) == [
            "api",
            "blog",
            "hello",
            "site",
            "status",
        ]
        for c in pending:
            assert c.kind == "install" and c.payload["revision"] == rev
            assert c.payload["proxy"]["http_port"] == 18080
            assert c.payload["deployment"]["agent"] == agent
        bundled = {c.payload["action"]["deployment"] for c in pending if c.payload["has_bundle"]}
        assert bundled == {"blog", "site"}
        # Nothing changed: nothing new, nothing superseded.
        _run(plane)
        assert {c.id for c in plane.store.pending_commands(agent)} == {c.id for c in pending}

    def test_a_changed_spec_supersedes_the_pending_command(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        agent = _bootstrap(plane)
        files = examples_for(agent)
        remote.commit(files)
        _run(plane)
        api_before = [
            c
            for c in plane.store.pending_commands(agent)
            if c.payload["action"]["deployment"] == "api"
        ]
        remote.commit({"deployments/api.yaml": files["deployments/api.yaml"].replace("64", "96")})
        _run(plane)
        api_after = [
            c
            for c in plane.store.pending_commands(agent)
            if c.payload["action"]["deployment"] == "api"
        ]
        assert len(api_before) == len(api_after) == 1
        assert api_after[0].id != api_before[0].id
        old = plane.store.command(api_before[0].id)
        assert old is not None and old.state == "superseded"
        assert len(plane.store.pending_commands(agent)) == 5

    def test_invalid_repository_changes_nothing_and_keeps_the_last_plan(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        agent = _bootstrap(plane)
        remote.commit(examples_for(agent))
        _run(plane)
        good = plane.store.last_plan()
        ids = {c.id for c in plane.store.pending_commands(agent)}
        # The agent now runs api; the repository breaks (and drops api): no prune, no plan.
        remote.commit({"deployments/api.yaml": None, "deployments/hello.yaml": "name: [\n"})
        _run(plane)
        assert plane.store.last_plan() == good
        assert {c.id for c in plane.store.pending_commands(agent)} == ids
        [invalid] = _events(plane, "reconcile.invalid")
        assert invalid["errors"] and "hello.yaml" in str(invalid["problems"])

    def test_offline_and_never_connected_agents_block(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        agent = _bootstrap(plane)
        plane.store.record_report(agent, {"state": {"agent": agent}}, now=time.time() - 31)
        files = examples_for(agent)
        files["deployments/far.yaml"] = "name: far\nagent: agt_00000000000000f2\nimage: caddy:2\n"
        files["deployments/here.yaml"] = "name: here\nagent: local\nimage: caddy:2\n"
        remote.commit(files)
        _run(plane)
        found = plane.store.last_plan()
        assert found is not None
        actions = {a["deployment"]: a for a in found[0]["actions"]}
        assert {a["action"] for a in actions.values()} == {"blocked"}
        assert "missed 3 heartbeats" in actions["api"]["reason"]
        assert "never connected" in actions["far"]["reason"]
        assert LOCAL_REASON in actions["here"]["reason"]
        assert plane.store.pending_commands(agent) == []

    def test_prune_uninstalls_what_the_agent_runs_but_the_repo_dropped(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        agent = _bootstrap(plane)
        files = examples_for(agent)
        remote.commit(files)
        _run(plane)
        desired = {
            c.payload["action"]["deployment"]: c.payload
            for c in plane.store.pending_commands(agent)
        }
        # The agent reports every app installed at the desired spec.
        apps = {
            p["action"]["id"]: {
                "id": p["action"]["id"],
                "name": name,
                "namespace": "srv",
                "spec_hash": p["action"]["spec_hash"],
                "services": p["deployment"]["services"],
                "containers": [
                    {"service": s, "status": "running"} for s in p["deployment"]["services"]
                ],
            }
            for name, p in desired.items()
        }
        for p in desired.values():
            plane.store.finish_command(p["id"], agent, {"ok": True})
        plane.store.record_report(agent, {"state": {"agent": agent, "deployments": apps}})
        remote.commit({"deployments/api.yaml": None})
        _run(plane)
        [cmd] = plane.store.pending_commands(agent)
        assert cmd.kind == "uninstall" and cmd.payload["action"]["deployment"] == "api"
        assert cmd.payload["deployment"] is None

    def test_a_failed_command_is_retried_with_backoff(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        agent = _bootstrap(plane)
        files = examples_for(agent)
        remote.commit({k: v for k, v in files.items() if "api" in k or k == "reconcile.yaml"})
        _run(plane)
        [first] = plane.store.pending_commands(agent)
        plane.store.finish_command(first.id, agent, {"ok": False, "message": "pull failed"})
        plane.store.record_report(agent, {"state": {"agent": agent}})
        _run(plane)
        assert plane.store.pending_commands(agent) == []
        assert _events(plane, "reconcile.finished")[-1]["backoff"] == ["api"]
        start = time.time()

        def later(seconds: float) -> None:
            plane.reconciler.clock = lambda: start + seconds
            plane.store.record_report(agent, {"state": {"agent": agent}}, now=start + seconds)
            _run(plane)

        later(31)  # past the first delay (30 s)
        [second] = plane.store.pending_commands(agent)
        assert second.id != first.id and second.kind == "install"
        plane.store.finish_command(second.id, agent, {"ok": False}, now=start + 32)
        later(62)  # the second delay is 60 s
        assert plane.store.pending_commands(agent) == []
        later(93)
        assert len(plane.store.pending_commands(agent)) == 1

    def test_unreachable_source_is_an_event_not_a_crash(
        self, plane: ControlPlane, remote: Remote
    ) -> None:
        import shutil

        shutil.rmtree(remote.bare)
        _run(plane)
        assert plane.worker.alive
        [failed] = _events(plane, "reconcile.failed")
        last = plane.reconciler.last_outcome
        assert last is not None and not last.ok and last.error == failed["error"]


class TestBundles:
    def test_regular_files_relative_to_the_root(self, tmp_path: pathlib.Path) -> None:
        root = tmp_path / "repo"
        (root / "deployments/site/sub").mkdir(parents=True)
        (root / "deployments/site/Dockerfile").write_text("FROM busybox:1.36\n")
        (root / "deployments/site/sub/a.txt").write_text("a")
        (root / "secret.txt").write_text("not shipped")
        (root / "deployments/site/link.txt").symlink_to("sub/a.txt")
        dest = tmp_path / "out/cmd_1.tar"
        build_bundle(root, ["deployments/site"], dest)
        with tarfile.open(dest) as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert set(members) == {
                "deployments/site",
                "deployments/site/Dockerfile",
                "deployments/site/link.txt",
                "deployments/site/sub",
                "deployments/site/sub/a.txt",
            }
            link = members.pop("deployments/site/link.txt")
            assert all(m.isfile() or m.isdir() for m in members.values())
            # A link the repository had pointing inside travels as one, marked as such.
            assert link.issym() and link.linkname == "sub/a.txt"
            assert link.pax_headers[LINK_PAX_KEY] == LINK_INSIDE
        assert list(dest.parent.iterdir()) == [dest]  # no temporary left behind

    @pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.txt", "missing", "evil"])
    def test_escaping_dangling_or_looping_symlinks_are_refused(
        self, tmp_path: pathlib.Path, target: str
    ) -> None:
        root = tmp_path / "repo"
        (root / "deployments/site/sub").mkdir(parents=True)
        (tmp_path / "outside.txt").write_text("x")
        (root / "deployments/site/evil").symlink_to(target)
        dest = tmp_path / "cmd_1.tar"
        with pytest.raises(InvalidSpec, match="symlink"):
            build_bundle(root, ["deployments/site"], dest)
        assert not dest.exists()
        assert list(tmp_path.glob("*.tmp")) == []

    def test_tar_bytes_are_a_valid_archive(self, tmp_path: pathlib.Path) -> None:
        root = tmp_path / "repo"
        (root / "d").mkdir(parents=True)
        (root / "d/f").write_bytes(b"\x00" * 10)
        build_bundle(root, ["d"], tmp_path / "b.tar")
        with tarfile.open(fileobj=io.BytesIO((tmp_path / "b.tar").read_bytes())) as tar:
            assert tar.getnames() == ["d", "d/f"]


class TestSources:
    def _reconciler(self, tmp_path: pathlib.Path, source: str, **extra: object) -> Reconciler:
        config = ServerConfig.model_validate(
            {"source": source, "data_dir": tmp_path / "data", "poll_interval": 0, **extra}
        )
        return Reconciler(config, Store.in_dir(config.data_dir))

    def test_plain_directory_is_read_as_it_is(self, tmp_path: pathlib.Path) -> None:
        repo = copy_examples(tmp_path / "examples")
        reconciler = self._reconciler(tmp_path, str(repo))
        assert reconciler.source_spec() == (str(repo), None)
        outcome = reconciler.reconcile("api: test")
        assert outcome.ok and outcome.revision is None
        # Its deployments name `local`: blocked with the reason, no commands.
        assert outcome.summary["blocked"] == 5 and outcome.commands == []
        with pytest.raises(InvalidSpec, match="no branches"):
            self._reconciler(tmp_path, str(repo), branch="main").source_spec()

    def test_a_local_work_tree_is_read_as_git_at_its_head_branch(
        self, tmp_path: pathlib.Path
    ) -> None:
        remote = Remote(tmp_path)
        git(remote.work, "checkout", "--quiet", "-b", "prod")
        rev = remote.commit({"reconcile.yaml": "namespace: srv\n", "deployments/.keep": ""})
        (remote.work / "deployments/uncommitted.yaml").write_text("name: [\n")
        reconciler = self._reconciler(tmp_path, str(remote.work))
        spec, ref = reconciler.source_spec()
        assert spec.startswith("file://") and ref == "prod"
        outcome = reconciler.reconcile("api: test")
        assert outcome.ok and outcome.revision == rev  # the commit, not the edited files
