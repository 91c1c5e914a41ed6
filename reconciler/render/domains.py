"""Who may serve which domain on an agent: the rules shared by rendering and planning.

A domain routes to one deployment per agent (one proxy per host).  When two want the
same one, the one that already serves it keeps it -- read from the actual state, every
namespace on that agent counts -- else the first by deployment file path.  An explicit
``domain:`` that loses is ``blocked`` by the planner until the conflict goes; an auto
domain (``<name>-<6 hex>.<base>``) that loses moves to fresh hex instead (attempts 1..4,
see :func:`reconciler.model.ids.auto_domain`), before rendering, so the chosen domain is
in the spec hash and the plan.  An auto domain already deployed at some attempt keeps
that attempt, so it is stable across reconciles without any stored counter.

Pure: values in, values out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.model.ids import auto_domain
from reconciler.model.state import ActualState, DeployedApp
from reconciler.render.model import RenderedDeployment

__all__ = [
    "AUTO_DOMAIN_ATTEMPTS",
    "AutoDomain",
    "choose_attempts",
    "held_domains",
    "wanted_domains",
]

AUTO_DOMAIN_ATTEMPTS = 5  # attempt 0, then 1..4 with fresh hex


def held_domains(app: DeployedApp) -> set[str]:
    """The domains an app routes now, per its record (nothing when only labels were seen,
    or once it is uninstalled: its routes are gone then).  A domain without a route (an
    app that routes nothing) claims nothing: the proxy is where two would collide."""
    if app.status == "uninstalled" or app.record is None:
        return set()
    return {r.domain.lower() for r in app.record.routes}


def wanted_domains(d: RenderedDeployment) -> set[str]:
    """The domains a rendered deployment routes."""
    return {r.domain.lower() for r in d.routes}


@dataclass(frozen=True)
class AutoDomain:
    """A deployment whose domain is automatic: what it needs to pick an attempt."""

    id: str
    name: str
    namespace: str
    agent: str
    base_domain: str
    file: str

    def domain(self, attempt: int) -> str:
        return auto_domain(self.namespace, self.name, self.base_domain, attempt)


def choose_attempts(
    autos: Sequence[AutoDomain],
    others: Iterable[RenderedDeployment],
    actual: ActualState | None,
) -> dict[str, int]:
    """name -> attempt for every auto-domain deployment that must not use attempt 0.

    ``others``: the rest of the desired set (explicit domains), which an auto domain
    yields to unless it is the one already deployed there.  Deterministic: autos are
    taken in file order, each seeing the choices of those before it.
    """
    taken: dict[str, dict[str, str]] = {}  # agent -> domain -> holder id

    def take(agent: str, domains: Iterable[str], holder: str) -> None:
        slot = taken.setdefault(agent, {})
        for d in domains:
            slot.setdefault(d, holder)

    deployed: dict[tuple[str, str], DeployedApp] = {}
    if actual is not None:
        for agent_name, agent in actual.agents.items():
            for app in agent.deployments.values():
                deployed[(agent_name, app.id)] = app
                take(agent_name, held_domains(app), app.id)
    for d in sorted(others, key=lambda o: (o.file, o.name)):
        take(d.agent, wanted_domains(d), d.id)

    out: dict[str, int] = {}
    for a in sorted(autos, key=lambda x: (x.file, x.name)):
        slot = taken.setdefault(a.agent, {})
        candidates = [a.domain(n) for n in range(AUTO_DOMAIN_ATTEMPTS)]
        mine = held_domains(deployed[(a.agent, a.id)]) if (a.agent, a.id) in deployed else set()
        kept = next((n for n, c in enumerate(candidates) if c in mine), None)
        if kept is not None and slot.get(candidates[kept]) in (None, a.id):
            chosen = kept  # already serving it: stable, whoever else wants it now
        else:
            chosen = next(
                (n for n, c in enumerate(candidates) if slot.get(c) in (None, a.id)), 0
            )  # all five taken: attempt 0, and the planner blocks it with the reason
        slot[candidates[chosen]] = a.id
        if chosen:
            out[a.name] = chosen
    return out
