"""plan() by example: every action kind with its reason, the changes an update lists,
drift, blocked agents, and the prune safety rules."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reconciler.model.state import ActualState, AgentState, DeployedApp
from reconciler.plan import Action, Change, Plan, PlanOptions, diff_records, drift, plan, report
from reconciler.render import RenderedDeployment, spec_record
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import (
    BARE_ID,
    EDGE_ID,
    OTHER_NAMESPACE,
    Spec,
    config_for,
    drifted,
    image_spec,
    rendered,
)

SECRET = "SECRET-0123456789ab"
SECRET2 = "SECRET-ba9876543210"


def catalog_spec(name: str, version: str = "1.0.0", vars: dict[str, str] | None = None) -> Spec:
    body = {"app": "demo", "version": version}
    return Spec(name=name, kind="catalog", body=body, vars=vars or {})


def git_spec(name: str, sha: str) -> Spec:
    body = {"git_url": f"file:///srv/git/{name}.git", "git_ref": "main"}
    return Spec(name=name, kind="git", body=body, git_sha=sha)


def host(
    *apps: tuple[str, DeployedApp], offline: tuple[str, ...] = (), agents: tuple[str, ...] = ()
) -> ActualState:
    """An actual state: (agent, app) pairs; ``agents`` adds agents that run nothing."""
    names = {"local", *agents, *offline, *(a for a, _ in apps)}
    return ActualState(
        source="test",
        agents={
            a: AgentState(
                agent=a,
                online=a not in offline,
                reason="offline (last seen 10 minutes ago)" if a in offline else None,
                deployments={app.id: app for agent, app in apps if agent == a},
            )
            for a in sorted(names)
        },
    )


def on(d: RenderedDeployment, **update: object) -> tuple[str, DeployedApp]:
    """``d`` as its agent runs it after a good apply (optionally changed)."""
    return d.agent, deployed_app(d).model_copy(update=update)


def run(
    desired: list[RenderedDeployment],
    actual: ActualState,
    *,
    namespace: str = "default",
    prune: bool = True,
    allow_mass_prune: bool = False,
    max_prune_share: float = 0.5,
    unresolved: dict[str, str] | None = None,
) -> dict[tuple[str, str], Action]:
    """The plan's actions by (deployment, agent); at most one each."""
    options = PlanOptions(
        prune=prune, allow_mass_prune=allow_mass_prune, max_prune_share=max_prune_share
    )
    p = plan(desired, actual, namespace=namespace, options=options, unresolved=unresolved)
    out = {(a.deployment, a.agent): a for a in p.actions}
    assert len(out) == len(p.actions)
    return out


def one(
    desired: list[RenderedDeployment], actual: ActualState, unresolved: dict[str, str] | None = None
) -> Action:
    actions = run(desired, actual, unresolved=unresolved)
    assert len(actions) == 1, actions
    return next(iter(actions.values()))


def update_changes(new: Spec, old: Spec) -> list[Change]:
    a = one([rendered(new)], host(on(rendered(old))))
    assert a.action == "update"
    assert a.reason == "changed: " + ", ".join(sorted({c.field for c in a.changes}))
    return a.changes


def by_field(changes: list[Change]) -> dict[str, Change]:
    out: dict[str, Change] = {c.field: c for c in changes}
    assert len(out) == len(changes), changes
    return out


# ------------------------------------------------------------------ the simple kinds


def test_new_deployment_is_installed() -> None:
    d = rendered(image_spec("api"))
    a = one([d], ActualState.empty(["local"]))
    assert (a.action, a.reason, a.agent, a.id) == ("install", "new deployment", "local", d.id)
    assert a.spec_hash == d.spec_hash
    assert a.url == d.env["DOMAIN_URL"]
    assert a.changes == []


def test_unchanged_healthy_deployment_is_noop() -> None:
    d = rendered(image_spec("api"))
    a = one([d], host(on(d)))
    assert (a.action, a.reason) == ("noop", "up to date")


def test_empty_desired_against_empty_host_is_an_empty_plan() -> None:
    p = plan([], ActualState.empty(["local"]))
    assert p.actions == []
    assert not p.has_changes
    assert report.summary_line(p) == "No changes. 0 deployments up to date."


# ------------------------------------------------------------------- update changes


