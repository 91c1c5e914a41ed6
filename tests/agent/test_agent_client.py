"""The agent's HTTP client and bootstrap: errors sorted by what to do next, credentials
kept 0600 and bought once, backoff with full jitter.  Against a fake control plane
behind httpx.MockTransport."""

from __future__ import annotations

import json
import pathlib
import stat

import httpx
import pytest

from agent import daemon
from agent.client import (
    AgentClient,
    Backoff,
    Credentials,
    ProtocolError,
    Unauthorized,
    Unavailable,
    credentials_path,
    load_credentials,
)
from agent.daemon import BootstrapRefused, SetupError, ensure_credentials
from tests.agent.agent_fakes import AGENT_ID, SERVER, FakeControlPlane


def factory(server: FakeControlPlane):
    def make(url: str, creds: Credentials | None, **_options: object) -> AgentClient:
        # verify= and user_agent= are the daemon's; the mock transport ignores TLS.
        return AgentClient(url, creds, transport=server.transport())

    return make


def client_for(server: FakeControlPlane, secret: str = "s3cret") -> AgentClient:
    server.register(AGENT_ID, secret)
    creds = Credentials(server=SERVER, agent_id=AGENT_ID, secret=secret)
    return AgentClient(SERVER, creds, transport=server.transport())


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_writes_credentials_0600_and_is_not_repeated(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(tokens={"tok-1"})
    creds = ensure_credentials(tmp_path, SERVER, "tok-1", make_client=factory(server))
    path = credentials_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored == {"server": SERVER, "agent_id": creds.agent_id, "secret": creds.secret}
    assert creds.agent_id.startswith("agt_") and server.agents[creds.agent_id] == creds.secret

    # A second start reuses them: no bootstrap call, and the (used) token is not needed.
    again = ensure_credentials(tmp_path, SERVER, "tok-1", make_client=factory(server))
    assert again == creds
    assert server.requests.count("POST /v1/agent/bootstrap") == 1
    assert ensure_credentials(tmp_path, None, None, make_client=factory(server)) == creds


def test_refused_token_is_final_not_a_retry_loop(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(tokens=set())
    with pytest.raises(BootstrapRefused, match="refused the bootstrap token"):
        ensure_credentials(tmp_path, SERVER, "used-token", make_client=factory(server))
    assert server.requests == ["POST /v1/agent/bootstrap"]
    assert not credentials_path(tmp_path).exists()


def test_refused_token_exits_2(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeControlPlane(tokens=set())
    monkeypatch.setattr(daemon, "AgentClient", factory(server))
    with pytest.raises(SystemExit) as exc:
        daemon.main(["--server", SERVER, "--token", "nope", "--state-dir", str(tmp_path)])
    assert exc.value.code == daemon.EXIT_SETUP == 2
    assert "refused the bootstrap token" in capsys.readouterr().err


def test_no_credentials_and_no_token_is_a_setup_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SetupError, match="--token"):
        ensure_credentials(tmp_path, SERVER, None)
    with pytest.raises(SetupError, match="--server"):
        ensure_credentials(tmp_path, None, "tok")


def test_bootstrap_retries_an_unreachable_server(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(tokens={"tok-1"}, fail={"/v1/agent/bootstrap": ["connect", 503]})
    creds = ensure_credentials(
        tmp_path,
        SERVER,
        "tok-1",
        make_client=factory(server),
        backoff=Backoff(base=0.001, cap=0.002),
    )
    assert server.requests.count("POST /v1/agent/bootstrap") == 3
    assert load_credentials(tmp_path) == creds


def test_a_new_server_url_is_remembered(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane(tokens={"tok-1"})
    creds = ensure_credentials(tmp_path, SERVER, "tok-1", make_client=factory(server))
    moved = ensure_credentials(tmp_path, "http://moved.test/", None)
    assert moved.server == "http://moved.test" and moved.secret == creds.secret
    assert load_credentials(tmp_path) == moved


# ------------------------------------------------------------------ error classes


@pytest.mark.parametrize(
    ("injected", "error"),
    [
        ("connect", Unavailable),
        (503, Unavailable),
        (500, Unavailable),
        (429, Unavailable),
        (401, Unauthorized),
        (404, ProtocolError),
        (422, ProtocolError),
    ],
)
def test_failures_are_sorted_by_what_to_do_next(injected: str | int, error: type) -> None:
    server = FakeControlPlane(fail={"/v1/agent/commands": [injected]})
    client = client_for(server)
    with pytest.raises(error):
        client.commands(0)
    assert client.commands(0).commands == []  # the next call goes through


def test_wrong_secret_is_unauthorized() -> None:
    server = FakeControlPlane()
    client = client_for(server)
    server.agents[AGENT_ID] = "rotated"
    with pytest.raises(Unauthorized, match="401"):
        client.commands(0)


def test_an_answer_of_the_wrong_shape_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"commands": "not a list"})

    creds = Credentials(server=SERVER, agent_id=AGENT_ID, secret="x")
    client = AgentClient(SERVER, creds, transport=httpx.MockTransport(handler))
    with pytest.raises(ProtocolError, match="not a CommandBatch"):
        client.commands(0)


def test_calls_carry_the_agent_headers_and_the_wait() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"commands": [], "heartbeat_seconds": 7})

    creds = Credentials(server=SERVER + "/", agent_id=AGENT_ID, secret="sec")
    client = AgentClient(SERVER + "/", creds, transport=httpx.MockTransport(handler))
    assert client.commands(25).heartbeat_seconds == 7
    (request,) = seen
    assert request.headers["X-Agent-Id"] == AGENT_ID
    assert request.headers["X-Agent-Secret"] == "sec"
    assert str(request.url) == f"{SERVER}/v1/agent/commands?wait=25"


