"""Checking one manifest: schema, model, embedded compose, routing contract, policy.

Shared by the catalog (``catalog/<app>/<version>.yaml``) and by deployments that carry
their own manifest (inline, by path, or a compose file plus routes), so a manifest that
is accepted in one place is accepted in the other.
"""

from __future__ import annotations

import difflib
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.load.budget import Budget
from reconciler.load.embedded import load_embedded_yaml
from reconciler.load.rules.compose_policy import check_compose_policy
from reconciler.load.rules.routing import RoutedService, check_routing
from reconciler.load.schema import checked_model
from reconciler.load.yamlsafe import Document, Path
from reconciler.model.errors import InvalidSpec, Problem
from reconciler.model.manifest import Manifest, Route

__all__ = ["CheckedManifest", "check_compose", "check_manifest", "check_match_vars"]


@dataclass(frozen=True)
class CheckedManifest:
    manifest: Manifest | None
    compose: Document | None
    problems: list[Problem] = field(default_factory=list)
    routed: list[RoutedService] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not any(p.is_error for p in self.problems)


def check_manifest(
    doc: Document,
    *,
    at: Path = (),
    defaults: Mapping[str, str] | None = None,
    base_dir: pathlib.Path | None = None,
    allow_host_ports: bool = False,
    proxy_network: str = "impreza-proxy",
    budget: Budget | None = None,
) -> CheckedManifest:
    """Check the manifest found at ``at`` inside ``doc``.

    ``defaults`` fills ``name``/``version`` for inline manifests, which need neither.
    """
    data: Any = doc.data
    for key in at:
        data = data[key]
    if not isinstance(data, Mapping):
        return CheckedManifest(
            None, None, [doc.problem(at, "schema", "a manifest must be a mapping")]
        )
    if defaults:
        data = {**defaults, **data}
    manifest, problems = checked_model(
        doc, "manifest", lambda: Manifest.model_validate(data), data=data, base=at
    )
    if manifest is None:
        return CheckedManifest(None, None, problems)
    try:
        compose = load_embedded_yaml(
            manifest.runtime.compose_yaml, doc, (*at, "runtime", "compose_yaml"), budget
        )
    except InvalidSpec as exc:
        return CheckedManifest(manifest, None, exc.problems)
    routes_path = (*at, "network", "reverse_proxy", "routes")
    more, routed = check_compose(
        compose,
        manifest.routes,
        routes_doc=doc,
        routes_path=routes_path,
        base_dir=base_dir,
        allow_host_ports=allow_host_ports,
        proxy_network=proxy_network,
        budget=budget,
    )
    more += check_match_vars(
        manifest.routes, [v.name for v in manifest.vars], doc, routes_path, "`vars:`"
    )
    return CheckedManifest(manifest, compose, more, routed)


def check_match_vars(
    routes: Sequence[Route], declared: Sequence[str], doc: Document, at: Path, where: str
) -> list[Problem]:
    """Each route answers on the value of the var its ``match_var`` names (``domain``: the
    deployment's domain), so a name no var declares would leave the route without a host."""
    problems = []
    for i, route in enumerate(routes):
        name = route.match_var
        if name == "domain" or name in declared:
            continue
        close = [d for d in declared if d.lower() == name.lower()] or difflib.get_close_matches(
            name, declared, n=1
        )
        fix = (
            f"did you mean {close[0]!r}?"
            if close
            else f"declare `{name}` in {where}, or use `match_var: domain`"
        )
        problems.append(
            doc.problem(
                (*at, i, "match_var"),
                "route-match-var",
                f"route {i + 1} answers on var {name!r}, which {where} does not declare",
                fix,
                key=False,
            )
        )
    return problems


def check_compose(
    compose: Document,
    routes: Sequence[Route],
    *,
    routes_doc: Document,
    routes_path: Path,
    base_dir: pathlib.Path | None,
    allow_host_ports: bool,
    proxy_network: str,
    budget: Budget | None = None,
) -> tuple[list[Problem], list[RoutedService]]:
    """The routing contract and the compose policy for one compose document."""
    route_problems, routed = check_routing(
        compose, routes, routes_doc=routes_doc, routes_path=routes_path, proxy_network=proxy_network
    )
    problems = check_compose_policy(
        compose,
        base_dir=base_dir,
        allow_host_ports=allow_host_ports,
        routed_services=frozenset(r.service for r in routed),
        budget=budget,
    )
    if any(p.rule == "compose-invalid" for p in problems):
        return problems, []
    return route_problems + problems, routed
