"""Poisoned commands against a real ``reconcile-agent`` process and a real (stub) HTTP
control plane: a deployment id that is a path, bundles that used to kill the agent (a
file where a directory is expected, a truncated gzip, a pax-header bomb, the
CVE-2025-4517 link chain), and a command the agent keeps dying in.  Each must become a
failed result with a reason; the agent stays up; nothing outside the state dir is
touched; a restart does not replay the poison.  No Docker needed: every command is
refused before Compose would run."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable

import pytest

from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY
from tests.agent.agent_fakes import REPO, FakeControlPlane, make_command, rendered_repo
from tests.agent.bundle_attacks import pax_bomb
from tests.agent.stub_control_plane import agent_cmd, agent_env, stub_server
from tests.conftest import RepoFactory

GRACE = 60.0  # seconds a condition may take before the test fails (never a pass criterion)


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GRACE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def _tar(build: Callable[[tarfile.TarFile], None], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    if link:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        info.pax_headers = {LINK_PAX_KEY: LINK_INSIDE}
    elif data is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def file_where_a_directory_is_expected(tar: tarfile.TarFile) -> None:
    _add(tar, "deployments/blog", b"a file, not the directory")
    _add(tar, "deployments/blog/compose.yaml", b"services: {}\n")


def link_chain(escape_to: str) -> Callable[[tarfile.TarFile], None]:
    """The CVE-2025-4517 chain (see test_agent_client_bundle), every link marked."""

    def build(tar: tarfile.TarFile) -> None:
        steps = "abcdefghijklmnop"
        comp = "d" * 200
        path = ""
        for step in steps:
            _add(tar, os.path.join(path, comp))
            _add(tar, os.path.join(path, step), link=comp)
            path = os.path.join(path, comp)
        linkpath = os.path.join("/".join(steps), "l" * 254)
        _add(tar, linkpath, link="../" * len(steps))
        _add(tar, "escape", link=f"{linkpath}/../{escape_to}")
        _add(tar, "escape/newfile", b"pwned\n")

    return build


@pytest.fixture
def poisoned(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> tuple[FakeControlPlane, dict[str, str]]:
    """A control plane holding one command per attack; id -> what its result must say."""
    rendered = {r.name: r for r in rendered_repo(make_repo(REPO))}
    plane = FakeControlPlane(tokens={"tok-1"})
    expect: dict[str, str] = {}

    uninstall = make_command(rendered["web"], cid="cmd_badid", kind="uninstall", purge=True)
    raw = uninstall.model_dump(mode="json")
    raw["action"]["id"] = "../../victim"  # type: ignore[index]
    plane.raw["cmd_badid"] = raw
    expect["cmd_badid"] = "action.id: String should match pattern"

    bundles = {
        "cmd_notadir": (_tar(file_where_a_directory_is_expected), "under 'deployments/blog'"),
        "cmd_truncgz": (
            _tar(lambda t: _add(t, "deployments/blog/x", os.urandom(9000)), gz=True)[:3000],
            "not a readable tar",
        ),
        "cmd_paxbomb": (pax_bomb(), "pax header bomb"),
        "cmd_chain": (_tar(link_chain("../../../victim")), "lies under 'a', a link"),
    }
    for cid, (data, reason) in bundles.items():
        plane.add(make_command(rendered["blog"], cid=cid, bundle=True), data)
        expect[cid] = reason
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    return plane, expect


def test_poisoned_commands_fail_with_a_reason_and_the_agent_stays_up(
    tmp_path: pathlib.Path, poisoned: tuple[FakeControlPlane, dict[str, str]]
) -> None:
    plane, expect = poisoned
    plane.keep_listing = True  # the server lists them again and again: no replay
    state = tmp_path / "state"
    with stub_server(plane) as stub:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        env = agent_env(RECONCILE_SERVER=url, RECONCILE_AGENT_TOKEN="tok-1")
        proc = subprocess.Popen(
            agent_cmd("--state-dir", str(state), "--poll-wait", "1", "--repair-interval", "0"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _until(
                "every result", lambda: set(plane.results) >= set(expect) or proc.poll() is not None
            )
            polls = len(plane.polls)
            _until(
                "two more polls", lambda: len(plane.polls) >= polls + 2 or proc.poll() is not None
            )
            assert proc.poll() is None, "the agent died"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=GRACE)
        assert proc.returncode == 0, stderr
        for cid, reason in expect.items():
            result = plane.results[cid]
            assert not result.ok and reason in result.message, (cid, result.message)
            assert result.message.startswith("bundle refused: ") or cid == "cmd_badid"
        assert sorted(plane.result_posts) == sorted(expect)  # once each, though listed on

        # A restart sees the same commands listed and replays none of them.
        again = subprocess.run(
            agent_cmd("--once", "--state-dir", str(state)),
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=GRACE,
        )
        assert again.returncode == 0, again.stderr
        assert sorted(plane.result_posts) == sorted(expect)

    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == ["keep.txt"]
    assert not (tmp_path / "newfile").exists()
    assert not (state / "apps").exists() or list((state / "apps").iterdir()) == []
    work = state / "agent" / "work"
    assert not work.exists() or list(work.iterdir()) == []  # scratch cleaned
    entries = {
        p.stem: json.loads(p.read_text()) for p in (state / "agent" / "commands").glob("*.json")
    }
    assert {k: (e["status"], e["acked"]) for k, e in entries.items()} == dict.fromkeys(
        expect, ("done", True)
    )


def test_a_command_the_agent_keeps_dying_in_is_failed_not_replayed(
    tmp_path: pathlib.Path, make_repo: RepoFactory
) -> None:
    """The agent is killed (SIGKILL, as by the OOM killer) twice while it runs the
    command; the third process fails it with the reason instead of running it again."""
    rendered = {r.name: r for r in rendered_repo(make_repo(REPO))}
    plane = FakeControlPlane(tokens={"tok-1"})
    plane.add(make_command(rendered["blog"], cid="cmd_killer", bundle=True), b"never served")
    state = tmp_path / "state"
    bundle = "GET /v1/agent/commands/cmd_killer/bundle"
    with stub_server(plane) as stub:
        stub.stall.add("cmd_killer")
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        env = agent_env(RECONCILE_SERVER=url, RECONCILE_AGENT_TOKEN="tok-1")
        for death in (1, 2):
            proc = subprocess.Popen(
                agent_cmd("--state-dir", str(state), "--poll-wait", "1"),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _until(f"download {death}", lambda n=death: plane.requests.count(bundle) >= n)
            finally:
                proc.kill()
                proc.wait(timeout=GRACE)
            entry = json.loads((state / "agent/commands/cmd_killer.json").read_text())
            assert entry["status"] == "running" and entry["interrupted"] == death - 1
        third = subprocess.run(
            agent_cmd("--once", "--state-dir", str(state)),
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=GRACE,
        )
    assert third.returncode == 0, third.stderr
    assert plane.requests.count(bundle) == 2  # not started a third time
    result = plane.results["cmd_killer"]
    assert not result.ok and "the agent stopped 2 times" in result.message
    entry = json.loads((state / "agent/commands/cmd_killer.json").read_text())
    assert (entry["status"], entry["acked"], entry["interrupted"]) == ("done", True, 2)


def test_a_path_as_deployment_id_is_refused_at_the_wire_and_by_the_executor(
    tmp_path: pathlib.Path,
) -> None:
    """Two locks on one door.  The model refuses the id; an Action built around the model
    (``model_construct``, as a bug might) still cannot make the executor touch a path:
    the executor's compose driver, proxy and watch are the fakes, the disk is real."""
    from pydantic import ValidationError

    from agent.compose import FakeComposeDriver
    from agent.executor import Executor, ExecutorSettings
    from reconciler.model.plan import Action
    from tests.agent.agent_fakes import AGENT_ID, FakeProxy, FakeWatch

    fields = {
        "action": "uninstall",
        "deployment": "web",
        "id": "../../victim",
        "agent": AGENT_ID,
        "reason": "no longer in the repository",
    }
    with pytest.raises(ValidationError, match="String should match pattern"):
        Action.model_validate(fields)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    state = tmp_path / "state"
    driver = FakeComposeDriver()
    executor = Executor(
        state_dir=state,
        driver=driver,
        proxy=FakeProxy(),
        watch=FakeWatch(),
        settings=ExecutorSettings(purge=True),
        environ={},
    )
    result = executor.apply_action(Action.model_construct(**fields), None, tmp_path)
    assert not result.ok and result.message.startswith("refused: not a deployment id")
    assert (victim / "keep.txt").read_text() == "mine"
    assert not (victim / ".lock").exists() and not state.exists()
    assert driver.calls == []
