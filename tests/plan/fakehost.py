"""An in-memory host: applies a Plan to an ActualState the way an executor would.

Pure: ``apply(plan, desired, actual)`` returns a new ActualState and never mutates its
inputs.  What each action does:

- install / update / repair: the agent now runs the desired deployment: its spec hash,
  the secret-free ``spec_record``, one running container per service (a one-shot
  ``restart: "no"`` service has run and exited 0), status ``running``;
- uninstall: a tombstone (status ``uninstalled``, containers gone, data and record kept);
- noop / blocked: nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.model.state import (
    ActualState,
    AgentState,
    ContainerState,
    DeployedApp,
    SpecRecord,
)
from reconciler.plan import Plan
from reconciler.render import RenderedDeployment, spec_record

__all__ = ["apply", "containers_for", "deployed_app"]


def containers_for(d: RenderedDeployment) -> list[ContainerState]:
    """The containers a healthy host shows for ``d``: every service up, one-shots done."""
    out = []
    for service in d.services:
        one_shot = service in d.one_shot
        out.append(
            ContainerState(
                service=service,
                name=f"{d.id}-{service}-1",
                status="exited" if one_shot else "running",
                exit_code=0 if one_shot else None,
                one_shot=one_shot,
            )
        )
    return out


_RECORDS: dict[tuple[str, str], SpecRecord] = {}


def _record(d: RenderedDeployment) -> SpecRecord:
    # spec_record parses the compose YAML; the spec hash names its content, so memoise.
    key = (d.id, d.spec_hash)
    if key not in _RECORDS:
        _RECORDS[key] = spec_record(d)
    return _RECORDS[key]


def deployed_app(d: RenderedDeployment) -> DeployedApp:
    """What an agent reports after a successful install/update/repair of ``d``."""
    return DeployedApp(
        id=d.id,
        name=d.name,
        namespace=d.namespace,
        spec_hash=d.spec_hash,
        status="running",
        services=list(d.services),
        containers=containers_for(d),
        record=_record(d),
    )


def apply(plan: Plan, desired: Sequence[RenderedDeployment], actual: ActualState) -> ActualState:
    by_key = {(d.agent, d.id): d for d in desired}
    agents = {name: dict(agent.deployments) for name, agent in actual.agents.items()}
    for action in plan.actions:
        if action.action in ("install", "update", "repair"):
            want = by_key[(action.agent, action.id)]
            assert want.spec_hash == action.spec_hash, action
            assert action.agent in agents, f"{action.action} on an agent not in the state"
            agents[action.agent][action.id] = deployed_app(want)
        elif action.action == "uninstall":
            have = agents[action.agent][action.id]
            assert have.status != "uninstalled", action
            agents[action.agent][action.id] = have.model_copy(
                update={"status": "uninstalled", "containers": []}
            )
        else:
            assert action.action in ("noop", "blocked"), action
    return ActualState(
        source=actual.source,
        agents={
            name: AgentState(
                agent=agent.agent,
                online=agent.online,
                reason=agent.reason,
                deployments=agents[name],
            )
            for name, agent in actual.agents.items()
        },
    )
