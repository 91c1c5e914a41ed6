"""The agent daemon's loop and journal against a fake control plane (httpx.MockTransport)
and the executor's fakes: each command runs once, results survive restarts and outages,
expired commands are not started, failures back off and recover."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import signal
import threading
from collections.abc import Callable

import pytest

from agent.client import AgentClient, Backoff, Credentials
from agent.compose import FakeComposeDriver
from agent.daemon import Agent, _Interrupted
from agent.executor import Executor, ExecutorSettings, StepEvent
from agent.journal import Journal, JournalEntry
from agent.observe import merge
from agent.proxy import ProxySettings
from agent.runner import CommandRunner
from agent.statedir import list_records, read_record
from reconciler.model.agentapi import Command, CommandResult
from reconciler.model.state import AgentState
from reconciler.render import RenderedDeployment
from tests.agent.agent_fakes import (
    AGENT_ID,
    REPO,
    SERVER,
    FakeControlPlane,
    FakeProxy,
    FakeWatch,
    make_command,
    rendered_repo,
    tar_of,
    tar_with,
)
from tests.conftest import RepoFactory


class Parts:
    """An executor factory over the fakes that remembers what it was asked for."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.state_dir = state_dir
        self.driver = FakeComposeDriver()
        self.proxy = FakeProxy()
        self.proxy_settings: list[ProxySettings] = []
        self.settings: list[ExecutorSettings] = []
        self.applied: list[str] = []  # deployment names, in order

    def __call__(
        self,
        proxy: ProxySettings,
        settings: ExecutorSettings,
        on_event: Callable[[StepEvent], None],
    ) -> Executor:
        self.proxy_settings.append(proxy)
        self.settings.append(settings)

        def event(e: StepEvent) -> None:
            if e.step == "files" or e.step == "down":
                self.applied.append(e.deployment)
            on_event(e)

        return Executor(
            state_dir=self.state_dir,
            driver=self.driver,
            proxy=self.proxy,
            watch=FakeWatch(),
            settings=settings,
            on_event=event,
            environ={},
        )


class Harness:
    def __init__(self, tmp_path: pathlib.Path, server: FakeControlPlane | None = None) -> None:
        self.state_dir = tmp_path / "state"
        self.server = server or FakeControlPlane()
        self.server.register(AGENT_ID, "s3cret")
        self.parts = Parts(self.state_dir)
        self.waits: list[float] = []

    def agent(self, **kwargs: object) -> Agent:
        creds = Credentials(server=SERVER, agent_id=AGENT_ID, secret="s3cret")
        client = AgentClient(SERVER, creds, transport=self.server.transport())

        def observe() -> AgentState:
            return merge(AGENT_ID, [], list_records(self.state_dir))

        def wait(seconds: float) -> bool:
            self.waits.append(seconds)
            return False

        options: dict[str, object] = {
            "client": client,
            "journal": Journal(self.state_dir),
            "runner": CommandRunner(self.state_dir, client.download_bundle, self.parts),
            "observe": observe,
            "agent_id": AGENT_ID,
            "poll_wait": 0,
            "version": "test",
            "hostname": "h1",
            "backoff": Backoff(base=0.5, cap=30, rng=lambda lo, hi: hi),
            "wait": wait,
        }
        options.update(kwargs)
        return Agent(**options)  # type: ignore[arg-type]


@pytest.fixture
def repo(make_repo: RepoFactory) -> pathlib.Path:
    return make_repo(REPO)


def by_name(root: pathlib.Path, name: str) -> RenderedDeployment:
    return next(d for d in rendered_repo(root) if d.name == name)


# ------------------------------------------------------------------ the command runner


