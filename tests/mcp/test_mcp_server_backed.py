"""``reconcile mcp`` in front of a real ``reconcile serve`` (uvicorn on a 127.0.0.1 port).

The token comes through ``RECONCILE_TOKEN_FILE``.  logs, restart and rollback are the
control plane's day-2 operations (``POST /v1/operations``): with no agent online the
tools answer a structured refusal; with a real ``reconcile-agent`` on real Docker
(tests/e2e/cluster.py) they act on the host, through the SDK's own client over stdio.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.mcp.settings import token_from_env
from reconciler.model.secretenv import SecretEnvError
from tests.agent.docker_helpers import docker_client
from tests.day2.app import deploy, page, view
from tests.e2e.cluster import ADMIN_TOKEN, Cluster, running_cluster, wait_for
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


def test_tools_read_the_control_plane_and_refuse_what_no_agent_can_run(
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
        # the server knows the deployment, but no agent of its can run the operation
        assert out[key]["error"] == "refused", out[key]
        assert "agent local of site is not served by the control plane" in out[key]["message"]


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


@pytest.fixture
def cluster(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    docker_client()  # fails loudly without Docker
    with running_cluster(tmp_path) as c:
        # its own proxy: other tests on this Docker host run theirs
        monkeypatch.setenv("RECONCILE_PROXY_CONTAINER", f"reconciler-proxy-{c.namespace}")
        yield c


def _started_at(dpl: str) -> dict[str, str]:
    client = docker_client()
    try:
        return {
            c.id: c.attrs["State"]["StartedAt"]
            for c in client.containers.list(filters={"label": f"io.reconciler.deployment={dpl}"})
        }
    finally:
        client.close()


@pytest.mark.docker
def test_logs_restart_and_rollback_reach_a_real_agent_through_the_control_plane(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.start_agent(cluster.agent_token(), settle=0.5)
    deploy(cluster, "v1")
    wait_for(lambda: page(cluster, "page v1"), 60, "v1 through the proxy")
    deploy(cluster, "v2")
    wait_for(lambda: page(cluster, "page v2"), 60, "v2 through the proxy")
    dpl = view(cluster)["id"]
    before = _started_at(dpl)

    def held() -> bool:
        row = view(cluster)
        return row["status"] == "held" and row["plan_action"] == "held"

    async def body(s: Session) -> dict[str, Any]:
        out = {
            "logs": await s.call("get_logs", {"deployment": "notes", "tail": 10}),
            "restart": await s.call("restart_deployment", {"deployment": "notes"}),
            "after_restart": _started_at(dpl),
            "one_service": await s.fail(
                "restart_deployment", {"deployment": "notes", "service": "app"}
            ),
            "no_release": await s.fail("rollback_deployment", {"deployment": "notes", "to": "zz"}),
            "both": await s.fail(
                "rollback_deployment", {"deployment": "notes", "to": "x", "release": True}
            ),
            "rollback": await s.call("rollback_deployment", {"deployment": "notes"}),
        }
        wait_for(lambda: page(cluster, "page v1"), 30, "v1 again after the rollback")
        wait_for(held, 30, "the server's plan and status to show notes held")
        out["release"] = await s.call(
            "rollback_deployment", {"deployment": "notes", "release": True}
        )
        return out

    env = {"RECONCILE_SERVER": cluster.url, "RECONCILE_TOKEN": ADMIN_TOKEN}
    out = run_mcp(cluster.work, body, env=env)

    assert out["logs"]["via"] == "server"
    assert any("day2 app starting v2" in line for line in out["logs"]["lines"]), out["logs"]
    assert out["restart"]["restarted"] == ["app"]
    after = out["after_restart"]
    assert set(after) == set(before)  # the same containers, started again
    assert all(after[c] != before[c] for c in before)
    assert out["one_service"]["error"] == "not_supported"
    assert out["no_release"]["error"] == "refused"
    assert out["both"]["error"] == "invalid"
    assert out["rollback"]["via"] == "server"
    assert out["rollback"]["held"] is not None, out["rollback"]
    assert out["release"]["released"] is True
    # the hold is lifted: git (v2) decides again, without a push
    wait_for(lambda: page(cluster, "page v2"), 60, "v2 again after the hold is lifted")
    assert view(cluster)["held"] is None