def test_var_value_change_names_the_key_not_the_value() -> None:
    changes = update_changes(
        catalog_spec("vault", vars={"K1": SECRET}), catalog_spec("vault", vars={"K1": SECRET2})
    )
    assert changes == [Change(field="env", keys=["K1"])]
    assert changes[0].describe() == "env: K1"


def test_added_and_removed_vars_are_marked() -> None:
    changes = update_changes(
        catalog_spec("vault", vars={"K1": SECRET, "K3": "new"}),
        catalog_spec("vault", vars={"K1": SECRET, "K4": "gone"}),
    )
    assert changes == [Change(field="env", keys=["+K3", "-K4"])]


def test_secret_values_of_changed_vars_appear_in_no_format() -> None:
    new = rendered(catalog_spec("vault", vars={"K1": SECRET, "K3": "x" + SECRET}))
    old = rendered(catalog_spec("vault", vars={"K1": SECRET2, "K2": SECRET2}))
    p = plan([new], host(on(old)))
    assert p.actions[0].action == "update"
    outputs = [
        report.json_plan(p),
        report.markdown_plan(p),
        "\n".join(line for _, line in report.text_plan(p, verbose=True)),
    ]
    for out in outputs:
        assert "SECRET-" not in out
    assert "env: K1, -K2, +K3" in outputs[2]


def test_image_change_names_service_and_both_images() -> None:
    changes = update_changes(image_spec("api", "busybox:1.37"), image_spec("api", "busybox:1.36"))
    # The compose file differs only by the image: that is said once, as the image.
    assert changes == [
        Change(
            field="image",
            before="busybox:1.36",
            after="busybox:1.37",
            detail="app: busybox:1.36 -> busybox:1.37",
        )
    ]


def test_catalog_version_bump_lists_every_service_image() -> None:
    changes = update_changes(
        catalog_spec("vault", version="1.1.0"), catalog_spec("vault", version="1.0.0")
    )
    assert [c.describe() for c in changes] == [
        "image: app: busybox:1.36 -> busybox:1.37",
        "image: migrate: busybox:1.36 -> busybox:1.37",
    ]


def test_domain_change_lists_domain_and_routes() -> None:
    changes = by_field(
        update_changes(
            image_spec("api", domain="api.example.com"),
            image_spec("api", domain="old.example.com"),
        )
    )
    assert changes["domain"].before == "old.example.com"
    assert changes["domain"].after == "api.example.com"
    upstream = rendered(image_spec("api")).routes[0].upstream
    assert changes["routes"].describe() == (
        f"routes: old.example.com ({upstream}) -> api.example.com ({upstream})"
    )
    # DOMAIN / DOMAIN_URL are env keys too: named, never shown.
    assert changes["env"].keys == ["DOMAIN", "DOMAIN_URL"]
    assert set(changes) == {"domain", "routes", "env"}


def test_onion_toggle() -> None:
    changes = update_changes(
        image_spec("api", domain="api.example.com", onion=True),
        image_spec("api", domain="api.example.com"),
    )
    assert changes == [Change(field="onion", before="false", after="true")]


def test_cpus_change_is_a_resources_change() -> None:
    changes = by_field(
        update_changes(image_spec("api", body={"cpus": 1.0}), image_spec("api", body={"cpus": 0.5}))
    )
    assert changes["resources"].describe() == (
        "resources: cpus=0.5, memory_mb=512 -> cpus=1.0, memory_mb=512"
    )
    assert set(changes) <= {"resources", "compose"}


def test_git_sha_change_is_a_source_revision_change() -> None:
    a, b = "a" * 40, "b" * 40
    changes = by_field(update_changes(git_spec("bot", b), git_spec("bot", a)))
    assert changes["source_revision"] == Change(
        field="source_revision", before="a" * 12, after="b" * 12
    )


def test_running_spec_known_only_by_labels_is_a_spec_change() -> None:
    new, old = rendered(image_spec("api", "busybox:1.37")), rendered(image_spec("api"))
    a = one([new], host(on(old, record=None)))
    assert a.action == "update"
    assert a.changes == [
        Change(field="spec", detail="spec hash differs (no record of the running spec)")
    ]
    assert a.reason == "changed: spec"


