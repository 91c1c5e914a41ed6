"""Resources in the plan: the limits every image-built kind renders, the spec hash that
covers them, and the block of a deployment whose ``memory_mb`` is more than its host has.

Pure: real rendering and planning on in-memory states (``tests/plan/strategies``).
"""

from __future__ import annotations

import json

import yaml

from reconciler.model.state import ActualState, AgentState, DeployedApp
from reconciler.plan import Action, plan, report
from reconciler.render import RenderedDeployment
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import Spec, image_spec, rendered
from tests.plan.test_planner import catalog_spec, git_spec


def dockerfile_spec(name: str, **body: object) -> Spec:
    return Spec(
        name=name,
        kind="dockerfile",
        body={"build": {"context": "."}, **body},
        bundle_digest="c" * 64,
    )


def host_with(total: int | None, *running: DeployedApp, agent: str = "local") -> ActualState:
    return ActualState(
        source="test",
        agents={
            agent: AgentState(
                agent=agent,
                total_memory_mb=total,
                deployments={a.id: a for a in running},
            )
        },
    )


def only(desired: list[RenderedDeployment], actual: ActualState) -> Action:
    (action,) = plan(desired, actual).actions
    return action


def test_image_dockerfile_and_git_render_their_limits() -> None:
    for spec in (
        image_spec("api", body={"cpus": 0.5, "memory_mb": 64}),
        dockerfile_spec("site", cpus=0.5, memory_mb=64),
        git_spec("bot", "a" * 40),
    ):
        want = rendered(spec)
        service = yaml.safe_load(want.compose_yaml)["services"]["app"]
        expected = (0.5, "64m") if spec.kind != "git" else (1.0, "512m")  # git: the defaults
        assert (service["cpus"], service["mem_limit"]) == expected, spec.kind
        assert want.resources == {"cpus": expected[0], "memory_mb": int(expected[1][:-1])}


def test_manifest_kinds_carry_no_limits() -> None:
    want = rendered(catalog_spec("notes"))
    assert want.resources == {}
    services = yaml.safe_load(want.compose_yaml)["services"]
    assert all("mem_limit" not in s and "cpus" not in s for s in services.values())


def test_a_memory_change_is_an_update_with_a_resources_change() -> None:
    before = rendered(image_spec("api", body={"memory_mb": 256}))
    after = rendered(image_spec("api", body={"memory_mb": 384}))
    assert before.spec_hash != after.spec_hash
    action = only([after], host_with(None, deployed_app(before)))
    assert action.action == "update"
    changes = {c.field: c for c in action.changes}
    assert changes["resources"].describe() == (
        "resources: cpus=1.0, memory_mb=256 -> cpus=1.0, memory_mb=384"
    )


def test_install_that_needs_more_memory_than_the_host_has_is_blocked() -> None:
    want = rendered(image_spec("big", body={"memory_mb": 4096}))
    action = only([want], host_with(2048))
    assert action.action == "blocked"
    assert action.reason == (
        "memory_mb 4096 is more than the 2048 MB of memory agent local has in total; "
        "lower memory_mb, or place it on a larger host"
    )
    # the machine formats carry the same reason
    doc = json.loads(report.json_plan(plan([want], host_with(2048))))
    assert doc["actions"][0]["action"] == "blocked"
    assert doc["actions"][0]["reason"] == action.reason


def test_fits_exactly_and_unknown_totals_block_nothing() -> None:
    want = rendered(image_spec("api", body={"memory_mb": 2048}))
    assert only([want], host_with(2048)).action == "install"
    big = rendered(image_spec("big", body={"memory_mb": 1_000_000}))
    assert only([big], host_with(None)).action == "install"  # an agent from before


def test_an_update_that_grows_too_big_is_blocked_and_the_app_left_running() -> None:
    before = rendered(image_spec("api", body={"memory_mb": 256}))
    after = rendered(image_spec("api", body={"memory_mb": 8192}))
    actions = plan([after], host_with(4096, deployed_app(before))).actions
    assert [(a.action, a.deployment) for a in actions] == [("blocked", "api")]
    assert "8192" in actions[0].reason


def test_what_already_runs_as_wanted_is_not_blocked() -> None:
    """The host shrank (or the total was unknown when it was applied): it runs; no churn."""
    want = rendered(image_spec("api", body={"memory_mb": 4096}))
    assert only([want], host_with(1024, deployed_app(want))).action == "noop"


def test_manifest_kinds_are_never_blocked_for_memory() -> None:
    want = rendered(catalog_spec("notes"))
    assert only([want], host_with(16)).action == "install"


def test_a_move_to_a_host_too_small_keeps_the_old_copy() -> None:
    old = rendered(image_spec("api", body={"memory_mb": 4096}))
    moved = rendered(image_spec("api", agent="edge", body={"memory_mb": 4096}))
    actual = ActualState(
        source="test",
        agents={
            "local": AgentState(
                agent="local", total_memory_mb=16384, deployments={old.id: deployed_app(old)}
            ),
            moved.agent: AgentState(agent=moved.agent, total_memory_mb=2048),
        },
    )
    by_agent = {a.agent: a for a in plan([moved], actual).actions}
    assert by_agent[moved.agent].action == "blocked"
    assert by_agent["local"].action == "blocked"
    assert "kept running here" in by_agent["local"].reason
