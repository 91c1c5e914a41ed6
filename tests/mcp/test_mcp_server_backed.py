"""``reconcile mcp`` in front of a real ``reconcile serve`` (uvicorn on a 127.0.0.1 port).

The token comes through ``RECONCILE_TOKEN_FILE``; the control plane of this tree has no
logs, restart or rollback endpoint yet, and the tools must say so as a structured error.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.mcp.settings import token_from_env
from reconciler.model.secretenv import SecretEnvError
from tests.mcp.mcp_helpers import Session, make_clone, run_mcp
from tests.server.conftest import ADMIN
from tests.server.serve_helpers import Serve

FILES = {
    "reconcile.yaml": "namespace: mcpserved\n",
    "deployments/site.yaml": "name: site\nagent: local\napp: hello\n",
}


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, Serve]]:
    clone = make_clone(tmp_path, FILES)
    data = tmp_path / "data"
    data.mkdir()
    serve = Serve(str(clone), data)
    try:
        yield clone, serve
    finally:
        serve.stop()


def test_tools_read_the_control_plane_and_name_what_it_lacks(
    served: tuple[pathlib.Path, Serve], tmp_path: pathlib.Path
) -> None:
    clone, serve = served
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    env = {"RECONCILE_SERVER": serve.url, "RECONCILE_TOKEN_FILE": str(token_file)}

    async def body(s: Session) -> dict[str, Any]:
        return {
            "agents": await s.call("list_agents"),
            "events": await s.call("get_events", {"limit": 5}),
            "deployments": await s.call("list_deployments"),
            "logs": await s.fail("get_logs", {"deployment": "site"}),
            "restart": await s.fail("restart_deployment", {"deployment": "site"}),
            "rollback": await s.fail("rollback_deployment", {"deployment": "site"}),
        }

    out = run_mcp(clone, body, env=env)
    assert out["agents"]["source"] == "server"
    assert isinstance(out["events"]["events"], list)
    [site] = out["deployments"]["deployments"]
    assert site["name"] == "site"
    for key in ("logs", "restart", "rollback"):
        assert out[key]["error"] == "not_supported", out[key]
        assert "not supported by this server yet" in out[key]["message"]


def test_a_wrong_token_is_a_structured_refusal(served: tuple[pathlib.Path, Serve]) -> None:
    clone, serve = served

    async def body(s: Session) -> dict[str, Any]:
        return await s.fail("list_agents")

    out = run_mcp(clone, body, env={"RECONCILE_SERVER": serve.url, "RECONCILE_TOKEN": "wrong"})
    assert out["error"] == "unauthorized"
    assert "RECONCILE_TOKEN" in out["hint"]


def test_the_token_comes_from_either_name_or_its_file(tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "t"
    secret.write_text("from-file\n")
    assert token_from_env({"RECONCILE_TOKEN": "a", "RECONCILE_ADMIN_TOKEN": "b"}) == "a"
    assert token_from_env({"RECONCILE_ADMIN_TOKEN": "b"}) == "b"
    assert token_from_env({"RECONCILE_ADMIN_TOKEN_FILE": str(secret)}) == "from-file"
    assert token_from_env({}) is None
    with pytest.raises(SecretEnvError):
        token_from_env({"RECONCILE_TOKEN": "a", "RECONCILE_TOKEN_FILE": str(secret)})