def test_diff_records_of_equal_records_still_explains() -> None:
    record = spec_record(rendered(image_spec("api")))
    assert diff_records(record, record) == [Change(field="spec", detail="spec hash differs")]


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("missing", "service app: container missing"),
        ("exited", "service app: container exited (exit 137)"),
        ("restarting", "service app: restarting (7 restarts)"),
        ("unhealthy", "service app: unhealthy"),
        ("created", "service app: container created"),
        ("one_shot_failed", "service migrate: container exited (exit 1)"),
    ],
)
def test_drift_is_repaired_with_what_was_seen(how: str, reason: str) -> None:
    d = rendered(catalog_spec("vault"))
    agent, app = on(d)
    a = one([d], host((agent, drifted(app, how))))
    assert (a.action, a.reason) == ("repair", reason)
    assert a.spec_hash == d.spec_hash


def test_one_shot_service_that_exited_zero_is_fine() -> None:
    d = rendered(catalog_spec("vault"))
    assert d.one_shot == ("migrate",)
    agent, app = on(d)
    migrate = next(c for c in app.containers if c.service == "migrate")
    assert (migrate.status, migrate.exit_code) == ("exited", 0)
    assert one([d], host((agent, app))).action == "noop"
    # ...and one already removed after its run is not "missing" either.
    assert one([d], host((agent, drifted(app, "one_shot_missing")))).action == "noop"


def test_drift_reasons_do_not_depend_on_container_order() -> None:
    d = rendered(image_spec("api"))
    app = drifted(deployed_app(d), "scaled_one_exited")
    backwards = app.model_copy(update={"containers": app.containers[::-1]})
    assert drift(d, app) == drift(d, backwards)
    assert len(drift(d, app)) == 2


def test_failed_last_apply_is_repaired() -> None:
    d = rendered(image_spec("api"))
    a = one([d], host(on(d, status="failed")))
    assert (a.action, a.reason) == ("repair", "the last apply failed")


def test_failed_apply_of_an_older_spec_is_an_update() -> None:
    new, old = rendered(image_spec("api", "busybox:1.37")), rendered(image_spec("api"))
    assert one([new], host(on(old, status="failed"))).action == "update"


# ------------------------------------------------------------------------- blocked


def test_unknown_agent_is_blocked_naming_the_known_ones() -> None:
    d = rendered(image_spec("api", agent=BARE_ID))
    a = one([d], host(agents=(EDGE_ID,)))
    assert a.action == "blocked"
    assert a.reason == f"agent {BARE_ID} is unknown (known: {EDGE_ID}, local)"


def test_alias_resolves_to_the_agent_id() -> None:
    d = rendered(image_spec("api", agent="edge"))
    assert d.agent == EDGE_ID
    assert one([d], host(agents=(EDGE_ID,))).action == "install"


def test_offline_agent_blocks_installs_and_uninstalls_there() -> None:
    keep = rendered(image_spec("api", agent="edge"))
    gone = rendered(image_spec("old", agent="edge"))
    other = [rendered(image_spec(n)) for n in ("app1", "app2", "app3")]
    actual = host(on(keep), on(gone), *map(on, other), offline=(EDGE_ID,))
    actions = run([*other, keep], actual)
    api, old = actions[("api", EDGE_ID)], actions[("old", EDGE_ID)]
    assert (api.action, old.action) == ("blocked", "blocked")
    assert api.reason == f"agent {EDGE_ID} is offline (last seen 10 minutes ago)"
    assert old.reason == (
        f"agent {EDGE_ID} is offline (last seen 10 minutes ago); will uninstall when it is back"
    )
    assert all(actions[(d.name, "local")].action == "noop" for d in other)


def test_unresolved_deployment_is_blocked_with_its_reason() -> None:
    d = rendered(git_spec("bot", "c" * 40))
    why = "cannot resolve git_ref 'main': remote has no such ref"
    a = one([d], host(on(d)), unresolved={"bot": why})
    assert (a.action, a.reason) == ("blocked", why)


# --------------------------------------------------------------------------- prune


def _fleet(*names: str) -> list[RenderedDeployment]:
    return [rendered(image_spec(n)) for n in names]


def test_removed_deployment_is_uninstalled_keeping_data() -> None:
    a1, a2, a3 = _fleet("app1", "app2", "app3")
    actions = run([a1, a2], host(on(a1), on(a2), on(a3)))
    gone = actions[("app3", "local")]
    assert gone.action == "uninstall"
    assert gone.reason == "no longer in the repository; data kept until purged"
    assert gone.spec_hash is None
    assert gone.id == a3.id


