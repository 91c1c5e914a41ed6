"""The agent runs commands for different deployments side by side, against the fake
control plane and the executor's fakes.  Overlap is proven with barriers and events, never
with timings: run one after the other, each test's first command would wait in vain and
fail."""

from __future__ import annotations

import pathlib
import signal
import threading
from dataclasses import dataclass, field

import pytest

from agent.compose import ComposeProject, FakeComposeDriver
from tests.agent.agent_fakes import REPO, make_command, tar_of
from tests.agent.test_daemon import Harness, by_name
from tests.conftest import RepoFactory

WAIT = 30  # seconds a fake step waits for the other before it gives up (a failure)


@pytest.fixture
def repo(make_repo: RepoFactory) -> pathlib.Path:
    return make_repo(REPO)


@dataclass
class MeetAtUp(FakeComposeDriver):
    """``up`` of every project waits until both have reached it."""

    barrier: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=WAIT))

    def up(self, project: ComposeProject) -> None:
        super().up(project)
        self.barrier.wait()


def test_one_poll_runs_its_deployments_side_by_side(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    h = Harness(tmp_path)
    h.parts.driver = MeetAtUp()
    web, blog = by_name(repo, "web"), by_name(repo, "blog")
    first, second = make_command(web), make_command(blog, bundle=True)
    h.server.add(first)
    h.server.add(second, tar_of(repo, "deployments/blog"))
    assert h.agent().run(once=True) == 0
    for command in (first, second):
        result = h.server.results[command.id]
        assert result.ok, result.message


@dataclass
class WaitForOther(FakeComposeDriver):
    """``up`` of ``first`` returns only once ``up`` of ``second`` has run."""

    first: str = ""
    second: str = ""
    other_ran: threading.Event = field(default_factory=threading.Event)

    def up(self, project: ComposeProject) -> None:
        super().up(project)
        if project.name == self.second:
            self.other_ran.set()
        elif project.name == self.first and not self.other_ran.wait(WAIT):
            raise AssertionError("the second command did not start while the first ran")


def test_a_later_poll_starts_another_deployment_while_one_is_in_progress(
    tmp_path: pathlib.Path, repo: pathlib.Path
) -> None:
    """The daemon loop does not wait for a command before it polls again: a command for
    another deployment starts while the first is still in progress (settling, here held
    in ``up``), and the first one's command, listed again meanwhile, is not run twice."""
    h = Harness(tmp_path)
    web, blog = by_name(repo, "web"), by_name(repo, "blog")
    h.parts.driver = WaitForOther(first=web.id, second=blog.id)
    first, second = make_command(web), make_command(blog, bundle=True)
    agent = h.agent()
    h.server.add(first)
    agent.poll_once(0, background=True)
    h.server.add(second, tar_of(repo, "deployments/blog"))
    agent.poll_once(0, background=True)
    agent._join_workers()
    for command in (first, second):
        result = h.server.results[command.id]
        assert result.ok, result.message
    assert sorted(agent.executed) == sorted([first.id, second.id])


def test_a_first_signal_in_the_poll_lets_commands_in_progress_finish(
    tmp_path: pathlib.Path,
) -> None:
    """The long poll now runs beside commands: a first SIGTERM there must not end the
    process under them (the loop stops, then waits for them)."""
    agent = Harness(tmp_path).agent()
    agent._interruptible = True
    agent._running.add("cmd_in_progress")
    agent.on_signal(signal.SIGTERM, None)  # no _Interrupted: only asks to stop
    assert agent.stopping
