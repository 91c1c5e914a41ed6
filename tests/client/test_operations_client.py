"""The day-2 operations client's handling of each answer, with ``httpx.MockTransport``
(pure logic: the real server and agent path is covered by tests/day2 and
tests/mcp/test_mcp_server_backed.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from reconciler.client.operations import ServerRefused, ServerUnreachable, run_operation
from reconciler.model.day2 import OperationError, OperationRequest

SERVER = "http://127.0.0.1:9/"
REQUEST = OperationRequest(op="restart", deployment="notes")


def transport(
    post: httpx.Response, states: list[dict[str, object]]
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    answers = iter(states)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return post
        return httpx.Response(200, json=next(answers))

    return httpx.MockTransport(handle), seen


def test_polls_until_the_agent_answers_and_returns_its_result() -> None:
    mock, seen = transport(
        httpx.Response(202, json={"command": "cmd_1"}),
        [
            {"state": "pending", "result": None},
            {"state": "done", "result": {"ok": True, "payload": {"restarted": ["app"]}}},
        ],
    )
    result = run_operation(SERVER, "tok", REQUEST, transport=mock)
    assert result.ok and result.payload == {"restarted": ["app"]}
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert json.loads(seen[0].content)["op"] == "restart"
    assert [r.url.path for r in seen] == ["/v1/operations", *["/v1/operations/cmd_1"] * 2]
    assert seen[1].url.params["wait"] == "25"


@pytest.mark.parametrize("status", [404, 409])
def test_a_refused_operation_is_an_operation_error_with_the_servers_words(status: int) -> None:
    mock, seen = transport(httpx.Response(status, json={"error": "agent agt_x is offline"}), [])
    with pytest.raises(OperationError, match="agent agt_x is offline"):
        run_operation(SERVER, "tok", REQUEST, transport=mock)
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"state": "expired", "result": None}, "did not pick the operation up"),
        ({"state": "failed", "result": None, "message": "unknown kind"}, "unknown kind"),
    ],
)
def test_no_result_is_an_operation_error(state: dict[str, object], words: str) -> None:
    mock, _ = transport(httpx.Response(202, json={"command": "cmd_1"}), [state])
    with pytest.raises(OperationError, match=words):
        run_operation(SERVER, "tok", REQUEST, transport=mock)


def test_a_wrong_token_is_refused_with_its_status() -> None:
    mock, _ = transport(httpx.Response(401, json={"error": "bad token"}), [])
    with pytest.raises(ServerRefused, match="HTTP 401: bad token") as caught:
        run_operation(SERVER, "wrong", REQUEST, transport=mock)
    assert caught.value.status == 401


def test_an_agent_that_never_answers_times_out() -> None:
    def pending(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"command": "c"})
        return httpx.Response(200, json={"state": "pending"})

    with pytest.raises(OperationError, match="did not answer within 0 s"):
        run_operation(SERVER, "tok", REQUEST, timeout=0, transport=httpx.MockTransport(pending))


def test_no_connection_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ServerUnreachable, match=r"http://127\.0\.0\.1:9: connection refused"):
        run_operation(SERVER, "tok", REQUEST, transport=httpx.MockTransport(refuse))