def test_bundle_download_is_capped_while_streaming(tmp_path: pathlib.Path) -> None:
    server = FakeControlPlane()
    server.bundles["cmd_big"] = b"x" * 5000
    client = client_for(server)
    target = tmp_path / "b.tar"
    with pytest.raises(ProtocolError, match="larger than"):
        client.download_bundle("cmd_big", target, max_bytes=4096)
    assert client.download_bundle("cmd_big", target, max_bytes=5000) == 5000
    with pytest.raises(ProtocolError, match="404"):
        client.download_bundle("cmd_none", target)


# ------------------------------------------------------------------ backoff


def test_backoff_doubles_to_the_cap_with_full_jitter_and_resets() -> None:
    asked: list[tuple[float, float]] = []

    def rng(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return hi / 2

    b = Backoff(base=0.5, cap=30.0, rng=rng)
    delays = [b.next() for _ in range(9)]
    assert [hi for _lo, hi in asked] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert all(lo == 0 for lo, _hi in asked)  # full jitter: anywhere from zero
    assert delays == [hi / 2 for _lo, hi in asked]
    b.reset()
    b.next()
    assert asked[-1] == (0, 0.5)


def test_backoff_with_real_jitter_stays_within_bounds_and_varies() -> None:
    b = Backoff(base=0.5, cap=30.0)
    for _ in range(8):
        b.next()
    samples = [b.next() for _ in range(50)]
    assert all(0 <= s <= 30 for s in samples)
    assert len(set(samples)) > 40  # jittered, not a fixed schedule


def test_a_poll_wait_under_one_second_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # wait=0 would turn the long poll into a busy loop against the server.
    with pytest.raises(SystemExit) as exc:
        daemon.main(["--poll-wait", "0", "--server", SERVER])
    assert exc.value.code == 2
    assert "at least 1 second" in capsys.readouterr().err


def test_an_unwritable_state_dir_is_a_clean_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeControlPlane(tokens={"tok-1"})
    monkeypatch.setattr(daemon, "AgentClient", factory(server))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exc:
        daemon.main(["--server", SERVER, "--token", "tok-1", "--state-dir", str(blocker)])
    assert exc.value.code == 1
    assert "Not a directory" in capsys.readouterr().err


def test_main_leaves_signal_handlers_and_logging_as_it_found_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import signal

    server = FakeControlPlane(tokens=set())
    monkeypatch.setattr(daemon, "AgentClient", factory(server))
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(SystemExit):
        daemon.main(["--server", SERVER, "--token", "x", "--state-dir", str(tmp_path)])
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert logging.getLogger().handlers == handlers


def test_each_polled_command_is_parsed_on_its_own() -> None:
    """One bad command must not hide the good ones: it comes back refused, with the
    reason, and with its id only when that id is a command id."""
    good = {
        "id": "cmd_good",
        "kind": "uninstall",
        "action": {
            "action": "uninstall",
            "deployment": "web",
            "id": "dpl_0123456789abcdef",
            "agent": AGENT_ID,
            "reason": "pruned",
        },
        "created": "2026-01-01T00:00:00Z",
        "deadline": "2999-01-01T00:00:00Z",
    }
    path_id = {**good, "id": "cmd_path", "action": {**good["action"], "id": "../../victim"}}  # type: ignore[dict-item]
    naive = {**good, "id": "cmd_naive", "deadline": "2999-01-01T00:00:00"}
    bad_id = {**good, "id": "../../x"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"commands": [path_id, good, naive, bad_id, 7]})

    creds = Credentials(server=SERVER, agent_id=AGENT_ID, secret="x")
    polled = AgentClient(SERVER, creds, transport=httpx.MockTransport(handler)).commands(0)
    assert [c.id for c in polled.commands] == ["cmd_good"]
    refused = {r.shown_id: r for r in polled.refused}
    assert [r.id for r in polled.refused] == ["cmd_path", "cmd_naive", None, None]
    assert "action.id: String should match pattern" in refused["'cmd_path'"].reason
    assert "deadline" in refused["'cmd_naive'"].reason
    assert refused["'../../x'"].id is None and "id" in refused["'../../x'"].reason
