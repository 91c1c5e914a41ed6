"""The routing contract: checked when the files are read, never discovered at runtime.

A route's ``upstream`` is ``<container name>:<port>`` with ``{deployment_id}`` filled in at
deploy time; the proxy reaches it by that DNS name on the shared proxy network.  So the
serving service must be named ``container_name: ${DEPLOYMENT_ID}-<suffix>`` (whatever
shape the upstream uses), join the proxy network, and the file must declare that network
``external: true``.  Each violation says exactly which line to add.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.load.yamlsafe import Document, Path
from reconciler.model.errors import Problem
from reconciler.model.manifest import Route

__all__ = ["RoutedService", "check_routing", "container_pattern"]

PLACEHOLDER = "{deployment_id}"
_ID_VAR = re.compile(r"\$\{DEPLOYMENT_ID\}|\$DEPLOYMENT_ID\b")


@dataclass(frozen=True)
class RoutedService:
    service: str
    container: str  # the upstream host with the placeholder, e.g. "{deployment_id}-app"
    port: int


def container_pattern(container_name: str) -> str:
    """``${DEPLOYMENT_ID}-app`` -> ``{deployment_id}-app``: the upstream host it serves."""
    return _ID_VAR.sub(PLACEHOLDER, container_name)


def check_routing(
    compose: Document,
    routes: Sequence[Route],
    *,
    routes_doc: Document,
    routes_path: Path,
    proxy_network: str = "impreza-proxy",
) -> tuple[list[Problem], list[RoutedService]]:
    """Problems with the routes, and the services that serve them (for later rules)."""
    services = compose.data.get("services") if isinstance(compose.data, Mapping) else None
    if not routes or not isinstance(services, Mapping):
        return [], []
    problems: list[Problem] = []
    routed: list[RoutedService] = []
    by_container = {
        container_pattern(str(spec["container_name"])): name
        for name, spec in services.items()
        if isinstance(spec, Mapping) and spec.get("container_name") is not None
    }
    for i, route in enumerate(routes):
        where = (*routes_path, i, "upstream")
        upstream = route.upstream
        host, sep, port_s = upstream.rpartition(":")
        if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536 or not host:
            problems.append(
                routes_doc.problem(
                    where,
                    "route-no-port",
                    f"route upstream {upstream!r} has no port",
                    f"write it as '{upstream or PLACEHOLDER + '-app'}:80' "
                    "(the port the container listens on)",
                    key=False,
                )
            )
            continue
        if PLACEHOLDER not in host:
            problems.append(
                routes_doc.problem(
                    where,
                    "route-upstream-id",
                    f"route upstream {upstream!r} does not contain {PLACEHOLDER}",
                    f"name the container per deployment, e.g. '{PLACEHOLDER}-app:{port_s}', "
                    "so two deployments of the same app never collide",
                    key=False,
                )
            )
            continue
        wanted = host.replace(PLACEHOLDER, "${DEPLOYMENT_ID}")
        service = by_container.get(host)
        if service is None:
            problems.append(_no_container(compose, services, upstream, host, wanted))
            continue
        routed.append(RoutedService(service, host, int(port_s)))
        problem = _network_problem(compose, services, service, proxy_network)
        if problem:
            problems.append(problem)
    if routed:
        problems.extend(_declared_network_problems(compose, proxy_network))
    return problems, routed


def _no_container(
    compose: Document,
    services: Mapping[str, Any],
    upstream: str,
    host: str,
    wanted: str,
) -> Problem:
    suffix = host.replace(PLACEHOLDER, "").strip("-_.")
    names = list(services)
    if suffix in services:
        target = suffix
    elif len(names) == 1:
        target = names[0]
    else:
        named = [
            n for n in names if isinstance(services[n], Mapping) and "container_name" in services[n]
        ]
        target = named[0] if len(named) == 1 else names[0]
    spec = services[target] if isinstance(services[target], Mapping) else {}
    current = spec.get("container_name")
    if current is not None:
        return compose.problem(
            ("services", target, "container_name"),
            "route-prefix-mismatch",
            f"route upstream {upstream!r} does not match container_name {current!r} "
            f"of service {target!r}",
            f"set `container_name: {wanted}` on service {target!r}, or change the upstream "
            f"to '{container_pattern(str(current))}:{upstream.rpartition(':')[2]}'",
        )
    return compose.problem(
        ("services", target),
        "route-no-container",
        f"route upstream {upstream!r} has no container",
        f"add `container_name: {wanted}` to service {target!r}",
    )


def _network_problem(
    compose: Document, services: Mapping[str, Any], service: str, proxy_network: str
) -> Problem | None:
    spec = services[service]
    if spec.get("network_mode") is not None:
        return compose.problem(
            ("services", service, "network_mode"),
            "route-not-on-network",
            f"service {service!r} serves a route but sets network_mode, so it cannot join "
            f"{proxy_network!r}",
            f"remove `network_mode` and add `networks: [default, {proxy_network}]`",
        )
    networks = spec.get("networks")
    joined: list[str] = []
    if isinstance(networks, (Mapping, list)):
        joined = [str(n) for n in networks]
    if proxy_network in joined:
        return None
    if networks is None:
        return compose.problem(
            ("services", service),
            "route-not-on-network",
            f"service {service!r} serves a route but is not on the {proxy_network!r} network",
            f"add `networks: [default, {proxy_network}]` to service {service!r}",
        )
    return compose.problem(
        ("services", service, "networks"),
        "route-not-on-network",
        f"service {service!r} serves a route but is not on the {proxy_network!r} network",
        f"add `{proxy_network}` to the networks of service {service!r}",
    )


def _declared_network_problems(compose: Document, proxy_network: str) -> list[Problem]:
    declared = compose.data.get("networks")
    spec = declared.get(proxy_network) if isinstance(declared, Mapping) else None
    if not isinstance(declared, Mapping) or proxy_network not in declared:
        at: Path = ("networks",) if isinstance(declared, Mapping) else ()
        return [
            compose.problem(
                at,
                "route-network-undeclared",
                f"the proxy network {proxy_network!r} is not declared",
                f"add `networks: {{{proxy_network}: {{external: true}}}}` at the top level",
            )
        ]
    external = spec.get("external") if isinstance(spec, Mapping) else None
    if external is True or (isinstance(external, Mapping) and external):
        return []
    return [
        compose.problem(
            ("networks", proxy_network),
            "route-network-not-external",
            f"the proxy network {proxy_network!r} is not declared `external: true`",
            f"set `external: true` under networks.{proxy_network} (the reconciler creates it "
            "once per host; a project-local network would cut the app off from the proxy)",
        )
    ]