def test_install_with_bundle_runs_the_executor_and_reports(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    blog = by_name(repo, "blog")
    assert blog.bundle == "deployments/blog"
    command = make_command(blog, bundle=True, settle=0.0)
    h.server.add(command, tar_of(repo, "deployments/blog"))

    assert h.agent().run(once=True) == 0

    result = h.server.results[command.id]
    assert result.ok, result.message
    assert result.message == "installed" and result.url == blog.url
    app = h.state_dir / "apps" / blog.id
    assert (app / "public" / "index.html").read_text() == "<h1>hello from the bundle</h1>\n"
    assert h.parts.driver.steps(blog.id) == ["up"]
    assert h.parts.proxy.routes == {blog.domain: f"{blog.id}-app:80"}
    (proxy,) = h.parts.proxy_settings
    assert (proxy.http_port, proxy.tls, proxy.state_dir) == (18080, "off", h.state_dir)
    assert h.parts.settings[0].settle_seconds == 0.0
    record = read_record(h.state_dir, blog.id)
    assert record is not None and record.spec_hash == blog.spec_hash
    # The report right after the command already shows the new deployment.
    first = h.server.reports[0]
    assert blog.id in first["state"]["deployments"]  # type: ignore[operator]
    assert first["running"] == [] and first["hostname"] == "h1"
    # The scratch repo is gone.
    assert not any((h.state_dir / "agent" / "work").iterdir())


def test_settle_comes_from_the_command_else_the_agent_default(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    web = by_name(repo, "web")
    h.server.add(make_command(web, settle=None))
    agent = h.agent()
    agent.runner.default_settle = 0.0
    agent.run(once=True)
    assert h.parts.settings[0].settle_seconds == 0.0
    h2 = Harness(tmp_path / "two")
    h2.server.add(make_command(web, settle=0.0, purge=True, kind="uninstall"))
    h2.agent().run(once=True)
    assert h2.parts.settings[0].purge is True


def test_uninstall_reuses_the_last_proxy_settings(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    web = by_name(repo, "web")
    h.server.add(make_command(web, cid="cmd_1"))
    h.agent().run(once=True)
    gone = make_command(web, cid="cmd_2", kind="uninstall").model_copy(update={"proxy": None})
    h.server.add(gone)
    h.agent().run(once=True)
    assert h.server.results["cmd_2"].ok, h.server.results["cmd_2"].message
    assert h.server.results["cmd_2"].message == "uninstalled; data kept"
    # Not the default port 80: the proxy container is not recreated by an uninstall.
    assert [p.http_port for p in h.parts.proxy_settings] == [18080, 18080]
    assert h.parts.proxy.routes == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"deployment": {"id": "dpl_x"}}, "deployment is not valid"),
        ({"deployment": None}, "carries no deployment"),
    ],
)
def test_a_bad_command_is_a_failed_result_not_a_crash(
    tmp_path: pathlib.Path, repo: pathlib.Path, change: dict[str, object], message: str
) -> None:
    h = Harness(tmp_path)
    command = make_command(by_name(repo, "web")).model_copy(update=change)
    h.server.add(command)
    assert h.agent().run(once=True) == 0
    result = h.server.results[command.id]
    assert not result.ok and message in result.message
    assert h.parts.applied == []


