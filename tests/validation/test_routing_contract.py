"""The routing contract: every route finds its container, on the proxy network."""

from __future__ import annotations

from reconciler.load.rules.routing import check_routing, container_pattern
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.manifest import Route

GOOD = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    networks: [default, impreza-proxy]
networks:
  impreza-proxy:
    external: true
"""


def run(compose: str, *upstreams: str, network: str = "impreza-proxy"):
    doc = load_yaml(compose, "deployments/blog/compose.yaml")
    routes_doc = load_yaml(
        "routes:\n" + "".join(f"  - upstream: '{u}'\n" for u in upstreams),
        "deployments/blog/deployment.yaml",
    )
    return check_routing(
        doc,
        [Route(upstream=u) for u in upstreams],
        routes_doc=routes_doc,
        routes_path=("routes",),
        proxy_network=network,
    )


def test_contract_honoured() -> None:
    problems, routed = run(GOOD, "{deployment_id}-app:80")
    assert problems == []
    assert [(r.service, r.container, r.port) for r in routed] == [
        ("app", "{deployment_id}-app", 80)
    ]


def test_missing_container_name_gives_the_exact_line_to_add() -> None:
    compose = GOOD.replace("    container_name: ${DEPLOYMENT_ID}-app\n", "")
    # services: / app: -- the service key is line 2 here
    (problem,), routed = run(compose, "{deployment_id}-app:80")
    assert routed == []
    assert problem.rule == "route-no-container"
    assert problem.render() == (
        "deployments/blog/compose.yaml:2:3: route upstream '{deployment_id}-app:80' has no "
        "container: add `container_name: ${DEPLOYMENT_ID}-app` to service 'app'"
    )


def test_design_example_position() -> None:
    compose = "# blog\nservices:\n  app:\n    image: busybox:1.36\n"
    (problem, *_), _ = run(compose, "{deployment_id}-app:80")
    assert problem.location() == "deployments/blog/compose.yaml:3:3"


def test_target_service_chosen_by_suffix() -> None:
    compose = "services:\n  db:\n    image: postgres:16\n  web:\n    image: nginx:1.27\n"
    (problem,), _ = run(compose, "{deployment_id}-web:8080")
    assert "to service 'web'" in (problem.fix or "")
    assert problem.line == 4


def test_prefix_mismatch_names_both_shapes() -> None:
    compose = GOOD.replace("-app", "-vw").replace("  app:", "  vw:")
    (problem,), _ = run(compose, "vw_{deployment_id}:80")
    assert problem.rule == "route-prefix-mismatch"
    assert "container_name '${DEPLOYMENT_ID}-vw'" in problem.message
    assert "set `container_name: vw_${DEPLOYMENT_ID}`" in (problem.fix or "")
    assert "'{deployment_id}-vw:80'" in (problem.fix or "")
    assert problem.line == 4  # the container_name line


def test_static_container_name_is_a_mismatch() -> None:
    compose = GOOD.replace("${DEPLOYMENT_ID}-app", "myapp")
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-prefix-mismatch"


def test_upstream_without_port() -> None:
    (problem,), _ = run(GOOD, "{deployment_id}-app")
    assert problem.rule == "route-no-port"
    assert problem.file == "deployments/blog/deployment.yaml"
    assert problem.line == 2
    assert "'{deployment_id}-app:80'" in (problem.fix or "")


def test_upstream_without_placeholder() -> None:
    (problem,), _ = run(GOOD, "app:80")
    assert problem.rule == "route-upstream-id"


def test_service_not_on_proxy_network() -> None:
    compose = GOOD.replace("    networks: [default, impreza-proxy]\n", "")
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-not-on-network"
    assert problem.fix == "add `networks: [default, impreza-proxy]` to service 'app'"


def test_service_on_other_networks_only() -> None:
    compose = GOOD.replace("[default, impreza-proxy]", "[default]")
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-not-on-network"
    assert problem.line == 5


def test_network_mapping_form_accepted() -> None:
    compose = GOOD.replace(
        "[default, impreza-proxy]", "{default: {}, impreza-proxy: {aliases: [x]}}"
    )
    problems, _ = run(compose, "{deployment_id}-app:80")
    assert problems == []


def test_proxy_network_not_external() -> None:
    compose = GOOD.replace("    external: true\n", "    driver: bridge\n")
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-network-not-external"
    assert problem.line == 7
    assert "external: true" in (problem.fix or "")


def test_proxy_network_undeclared() -> None:
    compose = GOOD.split("networks:\n  impreza")[0]
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-network-undeclared"
    assert "networks: {impreza-proxy: {external: true}}" in (problem.fix or "")


def test_custom_proxy_network_name() -> None:
    compose = GOOD.replace("impreza-proxy", "edge")
    problems, _ = run(compose, "{deployment_id}-app:80", network="edge")
    assert problems == []
    problems, _ = run(compose, "{deployment_id}-app:80")
    assert {p.rule for p in problems} == {"route-not-on-network", "route-network-undeclared"}


def test_network_mode_cannot_serve_a_route() -> None:
    compose = GOOD.replace("    networks: [default, impreza-proxy]\n", "    network_mode: bridge\n")
    (problem,), _ = run(compose, "{deployment_id}-app:80")
    assert problem.rule == "route-not-on-network"
    assert "network_mode" in problem.message


def test_container_pattern_accepts_both_variable_spellings() -> None:
    assert container_pattern("${DEPLOYMENT_ID}-app") == "{deployment_id}-app"
    assert container_pattern("vw_$DEPLOYMENT_ID") == "vw_{deployment_id}"


def test_no_routes_no_problems() -> None:
    problems, routed = run("services:\n  app:\n    image: x:1\n")
    assert problems == []
    assert routed == []
