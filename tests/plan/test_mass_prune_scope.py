"""Issue 13: the mass-prune guard is decided per agent (and per namespace), so one
agent's report never holds back prunes on the others."""

from __future__ import annotations

from reconciler.model.ids import deployment_id
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import EDGE_ID, OTHER_NAMESPACE, config_for, image_spec, rendered
from tests.plan.test_planner import host, on, run


def test_one_agent_s_many_strays_do_not_block_another_agent_s_prune() -> None:
    keep, gone = rendered(image_spec("keep")), rendered(image_spec("gone"))
    # A rogue or confused agent reports five deployments of this namespace nobody wants.
    strays = [rendered(image_spec(f"stray{i}", agent="edge")) for i in range(5)]
    actual = host(on(keep), on(gone), *map(on, strays))
    actions = run([keep], actual)
    assert actions[("gone", "local")].action == "uninstall"
    for s in strays:
        refused = actions[(s.name, EDGE_ID)]
        assert refused.action == "blocked"
        assert refused.reason == (
            "mass prune refused: would uninstall 5 of 5 running deployments of namespace "
            f"'default' on agent {EDGE_ID} (limit 50%); pass --allow-mass-prune if intended"
        )
    allowed = run([keep], actual, allow_mass_prune=True)
    assert {allowed[(s.name, EDGE_ID)].action for s in strays} == {"uninstall"}


def test_emptying_one_host_is_refused_even_in_a_large_fleet() -> None:
    """An ``agents:`` alias pointed at the wrong id empties a host: 2 of 12 fleet-wide,
    all of that host."""
    fleet = [rendered(image_spec(f"app{i}")) for i in range(10)]
    edge = [rendered(image_spec(f"edge{i}", agent="edge")) for i in range(2)]
    actions = run(fleet, host(*map(on, fleet + edge)))
    assert {actions[(d.name, EDGE_ID)].action for d in edge} == {"blocked"}


def test_another_namespace_s_apps_do_not_count() -> None:
    """Only this namespace's deployments make the share: another repository's apps on
    the same host neither dilute nor trip the guard."""
    mine = [rendered(image_spec(f"app{i}")) for i in range(2)]
    theirs = [rendered(image_spec(f"their{i}"), config_for(OTHER_NAMESPACE)) for i in range(20)]
    actual = host(*map(on, mine + theirs))
    actions = run(mine[:1], actual)
    assert actions[("app1", "local")].action == "uninstall"  # 1 of 2: within the share
    assert all(a.agent == "local" for a in actions.values())
    assert {a.deployment for a in actions.values()} == {"app0", "app1"}
    assert deployed_app(theirs[0]).namespace == OTHER_NAMESPACE
    assert deployment_id("default", "app1") == mine[1].id
