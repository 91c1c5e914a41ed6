"""Who serves a domain: conflicts block only the second deployment (the one that does not
serve it yet, else the later file), auto domains move to fresh hex on a clash and stay
put once deployed, and a domain change is an update that says so."""

from __future__ import annotations

import pathlib

from reconciler.load.repo import load_repository
from reconciler.model.ids import auto_domain
from reconciler.model.state import ActualState, AgentState, DeployedApp
from reconciler.plan import Action, PlanOptions, plan
from reconciler.render import RenderContext, RenderedDeployment, render_all
from tests.conftest import RepoFactory
from tests.plan import fakehost
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import EDGE_ID, OTHER_NAMESPACE, config_for, image_spec, rendered


def host(*apps: tuple[str, DeployedApp], agents: tuple[str, ...] = ()) -> ActualState:
    names = {"local", *agents, *(a for a, _ in apps)}
    return ActualState(
        source="test",
        agents={
            a: AgentState(agent=a, deployments={x.id: x for g, x in apps if g == a})
            for a in sorted(names)
        },
    )


def running(d: RenderedDeployment) -> tuple[str, DeployedApp]:
    return d.agent, deployed_app(d)


def actions(
    desired: list[RenderedDeployment], actual: ActualState, namespace: str = "default"
) -> dict[str, Action]:
    p = plan(desired, actual, namespace=namespace, options=PlanOptions())
    return {a.deployment: a for a in p.actions}


def web(name: str, domain: str | None = "www.example.com", **kw: object) -> RenderedDeployment:
    return rendered(image_spec(name, domain=domain, **kw))  # type: ignore[arg-type]


def foreign(name: str, domain: str | None = "www.example.com") -> RenderedDeployment:
    return rendered(image_spec(name, domain=domain), config_for(OTHER_NAMESPACE))


# ------------------------------------------------------------------ explicit domains


def test_same_repo_first_file_keeps_the_domain_second_is_blocked() -> None:
    blue, green = web("blue"), web("green")
    # File order decides, not the name: green's file sorts first here.
    green = green.model_copy(update={"file": "deployments/a-green.yaml"})
    blue = blue.model_copy(update={"file": "deployments/b-blue.yaml"})
    got = actions([blue, green], host())
    assert got["green"].action == "install"
    assert got["blue"].action == "blocked"
    assert got["blue"].reason == (
        "domain www.example.com is already in use by green; waiting until it is free"
    )
    assert got["blue"].spec_hash == blue.spec_hash


def test_the_one_already_serving_keeps_it_whatever_the_file_order() -> None:
    blue, green = web("blue"), web("green")
    got = actions([blue, green], host(running(green)))
    assert got["green"].action == "noop"
    assert got["blue"].action == "blocked"
    assert "www.example.com is already in use by green" in got["blue"].reason


def test_another_namespace_on_the_same_agent_keeps_it_and_is_not_named() -> None:
    theirs = foreign("shop")
    mine = web("store")
    p = plan([mine], host(running(theirs)), namespace="default")
    (action,) = p.actions  # the other namespace's app is not in the plan at all
    assert action.action == "blocked"
    assert action.reason == "domain www.example.com is already in use; waiting until it is free"
    assert "shop" not in action.reason and theirs.id not in action.reason
    # The first keeps serving: applying the plan leaves it exactly as it was.
    after = fakehost.apply(p, [mine], host(running(theirs)))
    assert after.agents["local"].deployments[theirs.id] == deployed_app(theirs)
    assert mine.id not in after.agents["local"].deployments


def test_no_conflict_across_agents() -> None:
    theirs = foreign("shop")
    mine = rendered(image_spec("store", domain="www.example.com", agent="edge"))
    assert mine.agent == EDGE_ID
    got = actions([mine], host(running(theirs), agents=(EDGE_ID,)))
    assert got["store"].action == "install"


def test_blocked_stays_blocked_without_churn_until_the_holder_goes() -> None:
    theirs, mine = foreign("shop"), web("store")
    state = host(running(theirs))
    first = plan([mine], state)
    again = plan([mine], fakehost.apply(first, [mine], state))
    assert first == again  # no retry storm: the same blocked action, nothing applied
    # The holder is uninstalled (its routes gone): now ours installs.
    gone = (
        theirs.agent,
        deployed_app(theirs).model_copy(update={"status": "uninstalled", "containers": []}),
    )
    assert actions([mine], host(gone))["store"].action == "install"


def test_a_holder_this_plan_uninstalls_frees_its_domain() -> None:
    old, new, keep = web("old-site"), web("new-site"), web("keep", domain="keep.example.com")
    got = actions([new, keep], host(running(old), running(keep)))
    assert got["old-site"].action == "uninstall"
    assert got["new-site"].action == "install"


def test_changing_to_a_domain_in_use_blocks_the_update_and_keeps_the_old_one() -> None:
    theirs = foreign("shop")
    before, after = web("store", domain="store.example.com"), web("store")
    got = actions([after], host(running(theirs), running(before)))
    assert got["store"].action == "blocked"
    assert "www.example.com is already in use" in got["store"].reason


def test_domain_change_is_an_update_with_a_domain_change() -> None:
    before, after = web("store", domain="old.example.com"), web("store")
    got = actions([after], host(running(before)))["store"]
    assert got.action == "update"
    fields = {c.field: c for c in got.changes}
    assert (fields["domain"].before, fields["domain"].after) == (
        "old.example.com",
        "www.example.com",
    )
    assert "routes" in fields
    assert fields["env"].keys == ["DOMAIN", "DOMAIN_URL"]


