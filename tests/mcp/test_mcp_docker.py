"""The issue's "done when": an MCP client (the SDK's own, over stdio) deploys a catalog app
as a commit, sees it planned, and -- once ``reconcile apply`` has applied that commit on
the real Docker host -- reads its logs and restarts it.

Real: ``reconcile mcp``, git, ``reconcile apply``, Docker Engine, Compose v2 and Caddy.
A unique namespace and a private proxy port; everything created here is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import free_port
from tests.mcp.mcp_helpers import RECONCILE, Session, git, make_clone, run_mcp

pytestmark = pytest.mark.docker

SERVING = "Caddy serving static files"  # what caddy file-server logs once per start
APPLY_TRIES = 4
LOG_POLLS = 120  # x 0.5 s: a generous bound on a busy machine, not a measured figure


@pytest.fixture
def host(tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    client = docker_client()  # fails (never skips) without an engine
    namespace = unique_namespace("mcp")
    port = free_port()
    clone = make_clone(
        tmp_path,
        {
            "reconcile.yaml": f"namespace: {namespace}\nbase_domain: localhost\n"
            f"proxy:\n  http_port: {port}\n  tls: off\n",
            "deployments/.keep": "",
        },
    )
    try:
        yield {"clone": clone, "namespace": namespace, "port": port, "state": tmp_path / "state"}
    finally:
        for c in client.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={namespace}"}
        ):
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
        dpl = deployment_id(namespace, "site")
        for net in client.networks.list(filters={"name": dpl}):
            with contextlib.suppress(Exception):
                net.remove()
        # the proxy is shared by name; remove it only when it is the one this test started
        for c in client.containers.list(all=True, filters={"label": "io.reconciler.role=proxy"}):
            bindings = (c.attrs.get("HostConfig") or {}).get("PortBindings") or {}
            ports = {b.get("HostPort") for v in bindings.values() for b in v or []}
            if str(port) in ports:
                with contextlib.suppress(Exception):
                    c.remove(force=True)
        client.close()


def _apply(clone: pathlib.Path, state: pathlib.Path) -> dict[str, Any]:
    """``reconcile apply``, retried on a failure: the proxy container's name is one per
    Docker daemon, and other test runs on a shared daemon recreate it under our feet (a
    TemporaryError by design: back off and apply again, as the agent would)."""
    output = ""
    for _ in range(APPLY_TRIES):
        proc = subprocess.run(
            [RECONCILE, "apply", str(clone), "--yes", "-f", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, "RECONCILE_STATE_DIR": str(state), "NO_COLOR": "1"},
            timeout=600,
            check=False,
        )
        if proc.returncode == 0:
            return dict(json.loads(proc.stdout))
        output = proc.stdout + proc.stderr
    raise AssertionError(output)


def _show(dpl: str, state: pathlib.Path) -> dict[str, Any]:
    proc = subprocess.run(
        [RECONCILE, "show", dpl, "-f", "json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(proc.stdout))


def _started_at(dpl: str) -> dict[str, str]:
    client = docker_client()
    try:
        return {
            c.name: c.attrs["State"]["StartedAt"]
            for c in client.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={dpl}"}
            )
        }
    finally:
        client.close()


def test_a_catalog_app_deployed_through_mcp_is_planned_applied_logged_and_restarted(
    host: dict[str, Any],
) -> None:
    clone: pathlib.Path = host["clone"]
    dpl = deployment_id(host["namespace"], "site")

    async def deploy(s: Session) -> dict[str, Any]:
        return await s.call("deploy_catalog_app", {"name": "site", "app": "static-site"})

    change = run_mcp(clone, deploy)
    [action] = change["plan"]["plan"]["actions"]
    assert (action["action"], action["deployment"], action["id"]) == ("install", "site", dpl)
    assert "+app: static-site" in change["diff"]

    # the review: merge the branch, then the host applies the commit
    git(clone, "merge", "--ff-only", "-q", change["branch"])
    result = _apply(clone, host["state"])
    assert dpl in json.dumps(result), result  # installed (or, after a retry, already there)
    before = _started_at(dpl)
    assert before, "apply started no container"

    async def starts_logged(s: Session, at_least: int) -> list[str]:
        """Caddy logs one SERVING line per start; poll until the restart's is there."""
        for _ in range(LOG_POLLS):
            logs = await s.call("get_logs", {"deployment": dpl, "service": "app", "tail": 500})
            if sum(SERVING in line for line in logs["lines"]) >= at_least:
                break
            await asyncio.sleep(0.5)
        return list(logs["lines"])

    async def operate(s: Session) -> dict[str, Any]:
        return {
            "listed": await s.call("list_deployments"),
            "logs": await s.call("get_logs", {"deployment": "site", "tail": 50}),
            "first": await starts_logged(s, 1),
            "restart": await s.call("restart_deployment", {"deployment": "site"}),
            "after": await starts_logged(s, 2),
            "unknown": await s.fail("get_logs", {"deployment": "dpl_" + "0" * 16}),
        }

    out = run_mcp(clone, operate)
    assert [d["name"] for d in out["listed"]["deployments"]] == ["site"]
    assert out["logs"]["via"] == "local docker"
    assert 0 < len(out["logs"]["lines"]) <= 50
    assert sorted(out["restart"]["restarted"]) == sorted(before)
    after = _started_at(dpl)
    assert set(after) == set(before)
    running = [n for n in after if n.endswith("-app")]
    assert running and all(after[n] != before[n] for n in running)  # restarted, same containers
    assert sum(SERVING in line for line in out["first"]) == 1
    assert sum(SERVING in line for line in out["after"]) == 2  # the restart's own start
    assert out["unknown"]["error"] == "not_found"

    # a local rollback runs `reconcile rollback` beside the MCP server (which never
    # imports the agent): first refused (one release only), then done after a change
    state_env = {"RECONCILE_STATE_DIR": str(host["state"])}

    async def no_earlier(s: Session) -> dict[str, Any]:
        return await s.fail("rollback_deployment", {"deployment": "site"})

    refused = run_mcp(clone, no_earlier, env=state_env)
    assert refused["error"] == "refused", refused
    first = _show(dpl, host["state"])
    (clone / "deployments" / "site.yaml").write_text(
        (clone / "deployments" / "site.yaml").read_text()
        + f"domain: other-{host['namespace']}.localhost\n"
    )
    git(clone, "commit", "-qam", "another domain")
    _apply(clone, host["state"])
    changed = _show(dpl, host["state"])
    assert changed["spec_hash"] != first["spec_hash"]

    async def roll(s: Session) -> dict[str, Any]:
        return {
            "back": await s.call("rollback_deployment", {"deployment": "site"}),
            "release": await s.call("rollback_deployment", {"deployment": "site", "release": True}),
        }

    rolled = run_mcp(clone, roll, env=state_env)
    assert rolled["back"]["via"] == "local"
    assert "held until its file changes in git" in rolled["back"]["message"]
    assert "hold lifted" in rolled["release"]["message"]
    after_roll = _show(dpl, host["state"])
    assert after_roll["spec_hash"] == first["spec_hash"]  # the earlier release runs again
    assert after_roll["held"] is None  # and the hold is lifted