def test_a_refused_bundle_fails_the_command_and_touches_nothing(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    import tarfile

    h = Harness(tmp_path)
    blog = by_name(repo, "blog")
    evil = tarfile.TarInfo("../../outside")
    evil.size = 1
    h.server.add(make_command(blog, cid="cmd_evil", bundle=True), tar_with([(evil, b"x")]))
    h.server.add(make_command(blog, cid="cmd_nobundle", bundle=True))  # the server has none
    h.agent().run(once=True)
    assert "contains '..'" in h.server.results["cmd_evil"].message
    assert "404" in h.server.results["cmd_nobundle"].message
    assert not h.server.results["cmd_evil"].ok and not h.server.results["cmd_nobundle"].ok
    assert h.parts.applied == []
    assert not (tmp_path / "outside").exists()


# ------------------------------------------------------------------ run once, journal


def test_a_command_repeated_in_consecutive_polls_runs_once(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    # The result POSTs of the first poll fail, so the server lists the command again.
    server = FakeControlPlane(fail={"/v1/agent/commands/cmd_dup/result": [503, 503]})
    h = Harness(tmp_path, server)
    h.server.add(make_command(by_name(repo, "web"), cid="cmd_dup"))
    agent = h.agent()
    agent.poll_once(0)
    assert "cmd_dup" in h.server.commands  # result not delivered
    agent.poll_once(0)
    assert h.parts.applied == ["web"]  # ran once
    assert agent.executed == ["cmd_dup"]
    posts = "POST /v1/agent/commands/cmd_dup/result"
    assert h.server.requests.count(posts) == 3  # two refused, delivered on the second poll
    assert h.server.results["cmd_dup"].ok
    entry = agent.journal.get("cmd_dup")
    assert entry is not None and entry.status == "done" and entry.acked
    agent.poll_once(0)
    assert h.server.requests.count(posts) == 3


def test_done_but_unacknowledged_result_is_reposted_on_restart(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    command = make_command(by_name(repo, "web"), cid="cmd_lost")
    h.server.add(command)
    journal = Journal(h.state_dir)
    journal.start(command)
    journal.finish("cmd_lost", CommandResult(ok=True, message="installed", seconds=1.5))

    agent = h.agent()
    assert agent.run(once=True) == 0
    assert h.server.results["cmd_lost"] == CommandResult(ok=True, message="installed", seconds=1.5)
    assert h.server.result_posts == ["cmd_lost"]  # posted once, before polling
    assert h.parts.applied == []  # not redone
    assert Journal(h.state_dir).unacked() == []


def test_a_running_entry_with_the_command_back_is_redone(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    command = make_command(by_name(repo, "web"), cid="cmd_killed")
    Journal(h.state_dir).start(command)  # the agent died mid-command
    h.server.add(command)
    agent = h.agent()
    assert agent.run(once=True) == 0
    assert h.parts.applied == ["web"]
    assert h.server.results["cmd_killed"].ok
    entry = agent.journal.get("cmd_killed")
    assert entry is not None and entry.attempts == 2 and entry.acked


def test_a_command_past_its_deadline_is_not_started(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    h.server.add(make_command(by_name(repo, "web"), cid="cmd_late", deadline=past))
    agent = h.agent()
    agent.poll_once(0)
    agent.poll_once(0)
    assert h.parts.applied == []
    assert h.server.result_posts == []
    assert agent.journal.get("cmd_late") is None


def test_journal_prunes_acknowledged_entries_older_than_a_day(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    web = by_name(repo, "web")
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    journal = Journal(tmp_path, now=lambda: now[0])
    for cid in ("cmd_old", "cmd_unacked", "cmd_running"):
        journal.start(make_command(web, cid=cid))
    # Interrupted, and the server gave up on it (its deadline passed): never handed out again.
    journal.start(make_command(web, cid="cmd_gaveup", deadline=now[0] - dt.timedelta(hours=1)))
    for cid in ("cmd_old", "cmd_unacked"):
        journal.finish(cid, CommandResult(ok=True))
    journal.ack("cmd_old")
    now[0] += dt.timedelta(hours=23)
    assert journal.prune() == 0
    now[0] += dt.timedelta(hours=2)
    assert journal.prune() == 2
    assert sorted(e.id for e in journal.entries()) == ["cmd_running", "cmd_unacked"]
    path = tmp_path / "agent" / "commands" / "cmd_unacked.json"
    assert JournalEntry.model_validate_json(path.read_text()).status == "done"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_journal_refuses_ids_that_are_not_command_ids(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="not a command id"):
        Journal(tmp_path).get("../../etc/passwd")


# ------------------------------------------------------------------ outages


def test_outage_backs_off_then_resets_after_a_success(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    server = FakeControlPlane(fail={"/v1/agent/commands": ["connect", 503, 502]})
    h = Harness(tmp_path, server)
    agent = h.agent()
    for _ in range(3):
        agent.poll_once(0)
    assert h.waits == [0.5, 1.0, 2.0]  # rng returns the ceiling: it doubles
    agent.poll_once(0)  # succeeds: the backoff resets
    server.fail["/v1/agent/commands"] = ["connect"]
    agent.poll_once(0)
    assert h.waits == [0.5, 1.0, 2.0, 0.5]


def test_refused_credentials_are_kept_and_retried_slowly(
    tmp_path: pathlib.Path, repo: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeControlPlane(refuse_secrets=True)
    h = Harness(tmp_path, server)
    h.server.add(make_command(by_name(repo, "web")))
    agent = h.agent()
    agent.poll_once(0)
    agent.poll_once(0)
    assert h.waits == [60.0, 60.0]
    assert not agent.stopping
    assert "refused this agent's credentials" in caplog.text
    server.refuse_secrets = False  # the operator re-registered it: it just works again
    agent.poll_once(0)
    assert h.parts.applied == ["web"]


def test_a_result_that_cannot_be_posted_is_kept_and_delivered_later(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    server = FakeControlPlane(fail={"/v1/agent/commands/cmd_a/result": ["connect", "connect"]})
    h = Harness(tmp_path, server)
    h.server.add(make_command(by_name(repo, "web"), cid="cmd_a"))
    agent = h.agent()
    agent.poll_once(0)
    assert Journal(h.state_dir).unacked()[0].id == "cmd_a"
    server.commands.clear()  # e.g. the server restarted and forgot to re-list it
    agent.poll_once(0)  # an empty poll: the server is back, so the result goes now
    assert h.server.results["cmd_a"].ok and Journal(h.state_dir).unacked() == []
    assert h.parts.applied == ["web"]


def test_once_exits_1_when_the_control_plane_is_unreachable(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(fail={"/v1/agent/commands": ["connect"]})
    assert Harness(tmp_path, server).agent().run(once=True) == 1


# ------------------------------------------------------------------ heartbeat, signals


def test_heartbeat_thread_reports_running_commands(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    web = by_name(repo, "web")
    started, release = threading.Event(), threading.Event()
    reports: list[list[str]] = []

    class SlowRunner(CommandRunner):
        def run(self, command: Command) -> CommandResult:
            started.set()
            release.wait(10)
            return CommandResult(ok=True, message="installed")

    agent = h.agent(
        runner=SlowRunner(h.state_dir, lambda *_a: None),
        heartbeat_seconds=0.05,
        wait=None,
    )
    original = agent.send_report

    def spy() -> bool:
        reports.append(agent.running())
        return original()

    agent.send_report = spy  # type: ignore[method-assign]
    h.server.add(make_command(web, cid="cmd_slow"))
    h.server.heartbeat_seconds = 0.05
    loop = threading.Thread(target=agent.run)
    loop.start()
    try:
        assert started.wait(10)
        deadline = threading.Event()
        # The spy sees the report before it is sent: wait for the server to have it too.
        for _ in range(200):
            if any(r["running"] == ["cmd_slow"] for r in h.server.reports):
                break
            deadline.wait(0.05)
        assert ["cmd_slow"] in reports
        assert any(r["running"] == ["cmd_slow"] for r in h.server.reports)
    finally:
        release.set()
        agent.stop()
        loop.join(10)
    assert not loop.is_alive()
    assert h.server.results["cmd_slow"].ok


def test_a_signal_during_an_idle_poll_interrupts_it(tmp_path: pathlib.Path) -> None:
    agent = Harness(tmp_path).agent()
    agent._interruptible = True
    with pytest.raises(_Interrupted):
        agent.on_signal(signal.SIGTERM, None)
    assert agent.stopping


def test_a_signal_during_a_command_lets_it_finish_a_second_abandons(
    tmp_path: pathlib.Path,
) -> None:
    agent = Harness(tmp_path).agent()
    agent.on_signal(signal.SIGTERM, None)  # not interruptible: only asks to stop
    assert agent.stopping
    with pytest.raises(_Interrupted):
        agent.on_signal(signal.SIGINT, None)


def test_journal_files_hold_no_secret_values(tmp_path: pathlib.Path, repo: pathlib.Path) -> None:
    h = Harness(tmp_path)
    command = make_command(by_name(repo, "web"), cid="cmd_s")
    h.server.add(command)
    h.agent().run(once=True)
    text = (h.state_dir / "agent" / "commands" / "cmd_s.json").read_text()
    assert set(json.loads(text)) >= {"id", "status", "result", "acked"}
    assert "compose_yaml" not in text and "env" not in json.loads(text)


def test_a_bundle_download_cut_off_abandons_the_command_until_the_next_poll(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    server = FakeControlPlane(fail={"/v1/agent/commands/cmd_b/bundle": ["connect"]})
    h = Harness(tmp_path, server)
    blog = by_name(repo, "blog")
    h.server.add(make_command(blog, cid="cmd_b", bundle=True), tar_of(repo, "deployments/blog"))
    agent = h.agent()
    agent.poll_once(0)
    entry = agent.journal.get("cmd_b")
    assert entry is not None and entry.status == "running"  # abandoned, not failed
    assert h.server.result_posts == [] and h.waits == [0.5]  # backed off
    agent.poll_once(0)
    assert h.server.results["cmd_b"].ok, h.server.results["cmd_b"].message
    entry = agent.journal.get("cmd_b")
    assert entry is not None and entry.attempts == 2 and entry.acked


def test_a_stop_during_a_command_finishes_it_posts_and_exits_0(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    started, release = threading.Event(), threading.Event()

    class SlowRunner(CommandRunner):
        def run(self, command: Command) -> CommandResult:
            started.set()
            release.wait(10)
            return CommandResult(ok=True, message="installed")

    agent = h.agent(runner=SlowRunner(h.state_dir, lambda *_a: None), wait=None)
    h.server.add(make_command(by_name(repo, "web"), cid="cmd_term"))
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(agent.run()))
    loop.start()
    assert started.wait(10)
    agent.on_signal(signal.SIGTERM, None)  # mid-command: not interrupted
    release.set()
    loop.join(10)
    assert codes == [0]
    assert h.server.results["cmd_term"].ok  # finished and delivered before exiting
    assert agent.executed == ["cmd_term"]


# ------------------------------------------------------------------ housekeeping


def test_housekeeping_repairs_the_proxy_routes_between_commands(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    web = by_name(repo, "web")
    h.server.add(make_command(web))
    agent = h.agent(repair_seconds=0.001)
    agent.run(once=True)
    h.parts.proxy.routes = {}  # someone edited the proxy, or it was recreated empty
    ensured = h.parts.proxy.ensured
    agent._last_repair -= 1  # the interval passed
    agent.housekeeping()
    assert h.parts.proxy.routes == {web.domain: f"{web.id}-app:80"}
    assert h.parts.proxy.ensured == ensured + 1
    # with the settings the last command brought, not the defaults
    assert h.parts.proxy_settings[-1].http_port == 18080


def test_housekeeping_waits_for_its_interval_and_can_be_off(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    h.server.add(make_command(by_name(repo, "web")))
    agent = h.agent(repair_seconds=3600)
    agent.run(once=True)
    calls = len(h.parts.proxy_settings)
    agent.housekeeping()  # the interval has not passed
    off = h.agent(repair_seconds=0)
    off._last_repair -= 10_000
    off.housekeeping()
    assert len(h.parts.proxy_settings) == calls


def test_housekeeping_needs_a_command_first_and_skips_while_one_runs(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    runner = CommandRunner(h.state_dir, lambda *_: None, h.parts)
    assert runner.housekeeping() is False  # nothing ran here: no proxy to set up
    h.server.add(make_command(by_name(repo, "web")))
    h.agent().run(once=True)
    runner = CommandRunner(h.state_dir, lambda *_: None, h.parts)
    with runner._busy:  # a command in progress
        assert runner.housekeeping() is False
    assert runner.housekeeping() is True


def test_the_runner_forwards_each_step_with_its_command_id_in_order(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    seen: list[tuple[str, str, str]] = []
    logged: list[str] = []
    runner = CommandRunner(
        h.state_dir,
        lambda *_: None,
        h.parts,
        on_event=lambda e: logged.append(e.step),
        on_progress=lambda command_id, e: seen.append((command_id, e.deployment, e.step)),
    )
    command = make_command(by_name(repo, "web"), settle=0.0)
    assert runner.run(command).ok
    assert {c for c, _, _ in seen} == {command.id}
    assert {d for _, d, _ in seen} == {"web"}
    steps = [s for _, _, s in seen]
    assert steps == logged  # the same steps, in the same order, as the log gets
    assert steps[0] == "files" and "record" in steps and steps[-1] == "done" and "up" in steps