def test_prune_off_keeps_removed_deployments() -> None:
    a1, a2 = _fleet("app1", "app2")
    p = plan([a1], host(on(a1), on(a2)), options=PlanOptions(prune=False))
    kept = p.actions[1]
    assert (kept.deployment, kept.action) == ("app2", "noop")
    assert kept.reason == "not in the repository; kept because prune is off"
    assert not p.has_changes


def test_mass_prune_is_refused_without_the_flag() -> None:
    fleet = _fleet("app1", "app2", "app3", "app4")
    actual = host(*map(on, fleet))
    actions = run(fleet[:1], actual)
    refused = [actions[(d.name, "local")] for d in fleet[1:]]
    assert [a.action for a in refused] == ["blocked"] * 3
    for a in refused:
        assert "mass prune refused: would uninstall 3 of 4 running deployments" in a.reason
        assert "--allow-mass-prune" in a.reason
    allowed = run(fleet[:1], actual, allow_mass_prune=True)
    assert [allowed[(d.name, "local")].action for d in fleet[1:]] == ["uninstall"] * 3


def test_max_prune_share_sets_the_limit() -> None:
    fleet = _fleet("app1", "app2", "app3", "app4")
    actual = host(*map(on, fleet))
    assert {a.action for a in run(fleet[:1], actual, max_prune_share=0.75).values()} == {
        "noop",
        "uninstall",
    }
    assert {a.action for a in run(fleet[:3], actual, max_prune_share=0.0).values()} == {
        "noop",
        "blocked",
    }


def test_half_is_not_a_mass_prune() -> None:
    fleet = _fleet("app1", "app2", "app3", "app4")
    actions = run(fleet[:2], host(*map(on, fleet)))
    assert [actions[(d.name, "local")].action for d in fleet[2:]] == ["uninstall"] * 2


@pytest.mark.parametrize("count", [1, 2])
def test_removing_everything_is_refused(count: int) -> None:
    fleet = _fleet(*(f"app{i}" for i in range(count)))
    actions = run([], host(*map(on, fleet)), max_prune_share=1.0)
    assert [a.action for a in actions.values()] == ["blocked"] * count
    assert all("--allow-mass-prune" in a.reason for a in actions.values())
    assert {a.action for a in run([], host(*map(on, fleet)), allow_mass_prune=True).values()} == {
        "uninstall"
    }


def test_moved_deployment_is_installed_on_the_new_agent_and_removed_from_the_old() -> None:
    here = rendered(image_spec("api"))
    there = rendered(image_spec("api", agent="edge"))
    assert here.id == there.id
    # The only deployment moving is not "removing everything": no mass-prune guard.
    actions = run([there], host(on(here), agents=(EDGE_ID,)))
    assert actions[("api", EDGE_ID)].action == "install"
    old = actions[("api", "local")]
    assert (old.action, old.reason) == ("uninstall", "moved to another agent; data kept here")


def test_moved_deployment_also_moves_with_prune_off() -> None:
    here, there = rendered(image_spec("api")), rendered(image_spec("api", agent="edge"))
    actions = run([there], host(on(here), agents=(EDGE_ID,)), prune=False)
    assert actions[("api", "local")].action == "uninstall"


@pytest.mark.parametrize("why", ["offline", "unknown", "unresolved"])
def test_move_to_an_agent_that_cannot_install_keeps_the_old_copy(why: str) -> None:
    """Uninstalling the old copy while the new one is blocked would run it nowhere."""
    here = rendered(image_spec("api"))
    there = rendered(image_spec("api", agent="edge"))
    actual = host(
        on(here),
        offline=(EDGE_ID,) if why == "offline" else (),
        agents=(EDGE_ID,) if why == "unresolved" else (),
    )
    unresolved = {"api": "cannot resolve git_ref"} if why == "unresolved" else None
    actions = run([there], actual, unresolved=unresolved, allow_mass_prune=True)
    assert actions[("api", EDGE_ID)].action == "blocked"
    old = actions[("api", "local")]
    assert old.action == "blocked"
    assert old.reason.startswith(f"moved to {EDGE_ID}, which cannot install it yet (")
    assert old.reason.endswith("); kept running here until it can")


def test_tombstone_desired_again_is_reinstalled() -> None:
    d = rendered(image_spec("api"))
    a = one([d], host(on(d, status="uninstalled", containers=[])))
    assert (a.action, a.reason) == ("install", "reinstall (data kept from before)")


