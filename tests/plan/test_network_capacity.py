"""Network capacity in the plan: installs past what the agent's Docker daemon can still
create are blocked with a reason naming ``default-address-pools`` and the hint.

Pure: real rendering and planning on in-memory states; the figure itself is the agent's
(tests/agent/test_capacity.py computes it, tests/agent/test_capacity_docker.py on a
real daemon with a tiny pool).
"""

from __future__ import annotations

from reconciler.model.state import ActualState, AgentState, DeployedApp
from reconciler.plan import Action, plan
from reconciler.plan.planner import NETWORK_POOLS_HINT
from reconciler.render import RenderedDeployment
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import image_spec, rendered


def host(free: int | None, *running: DeployedApp, online: bool = True) -> ActualState:
    return ActualState(
        source="test",
        agents={
            "local": AgentState(
                agent="local",
                online=online,
                reason=None if online else "offline",
                free_networks=free,
                deployments={a.id: a for a in running},
            )
        },
    )


def apps(*names: str) -> list[RenderedDeployment]:
    return [rendered(image_spec(n)) for n in names]


def by_name(actions: list[Action]) -> dict[str, Action]:
    return {a.deployment: a for a in actions}


def test_installs_past_the_capacity_are_blocked_with_the_hint() -> None:
    actions = by_name(plan(apps("app1", "app2", "app3"), host(2)).actions)
    assert [actions[n].action for n in ("app1", "app2", "app3")] == [
        "install",
        "install",
        "blocked",
    ]
    reason = actions["app3"].reason
    assert "default-address-pools" in reason
    assert NETWORK_POOLS_HINT in reason
    assert "can create 2 more network(s)" in reason and "installs need 3" in reason
    assert plan(apps("app1", "app2", "app3"), host(2)).summary["blocked"] == 1


def test_exactly_enough_blocks_nothing_and_unknown_blocks_nothing() -> None:
    assert {a.action for a in plan(apps("aa1", "aa2"), host(2)).actions} == {"install"}
    many = apps(*(f"app{i:03d}" for i in range(40)))
    assert {a.action for a in plan(many, host(None)).actions} == {"install"}


def test_offline_agent_is_blocked_for_being_offline_not_for_networks() -> None:
    (action,) = plan(apps("app1"), host(0, online=False)).actions
    assert action.action == "blocked"
    assert "default-address-pools" not in action.reason


def test_running_deployments_need_no_new_network() -> None:
    """A full daemon still updates, repairs and leaves alone what runs there."""
    old = apps("run1", "run2")
    changed = [rendered(image_spec("run1", image="busybox:1.37")), old[1]]
    actions = by_name(plan([*changed, *apps("new1")], host(0, *map(deployed_app, old))).actions)
    assert actions["run1"].action == "update"
    assert actions["run2"].action == "noop"
    assert actions["new1"].action == "blocked"


def test_uninstalls_in_the_same_plan_give_their_networks_back() -> None:
    gone = apps("gone1", "gone2")
    stays = apps("stay1", "stay2", "stay3")
    running = [deployed_app(d) for d in [*gone, *stays]]
    actions = by_name(plan([*stays, *apps("new1", "new2", "new3")], host(1, *running)).actions)
    assert actions["gone1"].action == actions["gone2"].action == "uninstall"
    # 1 free + 2 given back = 3
    assert {actions[n].action for n in ("new1", "new2", "new3")} == {"install"}


def test_the_blocked_ones_are_the_last_by_name_whatever_the_input_order() -> None:
    names = ["mmm", "bbb", "zzz", "aaa", "kkk"]
    for order in (names, sorted(names), sorted(names, reverse=True)):
        actions = by_name(plan(apps(*order), host(3)).actions)
        assert sorted(n for n, a in actions.items() if a.action == "blocked") == ["mmm", "zzz"]


def test_a_move_blocked_for_networks_keeps_the_old_copy_running() -> None:
    here = rendered(image_spec("api"))
    there = rendered(image_spec("api", agent="edge"))
    edge = "agt_00000000000000ed"
    state = ActualState(
        source="test",
        agents={
            "local": AgentState(agent="local", deployments={here.id: deployed_app(here)}),
            edge: AgentState(agent=edge, free_networks=0),
        },
    )
    there = there.model_copy(update={"agent": edge})
    actions = {(a.deployment, a.agent): a for a in plan([there], state).actions}
    assert actions[("api", edge)].action == "blocked"
    assert "default-address-pools" in actions[("api", edge)].reason
    assert actions[("api", "local")].action == "blocked"
    assert "kept running here" in actions[("api", "local")].reason


def _manifest(name: str, compose: str) -> RenderedDeployment:
    want = rendered(image_spec(name))
    return want.model_copy(update={"compose_yaml": compose})


PROXY_ONLY = """\
services:
  app:
    image: busybox:1.36
    networks: [impreza-proxy]
networks:
  impreza-proxy: {external: true}
"""
TWO_INTERNAL = """\
services:
  web:
    image: busybox:1.36
    networks: [front, back]
  db:
    image: busybox:1.36
    networks:
      back: {}
  side:
    image: busybox:1.36
    network_mode: "service:web"
networks:
  front: {}
  back: {}
"""


def test_each_install_counts_the_networks_its_compose_file_makes() -> None:
    from reconciler.render.model import networks_created

    assert networks_created(rendered(image_spec("plain"))) == 1  # default
    assert networks_created(_manifest("proxied", PROXY_ONLY)) == 0
    assert networks_created(_manifest("twonets", TWO_INTERNAL)) == 2
    # apps on the proxy network only never run out, however many
    many = [_manifest(f"app{i:03d}", PROXY_ONLY) for i in range(40)]
    assert {a.action for a in plan(many, host(0)).actions} == {"install"}
    # 3 free: "aaa" takes 2, "bbb" (1) fits, "ccc" (2) does not, "ddd" (0) still does
    wants = [
        _manifest("aaa", TWO_INTERNAL),
        rendered(image_spec("bbb")),
        _manifest("ccc", TWO_INTERNAL),
        _manifest("ddd", PROXY_ONLY),
    ]
    actions = by_name(plan(wants, host(3)).actions)
    assert {n: a.action for n, a in actions.items()} == {
        "aaa": "install",
        "bbb": "install",
        "ccc": "blocked",
        "ddd": "install",
    }
    assert "installs need 5" in actions["ccc"].reason
