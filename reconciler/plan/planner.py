"""plan(desired, actual) -> Plan.  Pure, deterministic, independent of input order.

Modelled on Nomad's node reconciler: compare what should run with what runs, sort each
deployment into one bucket, and say why.  No Docker, no network, no clock in here.

Identity is the ``dpl_`` id (namespace + name).  Only deployments of this namespace are
ever considered for prune; anything the actual state reports from another namespace, or
without our labels (it never gets into the actual state), is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from reconciler.model.state import (
    ActualState,
    AgentState,
    ContainerState,
    DeployedApp,
    Hold,
    RouteRecord,
    SpecRecord,
)
from reconciler.plan.model import ACTION_KINDS, Action, Change, Plan
from reconciler.render import RenderedDeployment, spec_record
from reconciler.render.domains import held_domains, wanted_domains
from reconciler.render.model import networks_created

__all__ = [
    "NETWORK_POOLS_HINT",
    "PlanOptions",
    "diff_records",
    "domain_conflicts",
    "drift",
    "held_reason",
    "network_shortage",
    "plan",
]

#: How to raise a host's network capacity: the hint every capacity block carries.
NETWORK_POOLS_HINT = (
    "give dockerd more, smaller subnets with `default-address-pools` in "
    '/etc/docker/daemon.json (e.g. [{"base": "172.17.0.0/16", "size": 24}] holds 256 '
    "networks) and restart it; scripts/setup.sh does this for the dockerd it starts"
)


class PlanOptions:
    """Knobs of one planning run (kept tiny; every field has the safe default)."""

    __slots__ = ("allow_mass_prune", "max_prune_share", "prune")

    def __init__(
        self, *, prune: bool = True, allow_mass_prune: bool = False, max_prune_share: float = 0.5
    ) -> None:
        self.prune = prune
        self.allow_mass_prune = allow_mass_prune
        self.max_prune_share = max_prune_share


def plan(
    desired: Sequence[RenderedDeployment],
    actual: ActualState,
    *,
    namespace: str = "default",
    options: PlanOptions | None = None,
    unresolved: Mapping[str, str] | None = None,
) -> Plan:
    """``unresolved``: deployments that cannot be planned (by name, with the reason, e.g.
    a ``git_ref`` that could not be resolved); they are ``blocked``, never guessed at.

    A deployment that wants a domain another one serves on its agent (or that an earlier
    file wants) is ``blocked`` too, the holder untouched (see :func:`domain_conflicts`).
    So is an install past the number of networks its agent's Docker daemon can still
    create (see :func:`network_shortage`).  Blocking one can keep a moved deployment's
    old copy running where it is, and so keep its domains held there: hence the loop,
    until the blocked set stops growing (it only grows, so at most one round per
    deployment; normally one).
    """
    opts = options or PlanOptions()
    conflicts: dict[str, str] = {}
    while True:
        actions = _plan_once(desired, actual, namespace, opts, unresolved, conflicts)
        found = {
            **network_shortage(actual, actions, desired),
            **domain_conflicts(desired, actual, actions),
        }
        if found.keys() <= conflicts.keys():
            break
        conflicts = {**found, **conflicts}
    actions.sort(key=lambda a: (a.deployment, a.agent, ACTION_KINDS.index(a.action)))
    # "held" is counted only when there is one: plans without holds keep their JSON as it was.
    summary: dict[str, int] = dict.fromkeys((k for k in ACTION_KINDS if k != "held"), 0)
    for a in actions:
        summary[a.action] = summary.get(a.action, 0) + 1
    return Plan(namespace=namespace, against=actual.source, actions=actions, summary=summary)


def _plan_once(
    desired: Sequence[RenderedDeployment],
    actual: ActualState,
    namespace: str,
    opts: PlanOptions,
    unresolved: Mapping[str, str] | None,
    conflicts: Mapping[str, str],
) -> list[Action]:
    actions: list[Action] = []
    desired_ids = {d.id for d in desired}
    for want in sorted(desired, key=lambda d: (d.name, d.id)):
        if want.id in conflicts:
            actions.append(_blocked_by(want, conflicts[want.id], spec_hash=want.spec_hash))
            continue
        if unresolved and want.name in unresolved:
            # no spec hash: with its git ref unresolved, what would run is not known
            actions.append(_blocked_by(want, unresolved[want.name]))
            continue
        agent = actual.agents.get(want.agent)
        actions.extend(_for_desired(want, agent, actual))

    # Deployments running on some agent that are not desired there.
    placed = {(d.agent, d.id) for d in desired}
    target = {d.id: d.agent for d in desired}
    # A moved deployment whose new placement cannot be acted on now keeps running where it
    # is: uninstalling the old copy first would leave it running nowhere.
    stuck = {a.id: a.reason for a in actions if a.action == "blocked"}
    prunes: list[Action] = []
    kept: list[Action] = []
    running_here: dict[str, int] = {}
    for agent_name in sorted(actual.agents):
        agent = actual.agents[agent_name]
        for app in sorted(agent.deployments.values(), key=lambda a: (a.name, a.id)):
            if app.namespace != namespace or app.status == "uninstalled":
                continue
            running_here[agent_name] = running_here.get(agent_name, 0) + 1
            if (agent_name, app.id) in placed:
                continue
            moved = app.id in desired_ids
            reason = (
                "moved to another agent; data kept here"
                if moved
                else "no longer in the repository; data kept until purged"
            )
            action = Action(
                action="uninstall", deployment=app.name, id=app.id, agent=agent_name, reason=reason
            )
            if not agent.online:
                kept.append(_blocked(action, agent))
            elif moved and app.id in stuck:
                kept.append(
                    action.model_copy(
                        update={
                            "action": "blocked",
                            "reason": f"moved to {target[app.id]}, which cannot install it yet "
                            f"({stuck[app.id]}); kept running here until it can",
                        }
                    )
                )
            elif not opts.prune and not moved:
                kept.append(
                    action.model_copy(
                        update={
                            "action": "noop",
                            "reason": "not in the repository; kept because prune is off",
                        }
                    )
                )
            else:
                prunes.append(action)

    actions.extend(_mass_prune_guard(prunes, running_here, namespace, opts))
    actions.extend(kept)
    return actions


def _mass_prune_guard(
    prunes: list[Action], running: Mapping[str, int], namespace: str, opts: PlanOptions
) -> list[Action]:
    """Refuse, per agent, to uninstall everything of this namespace there or more than
    ``max_prune_share`` of it (moves excepted: their copy runs on elsewhere).

    Per agent, not per fleet: the reports of one agent (a host that lost its state, or a
    rogue agent reporting a hundred deployments) must not hold back prunes on the others,
    and a mistake that empties one host (an ``agents:`` alias pointing at the wrong id)
    must not pass because the fleet is large.  The plan is of one namespace, and only its
    deployments are counted, so the guard is per namespace too.
    """
    if opts.allow_mass_prune:
        return prunes
    pure: dict[str, list[Action]] = {}
    for a in prunes:
        if not a.reason.startswith("moved"):
            pure.setdefault(a.agent, []).append(a)
    refused: dict[tuple[str, str], Action] = {}
    for agent, group in pure.items():
        total = running[agent]
        if len(group) > opts.max_prune_share * total or len(group) == total:
            reason = (
                f"mass prune refused: would uninstall {len(group)} of {total} running "
                f"deployments of namespace {namespace!r} on agent {agent} "
                f"(limit {opts.max_prune_share:.0%}); pass --allow-mass-prune if intended"
            )
            for a in group:
                refused[(a.agent, a.id)] = a.model_copy(
                    update={"action": "blocked", "reason": reason}
                )
    return [refused.get((a.agent, a.id), a) for a in prunes]


def domain_conflicts(
    desired: Sequence[RenderedDeployment], actual: ActualState, actions: Sequence[Action]
) -> dict[str, str]:
    """Desired deployment id -> why it is blocked: a domain it routes is someone else's.

    Per online agent (one proxy each), a domain belongs first to whatever serves it
    there now -- any namespace, per the apps' records -- unless this plan uninstalls
    that app; then to the first desired deployment by file path.  A deployment that
    already serves a domain is never blocked for it.  The reason is neutral and names
    no deployment of another namespace.
    """
    releasing = {(a.agent, a.id) for a in actions if a.action == "uninstall"}
    blocked = {(a.agent, a.id) for a in actions if a.action == "blocked"}
    by_agent: dict[str, list[RenderedDeployment]] = {}  # one pass, not one per agent
    for d in desired:
        if (d.agent, d.id) not in blocked:
            by_agent.setdefault(d.agent, []).append(d)
    out: dict[str, str] = {}
    for agent_name in sorted(actual.agents):
        agent = actual.agents[agent_name]
        if not agent.online:
            continue
        holders: dict[str, set[str]] = {}
        names: dict[str, DeployedApp] = {}
        for app in agent.deployments.values():
            if (agent_name, app.id) in releasing:
                continue
            names[app.id] = app
            for domain in held_domains(app):
                holders.setdefault(domain, set()).add(app.id)
        granted: dict[str, RenderedDeployment] = {}
        here = by_agent.get(agent_name, [])
        for want in sorted(here, key=lambda d: (d.file, d.name, d.id)):
            reason = None
            for domain in sorted(wanted_domains(want)):
                held = holders.get(domain, set())
                if want.id in held:
                    continue
                if held:
                    owner = names[min(held)]
                    by = f" by {owner.name}" if owner.namespace == want.namespace else ""
                elif domain in granted and granted[domain].id != want.id:
                    by = f" by {granted[domain].name}"
                else:
                    continue
                reason = f"domain {domain} is already in use{by}; waiting until it is free"
                break
            if reason is not None:
                out[want.id] = reason
                continue
            for domain in wanted_domains(want):
                granted.setdefault(domain, want)
    return out


def network_shortage(
    actual: ActualState, actions: Sequence[Action], desired: Sequence[RenderedDeployment]
) -> dict[str, str]:
    """Desired deployment id -> why it is blocked: its agent's Docker daemon has no
    network left for it.

    Each install makes a compose project, and each project makes the networks its
    services join that are not external (usually one, ``default``) from the daemon's
    ``default-address-pools``; uninstalls in the same plan run first and give theirs back
    (one each, the usual case).  Installs are granted in name order while what they need
    fits in what the agent reported (``free_networks``), the rest are blocked, so the plan
    says it instead of the 30th ``up`` failing.  Updates and repairs keep the networks
    they have.  An agent that did not report the figure (an older one) blocks nothing.
    """
    out: dict[str, str] = {}
    by_id = {(d.agent, d.id): d for d in desired}
    by_agent: dict[str, list[Action]] = {}  # one pass, not one per agent
    for action in actions:
        by_agent.setdefault(action.agent, []).append(action)
    for agent_name in sorted(actual.agents):
        agent = actual.agents[agent_name]
        if agent.free_networks is None or not agent.online:
            continue
        here = by_agent.get(agent_name, [])
        room = agent.free_networks + sum(1 for a in here if a.action == "uninstall")
        installs = sorted(
            (a for a in here if a.action == "install"), key=lambda a: (a.deployment, a.id)
        )
        if len(installs) <= room:
            continue  # one network each fits: no need to read the compose files
        needs = {a.id: _networks_needed(by_id.get((agent_name, a.id))) for a in installs}
        total = sum(needs.values())
        left = room
        for a in installs:
            if needs[a.id] <= left:
                left -= needs[a.id]
                continue
            out[a.id] = (
                f"no network left: the Docker daemon of agent {agent_name} can create "
                f"{max(room, 0)} more network(s) from its default-address-pools and this "
                f"plan's installs need {total}; {NETWORK_POOLS_HINT}"
            )
    return out


def _networks_needed(want: RenderedDeployment | None) -> int:
    return 1 if want is None else networks_created(want)


def _blocked_by(want: RenderedDeployment, reason: str, *, spec_hash: str | None = None) -> Action:
    return Action(
        action="blocked",
        deployment=want.name,
        id=want.id,
        agent=want.agent,
        reason=reason,
        spec_hash=spec_hash,
        url=want.url,
    )


def _blocked(action: Action, agent: AgentState) -> Action:
    why = agent.reason or "offline"
    return action.model_copy(
        update={
            "action": "blocked",
            "reason": f"agent {agent.agent} is {why}; will {action.action} when it is back",
        }
    )


def _for_desired(
    want: RenderedDeployment, agent: AgentState | None, actual: ActualState
) -> Iterable[Action]:
    base = {
        "deployment": want.name,
        "id": want.id,
        "agent": want.agent,
        "spec_hash": want.spec_hash,
        "url": want.url,
    }
    if agent is None:
        known = ", ".join(sorted(actual.agents)) or "none"
        yield Action(
            action="blocked", reason=f"agent {want.agent} is unknown (known: {known})", **base
        )
        return
    if not agent.online:
        yield Action(
            action="blocked", reason=f"agent {want.agent} is {agent.reason or 'offline'}", **base
        )
        return
    have = agent.deployments.get(want.id)
    applied = have is not None and have.status != "uninstalled" and have.spec_hash == want.spec_hash
    too_big = None if applied else _memory_too_big(want, agent)
    if too_big is not None:
        yield Action(action="blocked", reason=too_big, **base)
        return
    if have is None or have.status == "uninstalled":
        reason = "new deployment" if have is None else "reinstall (data kept from before)"
        routes = list(dict.fromkeys(r.domain for r in want.routes))
        yield Action(action="install", reason=reason, routes=routes, **base)
        return
    if have.held is not None and have.held.spec_hash == want.spec_hash:
        # Git has not changed it since the rollback: leave the rolled-back release running.
        yield Action(action="held", reason=held_reason(have.name, have.held), **base)
        return
    if have.spec_hash != want.spec_hash:
        changes = diff_records(have.record, spec_record(want))
        what = ", ".join(sorted({c.field for c in changes})) or "spec"
        yield Action(action="update", reason=f"changed: {what}", changes=changes, **base)
        return
    if have.status == "failed":
        yield Action(action="repair", reason="the last apply failed", **base)
        return
    problems = drift(want, have)
    if problems:
        yield Action(action="repair", reason="; ".join(problems), **base)
        return
    yield Action(action="noop", reason="up to date", **base)


def held_reason(name: str, hold: Hold) -> str:
    """Why a held deployment is left alone, and the two ways out."""
    return (
        f"held: rolled back by hand to release {hold.release} at {hold.at}; "
        f"released by the next change of its file in git, or by "
        f"`reconcile rollback --release {name}`"
    )


def _memory_too_big(want: RenderedDeployment, agent: AgentState) -> str | None:
    """Why ``want`` cannot run on ``agent``: its memory limit is more than the host has.

    Docker would start it (a limit above the total is no limit at all), so the plan says
    so instead of deploying something that cannot get what it asks for.  What runs
    already is left alone; an unknown total (an older agent) blocks nothing.
    """
    needed = want.resources.get("memory_mb")
    total = agent.total_memory_mb
    if total is None or not isinstance(needed, int | float) or needed <= total:
        return None
    return (
        f"memory_mb {needed:g} is more than the {total} MB of memory agent {agent.agent} "
        "has in total; lower memory_mb, or place it on a larger host"
    )


def drift(want: RenderedDeployment, have: DeployedApp) -> list[str]:
    """What is wrong with the running containers of an unchanged deployment."""
    out: list[str] = []
    by_service: dict[str, list[ContainerState]] = {}
    # Sorted: the order an observer lists containers in is arbitrary, the reason is not.
    for c in sorted(have.containers, key=_container_key):
        by_service.setdefault(c.service, []).append(c)
    for service in want.services:
        containers = by_service.get(service, [])
        one_shot = service in want.one_shot
        if not containers:
            if not one_shot:
                out.append(f"service {service}: container missing")
            continue
        for c in containers:
            if c.status == "exited" and one_shot and c.exit_code == 0:
                continue
            if c.status in ("exited", "dead", "missing", "created"):
                code = f" (exit {c.exit_code})" if c.exit_code is not None else ""
                out.append(f"service {service}: container {c.status}{code}")
            elif c.status == "restarting":
                out.append(f"service {service}: restarting ({c.restarts} restarts)")
            elif c.health == "unhealthy":
                out.append(f"service {service}: unhealthy")
    out.extend(
        f"var {key}: its value in the host's environment changed since the deploy"
        for key in have.stale_env
    )
    return out


def _container_key(c: ContainerState) -> tuple[str, str, str, str, int, int]:
    code = -1 if c.exit_code is None else c.exit_code
    return (c.service, c.name, c.status, c.health, c.restarts, code)


def diff_records(before: SpecRecord | None, after: SpecRecord) -> list[Change]:
    """The changes between two spec records, for the plan's ``~ update`` lines."""
    if before is None:
        return [Change(field="spec", detail="spec hash differs (no record of the running spec)")]
    out: list[Change] = []
    for service in sorted(set(before.images) | set(after.images)):
        b, a = before.images.get(service), after.images.get(service)
        if b != a:
            out.append(
                Change(
                    field="image",
                    before=b,
                    after=a,
                    detail=f"{service}: {b or '(none)'} -> {a or '(none)'}",
                )
            )
    if before.source_revision != after.source_revision:
        out.append(
            Change(
                field="source_revision",
                before=_short(before.source_revision),
                after=_short(after.source_revision),
            )
        )
    env_keys = sorted(
        k for k in set(before.env) | set(after.env) if before.env.get(k) != after.env.get(k)
    )
    if env_keys:
        tags = [
            f"+{k}" if k not in before.env else f"-{k}" if k not in after.env else k
            for k in env_keys
        ]
        out.append(Change(field="env", keys=tags))
    if before.domain != after.domain:
        out.append(Change(field="domain", before=before.domain, after=after.domain))
    if before.routes != after.routes:
        out.append(
            Change(field="routes", before=_routes(before.routes), after=_routes(after.routes))
        )
    if before.onion != after.onion:
        out.append(
            Change(field="onion", before=str(before.onion).lower(), after=str(after.onion).lower())
        )
    if before.resources != after.resources:
        out.append(
            Change(
                field="resources",
                before=_resources(before.resources),
                after=_resources(after.resources),
            )
        )
    image_changed = any(c.field == "image" for c in out)
    if before.compose_digest != after.compose_digest and not image_changed:
        out.append(Change(field="compose", detail="compose file changed"))
    if not out:
        out.append(Change(field="spec", detail="spec hash differs"))
    return out


def _routes(routes: Sequence[RouteRecord]) -> str | None:
    # Not "domain -> upstream": the change itself reads "before -> after".
    return ", ".join(f"{r.domain} ({r.upstream})" for r in routes) or None


def _resources(resources: dict[str, float | int | None]) -> str | None:
    return ", ".join(f"{k}={v}" for k, v in sorted(resources.items())) or None


def _short(rev: str | None) -> str | None:
    return rev[:12] if rev else None
