"""Checking one manifest: schema, model, embedded compose, routing contract, policy.

Shared by the catalog (``catalog/<app>/<version>.yaml``) and by deployments that carry
their own manifest (inline, by path, or a compose file plus routes), so a manifest that
is accepted in one place is accepted in the other.
"""

from __future__ import annotations

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

__all__ = ["CheckedManifest", "check_compose", "check_manifest"]


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
    more, routed = check_compose(
        compose,
        manifest.routes,
        routes_doc=doc,
        routes_path=(*at, "network", "reverse_proxy", "routes"),
        base_dir=base_dir,
        allow_host_ports=allow_host_ports,
        proxy_network=proxy_network,
        budget=budget,
    )
    return CheckedManifest(manifest, compose, more, routed)


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
