"""``onion`` in plans (added, removed, toggled back: an update naming the change) and the
proxy's ``.onion`` routes (plain HTTP on :80 whatever the TLS mode)."""

from __future__ import annotations

import pathlib

import pytest

from agent.proxy import desired_config, routes_from_config
from reconciler.model.plan import Change
from tests.conftest import RepoFactory
from tests.onion.test_onion_executor import HIDDEN, make_host

ONION = "a" * 56 + ".onion"


def _onion_change(changes: list[Change]) -> Change:
    return next(c for c in changes if c.field == "onion")


def test_onion_added_removed_and_back_are_updates(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    from agent.observe import merge
    from agent.statedir import list_records
    from reconciler.load.repo import load_repository
    from reconciler.model.state import ActualState, ContainerState
    from reconciler.plan import plan
    from reconciler.render import RenderContext, render_all

    host = make_host(make_repo, tmp_path)

    def plan_for(onion: str) -> list[Change]:
        root = make_repo(
            {"reconcile.yaml": "namespace: t\n", "deployments/hidden.yaml": HIDDEN.format(onion)}
        )
        state = load_repository(root)
        rendered = render_all(state, RenderContext(config=state.config))
        agent = merge("local", [], list_records(host.ex.state_dir))
        agent = agent.model_copy(
            update={
                "deployments": {
                    k: v.model_copy(update={"containers": [ContainerState(service="app")]})
                    for k, v in agent.deployments.items()
                }
            }
        )
        [action] = plan(rendered, ActualState(agents={"local": agent}), namespace="t").actions
        return list(action.changes) if action.action == "update" else []

    host.apply({"hidden": HIDDEN.format("false")})
    added = plan_for("true")
    assert _onion_change(added) == Change(field="onion", before="false", after="true")
    host.apply({"hidden": HIDDEN.format("true")})
    assert plan_for("true") == []  # applied: a no-op
    removed = plan_for("false")
    assert _onion_change(removed) == Change(field="onion", before="true", after="false")
    host.apply({"hidden": HIDDEN.format("false")})
    back = plan_for("true")
    assert _onion_change(back) == Change(field="onion", before="false", after="true")


@pytest.mark.parametrize("tls", ["auto", "internal"])
def test_onion_routes_stay_plain_http_on_80_with_tls_on(tls: str) -> None:
    config = desired_config({ONION: "dpl_1-app:80", "a.example.com": "dpl_2-app:80"}, tls)  # type: ignore[arg-type]
    servers = config["apps"]["http"]["servers"]
    hosts_80 = [r["match"][0]["host"][0] for r in servers["http"]["routes"] if "match" in r]
    hosts_443 = [r["match"][0]["host"][0] for r in servers["https"]["routes"] if "match" in r]
    assert hosts_80 == [ONION]
    assert hosts_443 == ["a.example.com"]
    policies = config["apps"].get("tls", {}).get("automation", {}).get("policies", [])
    assert all(ONION not in p["subjects"] for p in policies)
    assert routes_from_config(config) == {ONION: "dpl_1-app:80", "a.example.com": "dpl_2-app:80"}


def test_onion_route_with_tls_off_is_an_ordinary_route() -> None:
    config = desired_config({ONION: "dpl_1-app:80"}, "off")
    [route, _404] = config["apps"]["http"]["servers"]["http"]["routes"]
    assert route["match"] == [{"host": [ONION]}]