def test_tombstone_not_desired_is_left_alone() -> None:
    a1, a2 = _fleet("app1", "app2")
    actions = run([a1], host(on(a1), on(a2, status="uninstalled", containers=[])))
    assert list(actions) == [("app1", "local")]


def test_other_namespace_is_never_pruned_nor_counted() -> None:
    mine = rendered(image_spec("api"))
    theirs = [rendered(image_spec(n), config_for(OTHER_NAMESPACE)) for n in ("api", "dbs", "cache")]
    actual = host(on(mine), *map(on, theirs))
    actions = run([], actual, allow_mass_prune=True)
    assert list(actions) == [("api", "local")]
    assert actions[("api", "local")].id == mine.id
    # Their apps do not count as "running" for the mass-prune share either.
    refused = run([], actual)[("api", "local")]
    assert "1 of 1" in refused.reason
    # Planning their namespace sees only theirs.
    other = run([], actual, namespace=OTHER_NAMESPACE, allow_mass_prune=True)
    assert sorted(a.id for a in other.values()) == sorted(t.id for t in theirs)


def test_apps_of_this_namespace_on_several_agents() -> None:
    a = rendered(image_spec("api"))
    b = rendered(image_spec("web", agent="edge"))
    c = rendered(image_spec("cron", agent="edge"))
    actions = run([a, b], host(on(a), on(b), on(c)))
    assert actions[("cron", EDGE_ID)].action == "uninstall"
    assert {k: v.action for k, v in actions.items() if k[0] != "cron"} == {
        ("api", "local"): "noop",
        ("web", EDGE_ID): "noop",
    }


# --------------------------------------------------------------------- plan shape


def test_actions_sorted_and_summary_counts_buckets() -> None:
    a, b, c = _fleet("b-app", "a-app", "c-app")
    d = rendered(image_spec("d-app", "busybox:1.37"))
    d_old = rendered(image_spec("d-app"))
    p = plan([c, a, d], host(on(b), on(c, status="failed"), on(d_old)))
    assert [(x.deployment, x.action) for x in p.actions] == [
        ("a-app", "uninstall"),
        ("b-app", "install"),
        ("c-app", "repair"),
        ("d-app", "update"),
    ]
    assert p.summary == {
        "install": 1,
        "update": 1,
        "uninstall": 1,
        "repair": 1,
        "noop": 0,
        "blocked": 0,
    }
    assert p.against == "test"


def test_json_plan_matches_the_documented_shape() -> None:
    d = rendered(image_spec("api", "busybox:1.37"))
    p = plan([d], host(on(rendered(image_spec("api")))))
    doc = json.loads(report.json_plan(p))
    assert doc["format_version"] == 1
    assert set(doc) >= {"format_version", "actions", "summary"}
    (action,) = doc["actions"]
    assert {k: action[k] for k in ("action", "deployment", "id", "agent")} == {
        "action": "update",
        "deployment": "api",
        "id": d.id,
        "agent": "local",
    }
    assert action["reason"] == "changed: image"
    assert action["changes"][0]["field"] == "image"
    assert Plan.model_validate(doc) == p


def test_markdown_escapes_table_cells() -> None:
    d = rendered(image_spec("api"))
    p = plan([d], host(on(d)), unresolved={"api": "ref a|b is ambiguous\nsee docs"})
    md = report.markdown_plan(p)
    assert "| ✗ | `api` | blocked | `local` | ref a\\|b is ambiguous see docs |" in md


def test_text_plan_symbols() -> None:
    keep, fix, old, gone = _fleet("keep", "fix", "old", "gone")
    new = rendered(image_spec("new"))
    old_v2 = rendered(replace(image_spec("old"), body={"image": "busybox:1.37"}))
    p = plan(
        [keep, fix, new, old_v2],
        host(on(keep), on(fix, status="failed"), on(old), on(gone)),
        options=PlanOptions(),
    )
    lines = [line for _, line in report.text_plan(p)]
    heads = [line.split()[:3] for line in lines if not line.startswith("      ")]
    assert heads == [
        ["!", "fix", "repair"],
        ["-", "gone", "uninstall"],
        ["+", "new", "install"],
        ["~", "old", "update"],
    ]
    assert "      ~ image: app: busybox:1.36 -> busybox:1.37" in lines
    verbose = [line for _, line in report.text_plan(p, verbose=True)]
    assert any(line.split()[:3] == ["=", "keep", "noop"] for line in verbose)