def test_a_second_domain_of_a_blocked_deployment_is_not_held_by_it() -> None:
    """Greedy by file order: a blocked deployment grants none of its domains."""
    theirs = foreign("shop", domain="a.example.com")
    first = web("first", domain="a.example.com")
    second = web("second", domain="a.example.com")
    got = actions([first, second], host(running(theirs)))
    assert got["first"].action == got["second"].action == "blocked"
    assert "by first" not in got["second"].reason


# --------------------------------------------------------------------- auto domains


def _repo(make_repo: RepoFactory, files: dict[str, str]) -> pathlib.Path:
    return make_repo({"reconcile.yaml": "namespace: shop\nbase_domain: example.test\n", **files})


def _render(root: pathlib.Path, actual: ActualState | None = None) -> dict[str, RenderedDeployment]:
    state = load_repository(root)
    assert state.ok, state.problems
    return {d.name: d for d in render_all(state, RenderContext(state.config), actual=actual)}


def test_auto_domain_is_stable_across_reconciles(make_repo: RepoFactory) -> None:
    root = _repo(make_repo, {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"})
    first = _render(root)["api"]
    assert first.domain == auto_domain("shop", "api", "example.test")
    assert first.domain is not None and first.domain.startswith("api-")
    again = _render(root, host(running(first)))["api"]
    assert again == first
    assert actions([again], host(running(first)), "shop")["api"].action == "noop"


def _holder(domain: str, name: str) -> DeployedApp:
    """Another namespace's app serving ``domain`` on the local agent."""
    d = foreign(name, domain=domain)
    return deployed_app(d)


def test_auto_domain_that_is_taken_moves_to_fresh_hex(make_repo: RepoFactory) -> None:
    root = _repo(make_repo, {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"})
    taken = auto_domain("shop", "api", "example.test", 0)
    state = host(("local", _holder(taken, "squatter")))
    api = _render(root, state)["api"]
    assert api.domain == auto_domain("shop", "api", "example.test", 1) != taken
    assert api.env["DOMAIN"] == api.domain
    assert [r.domain for r in api.routes] == [api.domain]
    assert actions([api], state, "shop")["api"].action == "install"
    # Once deployed at attempt 1 it keeps it, also after the clash has gone.
    assert _render(root, host(running(api)))["api"] == api


def test_auto_domain_gives_up_after_five_tries_and_is_blocked(make_repo: RepoFactory) -> None:
    root = _repo(make_repo, {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"})
    squatters = [
        ("local", _holder(auto_domain("shop", "api", "example.test", n), f"sq{n}"))
        for n in range(5)
    ]
    state = host(*squatters)
    api = _render(root, state)["api"]
    assert api.domain == auto_domain("shop", "api", "example.test", 0)
    got = actions([api], state, "shop")["api"]
    assert (got.action, got.reason) == (
        "blocked",
        f"domain {api.domain} is already in use; waiting until it is free",
    )
    # Four taken: the fifth try (attempt 4) is free.
    assert _render(root, host(*squatters[:4]))["api"].domain == auto_domain(
        "shop", "api", "example.test", 4
    )


def test_auto_domain_yields_to_an_explicit_one_in_the_same_repo(make_repo: RepoFactory) -> None:
    taken = auto_domain("shop", "api", "example.test", 0)
    root = _repo(
        make_repo,
        {
            "deployments/api.yaml": "name: api\nimage: busybox:1.36\n",
            "deployments/zzz.yaml": f"name: zzz\nimage: busybox:1.36\ndomain: {taken}\n",
        },
    )
    got = _render(root, host())
    assert got["zzz"].domain == taken
    assert got["api"].domain == auto_domain("shop", "api", "example.test", 1)
    p = actions(list(got.values()), host(), "shop")
    assert p["api"].action == p["zzz"].action == "install"


def test_a_deployed_auto_domain_is_kept_against_a_new_explicit_claim(
    make_repo: RepoFactory,
) -> None:
    root = _repo(make_repo, {"deployments/api.yaml": "name: api\nimage: busybox:1.36\n"})
    api = _render(root)["api"]
    (root / "deployments/zzz.yaml").write_text(
        f"name: zzz\nimage: busybox:1.36\ndomain: {api.domain}\n"
    )
    state = host(running(api))
    got = _render(root, state)
    assert got["api"] == api
    p = actions(list(got.values()), state, "shop")
    assert p["api"].action == "noop"
    assert p["zzz"].action == "blocked"
    assert f"domain {api.domain} is already in use by api" in p["zzz"].reason


def test_validate_warns_but_keeps_both(make_repo: RepoFactory) -> None:
    root = _repo(
        make_repo,
        {
            "deployments/blue.yaml": "name: blue\nimage: busybox:1.36\ndomain: w.example.com\n",
            "deployments/green.yaml": "name: green\nimage: busybox:1.36\ndomain: w.example.com\n",
        },
    )
    state = load_repository(root)
    assert state.ok
    assert [(p.file, p.rule, p.severity.value) for p in state.problems] == [
        ("deployments/green.yaml", "domain-duplicate", "warning")
    ]
    got = _render(root, host())
    p = actions(list(got.values()), host(), "shop")
    assert (p["blue"].action, p["green"].action) == ("install", "blocked")
