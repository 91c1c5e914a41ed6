"""Properties of plan(): convergence, order independence, no secret in any output,
determinism, and that another namespace is never touched.

Desired and actual states come from ``tests/plan/strategies.py`` (built in memory, all
five deployment kinds, older renders for updates, tombstones, failures, drift, moves,
removals, another namespace's apps); the host is ``tests/plan/fakehost.py``.
"""

from __future__ import annotations

import random
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.model.state import ActualState
from reconciler.plan import ACTION_KINDS, Plan, PlanOptions, plan, report
from tests.plan import fakehost
from tests.plan.strategies import SECRET_PREFIX, Scenario, reordered, scenarios

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan(
    s: Scenario,
    actual: ActualState | None = None,
    *,
    prune: bool = True,
    allow_mass_prune: bool = False,
) -> Plan:
    return plan(
        list(s.desired),
        s.actual if actual is None else actual,
        namespace=s.namespace,
        options=PlanOptions(prune=prune, allow_mass_prune=allow_mass_prune),
    )


def _show(p: Plan) -> str:
    return "\n".join(line for _, line in report.text_plan(p, verbose=True))


def _ours(s: Scenario, actual: ActualState) -> dict[tuple[str, str], str]:
    """(agent, id) -> status of every deployment of this namespace."""
    return {
        (agent, app.id): app.status
        for agent, state in actual.agents.items()
        for app in state.deployments.values()
        if app.namespace == s.namespace
    }


def _touches_foreign(s: Scenario, p: Plan) -> bool:
    return any((a.agent, a.id) in s.foreign for a in p.actions)


# ----------------------------------------------------------------------- convergence


@settings(FAST, max_examples=120)
@given(s=scenarios(), prune=st.booleans())
def test_plan_apply_plan_converges_to_noop(s: Scenario, prune: bool) -> None:
    """All agents online: applying the plan on a fake host and planning again is all noop,
    apart from deployments blocked by a domain another one serves (another namespace's
    app here): those stay blocked, with the same reason, and nothing else moves."""
    first = _plan(s, prune=prune, allow_mass_prune=True)
    after = fakehost.apply(first, s.desired, s.actual)
    second = _plan(s, after, prune=prune, allow_mass_prune=True)

    # Blocked by a domain in use (and a moved one's old copy, kept where it runs).
    held = {(a.id, a.agent): a.reason for a in first.actions if "is already in use" in a.reason}
    in_use = {i: r for (i, _), r in held.items() if r.startswith("domain ")}
    assert all(a.action == "blocked" for a in first.actions if (a.id, a.agent) in held)
    rest = [a for a in second.actions if a.action != "noop"]
    assert {(a.id, a.agent): a.reason for a in rest} == held, _show(second)
    assert all(a.action == "blocked" for a in rest), _show(second)
    assert sorted(a.id for a in second.actions if a.spec_hash) == sorted(d.id for d in s.desired)
    assert second.has_changes == bool(in_use)
    # Idempotent from here on: applying the second plan changes nothing.
    assert fakehost.apply(second, s.desired, after) == after
    # The holders keep serving: every blocked domain is still routed by someone running.
    for d in s.desired:
        if d.id in in_use:
            domain = in_use[d.id].split()[1]
            routed = {
                r.domain
                for app in after.agents[d.agent].deployments.values()
                if app.status != "uninstalled" and app.record and app.id != d.id
                for r in app.record.routes
            }
            assert domain in routed, in_use[d.id]

    # Every desired deployment runs where it is wanted, with the wanted spec.
    for d in s.desired:
        if d.id in in_use:
            continue
        app = after.agents[d.agent].deployments[d.id]
        assert (app.status, app.spec_hash) == ("running", d.spec_hash)
    # With prune on, nothing of ours runs that is not desired there.
    wanted = {(d.agent, d.id) for d in s.desired}
    leftovers = {k for k, status in _ours(s, after).items() if status != "uninstalled"} - wanted
    if prune:
        # A move blocked by a domain in use keeps its old copy running where it is.
        assert leftovers - {(agent, i) for i, agent in held} == set(), _show(first)
    else:
        assert {(a.agent, a.id) for a in second.actions if a.spec_hash is None} == leftovers

    # Another namespace's deployments are never named by a plan nor changed by applying it.
    assert not _touches_foreign(s, first)
    assert not _touches_foreign(s, second)
    for agent, dpl in s.foreign:
        assert after.agents[agent].deployments[dpl] == s.actual.agents[agent].deployments[dpl]


@settings(FAST, max_examples=60)
@given(s=scenarios(all_online=False), prune=st.booleans(), mass=st.booleans())
def test_offline_agents_and_other_namespaces_are_never_touched(
    s: Scenario, prune: bool, mass: bool
) -> None:
    """Every action aimed at an offline or unknown agent is blocked; no plan names a foreign
    app; a desired deployment that runs somewhere is never left running nowhere (a move to
    an agent that cannot install it keeps the old copy)."""
    p = _plan(s, prune=prune, allow_mass_prune=mass)
    assert not _touches_foreign(s, p)
    for a in p.actions:
        where = s.actual.agents.get(a.agent)
        if where is None:
            assert (a.action, a.reason.split(" (known: ")[0]) == (
                "blocked",
                f"agent {a.agent} is unknown",
            )
        elif not where.online:
            assert a.action == "blocked", a
            assert where.reason is not None
            assert where.reason in a.reason
    after = fakehost.apply(p, s.desired, s.actual)
    for agent, dpl in s.foreign:
        assert after.agents[agent].deployments[dpl] == s.actual.agents[agent].deployments[dpl]
    before, now = _ours(s, s.actual), _ours(s, after)
    for d in s.desired:
        was_up = any(k[1] == d.id and v != "uninstalled" for k, v in before.items())
        is_up = any(k[1] == d.id and v != "uninstalled" for k, v in now.items())
        assert is_up or not was_up, f"{d.name} left running nowhere:\n{_show(p)}"


# --------------------------------------------------------------- order independence


@settings(FAST, max_examples=80)
@given(s=scenarios(all_online=False), rnd=st.randoms(), prune=st.booleans(), mass=st.booleans())
def test_plan_is_independent_of_input_order(
    s: Scenario, rnd: random.Random, prune: bool, mass: bool
) -> None:
    reference = _plan(s, prune=prune, allow_mass_prune=mass)
    desired = list(s.desired)
    rnd.shuffle(desired)
    shuffled = plan(
        desired,
        reordered(s.actual, rnd),
        namespace=s.namespace,
        options=PlanOptions(prune=prune, allow_mass_prune=mass),
    )
    assert shuffled.model_dump() == reference.model_dump()
    assert report.json_plan(shuffled) == report.json_plan(reference)


# ----------------------------------------------------------------------- no secrets


@settings(FAST, max_examples=80)
@given(s=scenarios(all_online=False), prune=st.booleans(), mass=st.booleans())
def test_no_secret_value_in_any_output(s: Scenario, prune: bool, mass: bool) -> None:
    """No var value reaches the plan, in any format, updates with env changes included."""
    p = _plan(s, prune=prune, allow_mass_prune=mass)
    outputs = {
        "json": report.json_plan(p),
        "text": _show(p),
        "text (short)": "\n".join(line for _, line in report.text_plan(p)),
        "markdown": report.markdown_plan(p),
        "summary": report.summary_line(p),
        "model": repr(p.model_dump()),
    }
    for fmt, text in outputs.items():
        assert SECRET_PREFIX not in text, f"a var value leaked into the {fmt} plan"
        for value in s.secrets:
            assert value not in text
    # Env changes name keys only.
    for a in p.actions:
        for c in a.changes:
            if c.field == "env":
                assert c.keys
                assert all(re.fullmatch(r"[+-]?[A-Za-z_][A-Za-z0-9_]*", k) for k in c.keys)
                assert (c.before, c.after, c.detail) == (None, None, None)


# ---------------------------------------------------------------------- determinism


@settings(FAST, max_examples=40)
@given(s=scenarios(all_online=False), prune=st.booleans(), mass=st.booleans())
def test_plan_is_deterministic_and_self_consistent(s: Scenario, prune: bool, mass: bool) -> None:
    a = _plan(s, prune=prune, allow_mass_prune=mass)
    b = _plan(s, prune=prune, allow_mass_prune=mass)
    assert a == b
    assert report.json_plan(a) == report.json_plan(b)
    assert report.markdown_plan(a) == report.markdown_plan(b)
    # "held" appears only when something is held: plans without holds keep their old JSON
    assert list(a.summary) == [k for k in ACTION_KINDS if k != "held" or k in a.summary]
    for kind in ACTION_KINDS:
        assert a.summary.get(kind, 0) == len(a.bucket(kind))
    assert sum(a.summary.values()) == len(a.actions)
    assert a.has_changes == any(x.action not in ("noop", "held") for x in a.actions)
    keys = [(x.deployment, x.agent, ACTION_KINDS.index(x.action)) for x in a.actions]
    assert keys == sorted(keys)
    placed = {(d.agent, d.id) for d in s.desired}
    # At most one action per deployment and agent; every action says why.
    assert len({(x.id, x.agent) for x in a.actions}) == len(a.actions)
    for x in a.actions:
        assert x.reason
        assert bool(x.changes) == (x.action == "update")
        assert (x.spec_hash is None) == ((x.agent, x.id) not in placed)
    # Every desired deployment gets exactly one action on its own agent.
    assert sorted((x.id, x.agent) for x in a.actions if x.spec_hash) == sorted(
        (d.id, d.agent) for d in s.desired
    )
