"""The JSON Schemas users' editors see and the pydantic models the code uses agree.

Both judge the same documents -- a hand-written corpus of edge cases plus documents
hypothesis assembles from valid and invalid field values -- and must give one verdict.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from reconciler.load.schema import _registry, schema
from reconciler.model.deployment import RepoConfig, parse_deployment
from reconciler.model.manifest import Manifest


def schema_ok(name: str, doc: Any) -> bool:
    return Draft202012Validator(schema(name), registry=_registry()).is_valid(doc)


def model_ok(name: str, doc: Any) -> bool:
    try:
        if name == "deployment":
            parse_deployment(doc)
        elif name == "manifest":
            Manifest.model_validate(doc)
        else:
            RepoConfig.model_validate(doc)
    except ValidationError:
        return False
    return True


def assert_agree(name: str, doc: Any) -> None:
    assert schema_ok(name, doc) == model_ok(name, doc), (name, doc)


COMPOSE = "services:\n  app:\n    image: busybox:1.36\n"

DEPLOYMENTS: list[tuple[dict[str, Any], bool]] = [
    ({"name": "vault", "app": "vaultwarden"}, True),
    ({"name": "vault", "app": "vaultwarden", "version": "1.32.0", "agent": "edge"}, True),
    ({"name": "vault", "app": "vaultwarden", "agent_id": "agt_0123456789abcdef"}, True),
    ({"name": "vault", "app": "vaultwarden", "agent": "local", "agent_id": "local"}, False),
    ({"name": "api", "image": "busybox:1.36", "cpus": 0.5, "memory_mb": 64}, True),
    ({"name": "api", "image": "busybox:1.36", "cpus": 0}, False),
    ({"name": "api", "image": "busybox:1.36", "cpus": 1}, True),
    ({"name": "api", "image": "busybox:1.36", "memory_mb": 1.5}, False),
    ({"name": "api", "image": "busybox:1.36", "target_port": 70000}, False),
    ({"name": "api", "image": "busybox 1.36"}, False),
    ({"name": "site", "build": {"context": "."}}, True),
    ({"name": "site", "build": {"context": ".", "dockerfile": "D"}, "dockerfile_path": "x"}, True),
    ({"name": "site", "build": {"dockerfile": "D"}}, False),
    ({"name": "site", "build": "."}, False),
    ({"name": "bot", "git_url": "https://example.com/a.git", "git_ref": "v1"}, True),
    ({"name": "bot", "git_url": "file:///srv/a.git"}, True),
    ({"name": "bot", "git_url": "http://example.com/a.git"}, False),
    ({"name": "bot", "git_url": "https://example.com/a.git", "git_ref": "--upload-pack=x"}, False),
    ({"name": "blog", "compose": "./compose.yaml", "routes": [{"upstream": "a:80"}]}, True),
    ({"name": "blog", "compose": "./compose.yaml"}, True),
    ({"name": "blog", "manifest": "./m.yaml"}, True),
    ({"name": "blog", "manifest": {"runtime": {}}}, True),  # shape checked as a manifest later
    ({"name": "blog", "manifest": "./m.yaml", "compose": "./c.yaml"}, False),
    ({"name": "blog", "manifest": "./m.yaml", "routes": []}, False),
    ({"name": "blog", "routes": []}, False),
    ({"name": "x", "app": "a"}, False),
    ({"name": "Vault", "app": "vaultwarden"}, False),
    ({"name": "vault-", "app": "vaultwarden"}, False),
    ({"app": "vaultwarden"}, False),
    ({"name": "vault", "app": "vaultwarden", "image": "x:1"}, False),
    ({"name": "vault", "app": "vaultwarden", "cpus": 1}, False),
    ({"name": "vault", "app": "vaultwarden", "domain": "vault.example.com"}, True),
    ({"name": "vault", "app": "vaultwarden", "domain": "Vault.Example.com"}, False),
    ({"name": "vault", "app": "vaultwarden", "domain": "a" * 254}, False),
    ({"name": "vault", "app": "vaultwarden", "onion": True}, True),
    ({"name": "vault", "app": "vaultwarden", "onion": "yes"}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"A": 1, "B": "x", "C": True}}, True),
    ({"name": "vault", "app": "vaultwarden", "vars": {"A": {"from_env": "A_SECRET"}}}, True),
    ({"name": "vault", "app": "vaultwarden", "vars": {"A": {"from_file": "x"}}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"A": None}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"A": [1]}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"1A": 1}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"COMPOSE_FILE": "x"}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"DOCKER_HOST": "x"}}, False),
    ({"name": "vault", "app": "vaultwarden", "vars": {"DOMAIN": "x"}}, False),
    ({"name": "vault", "app": "vaultwarden", "agent": "agt_123"}, True),  # an alias shape
    ({"name": "vault", "app": "vaultwarden", "agent": "Edge"}, False),
    # Impreza's bodies: catalog synonyms, the custom-deploy `mode`
    ({"name": "vault", "app_name": "vaultwarden", "app_version": "1.32.0"}, True),
    ({"name": "vault", "app": "vaultwarden", "app_version": "1.32.0"}, True),
    ({"name": "vault", "app_name": "vaultwarden", "version": "1.32.0"}, True),
    ({"name": "vault", "app": "vaultwarden", "app_name": "vaultwarden"}, False),
    ({"name": "vault", "app_name": "vaultwarden", "version": "1", "app_version": "1"}, False),
    ({"name": "vault", "app_name": "Vault"}, False),
    ({"name": "vault", "app_name": "vaultwarden", "mode": "image"}, False),
    ({"name": "api", "mode": "image", "image": "busybox:1.36"}, True),
    ({"name": "api", "mode": "dockerfile", "image": "busybox:1.36"}, False),
    ({"name": "site", "mode": "dockerfile", "build": {"context": "."}}, True),
    ({"name": "bot", "mode": "dockerfile", "git_url": "https://example.com/a.git"}, True),
    ({"name": "bot", "mode": "image", "git_url": "https://example.com/a.git"}, False),
    ({"name": "blog", "mode": "manifest", "manifest": "./m.yaml"}, True),
    ({"name": "blog", "mode": "compose", "compose": "./c.yaml"}, False),
    ({"name": "bot", "git_url": "git@github.com:owner/repo.git"}, True),
    ({"name": "bot", "git_url": "git@github.com:-oProxyCommand=x"}, False),
    ({"name": "bot", "git_url": "-x@github.com:owner/repo.git"}, False),
    ({"name": "bot", "git_url": "github.com:owner/repo.git"}, False),
    ({"name": "bot", "git_url": "file:///r.git", "git_auth_method": "deploy_key"}, True),
    ({"name": "bot", "git_url": "file:///r.git", "git_auth_method": "token"}, False),
    ({"name": "api", "image": "busybox:1.36", "git_auth_method": "none"}, False),
    ("not a mapping", False),  # type: ignore[list-item]
]

MANIFESTS: list[tuple[dict[str, Any], bool]] = [
    (
        {
            "name": "hello",
            "version": "1.0",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1.0",
            "runtime": {"type": "compose", "compose_yaml": COMPOSE},
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1.0",
            "runtime": {"type": "docker-compose", "compose_yaml": ""},
        },
        False,
    ),
    ({"name": "hello", "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE}}, False),
    (
        {
            "name": "hello",
            "version": 1,
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"name": "TOKEN", "secret": True, "generate": "hex:32"}],
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"name": "admin_password", "env": "ADMIN_TOKEN"}],
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"name": "admin_password", "env": "ADMIN-TOKEN"}],
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"name": "TOKEN", "generate": "sha:32"}],
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"name": "TOKEN", "default": None}],
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "vars": [{"description": "x"}],
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "network": {
                "reverse_proxy": {
                    "enabled": True,
                    "routes": [{"upstream": "{deployment_id}-app:80"}],
                }
            },
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "network": {"reverse_proxy": {"routes": [{"match_var": "domain"}]}},
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "lifecycle": {"install": "echo hi", "health": {"run": "true", "timeout": 5}},
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "lifecycle": {"install": {"run": "x", "timeout": 0}},
        },
        False,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "requirements": {"memory_mb": 256, "cpus": 0.5},
        },
        True,
    ),
    (
        {
            "name": "hello",
            "version": "1",
            "runtime": {"type": "docker-compose", "compose_yaml": COMPOSE},
            "extra": 1,
        },
        False,
    ),
]

REPO_CONFIGS: list[tuple[dict[str, Any], bool]] = [
    ({}, True),
    ({"namespace": "prod", "base_domain": "apps.example.com", "prune": False}, True),
    ({"proxy": {"tls": False}}, True),
    ({"proxy": {"tls": "off", "http_port": 8080}}, True),
    ({"proxy": {"tls": True}}, False),
    ({"proxy": {"tls": "maybe"}}, False),
    ({"agents": {"edge": "agt_0123456789abcdef"}}, True),
    ({"agents": {"edge": "agt_xyz"}}, False),
    ({"agents": {"Edge": "agt_0123456789abcdef"}}, False),
    ({"max_prune_share": 1.5}, False),
    ({"policy": {"allow_host_ports": ["mail"]}}, True),
    ({"namespace": "Prod"}, False),
    ({"unknown": 1}, False),
]


@pytest.mark.parametrize(("doc", "valid"), DEPLOYMENTS)
def test_deployment_corpus(doc: dict[str, Any], valid: bool) -> None:
    assert schema_ok("deployment", doc) is valid
    assert model_ok("deployment", doc) is valid


@pytest.mark.parametrize(("doc", "valid"), MANIFESTS)
def test_manifest_corpus(doc: dict[str, Any], valid: bool) -> None:
    assert schema_ok("manifest", doc) is valid
    assert model_ok("manifest", doc) is valid


@pytest.mark.parametrize(("doc", "valid"), REPO_CONFIGS)
def test_reconcile_yaml_corpus(doc: dict[str, Any], valid: bool) -> None:
    assert schema_ok("reconcile", doc) is valid
    assert model_ok("reconcile", doc) is valid


# Field -> candidate values, good and bad mixed, so random documents land on both sides.
FIELD_VALUES: dict[str, list[Any]] = {
    "name": ["vault", "a1", "x", "Bad", "a" * 101, 5, "ok_name-2"],
    "agent": ["local", "edge", "agt_0123456789abcdef", "Bad!", 1],
    "agent_id": ["local", "agt_0123456789abcdef", ""],
    "domain": ["a.example.com", "localhost", "*.example.com", "bad_domain", ""],
    "onion": [True, False, "yes", None],
    "vars": [{}, {"A": 1}, {"A": {"from_env": "X"}}, {"a-b": 1}, {"DOCKER_X": 1}, {"A": None}, []],
    "app": ["vaultwarden", "x", "Bad", 3],
    "version": ["1.0", "", 1],
    "image": ["busybox:1.36", "", "a b"],
    "target_port": [80, 0, 65536, "80"],
    "cpus": [0.5, 1, 0, -1, "1", 300],
    "memory_mb": [512, 15, 1.5, True],
    "build": [{"context": "."}, {"context": ".", "dockerfile": "D"}, {}, ".", {"context": ""}],
    "dockerfile_path": ["Dockerfile", ""],
    "git_url": ["https://h/r.git", "ssh://git@h/r", "git@h:r", "http://h/r"],
    "git_ref": ["main", "-x", "a b"],
    "manifest": ["./m.yaml", {}, {"x": 1}, 3],
    "compose": ["./c.yaml", "", None],
    "routes": [[], [{"upstream": "a:80"}], [{"upstream": ""}], [{"x": 1}]],
    "bogus": [1],
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(sorted(FIELD_VALUES)),
        st.integers(min_value=0, max_value=6),
        min_size=1,
        max_size=6,
    )
)
def test_random_deployments_get_one_verdict(picks: dict[str, int]) -> None:
    doc = {k: FIELD_VALUES[k][i % len(FIELD_VALUES[k])] for k, i in picks.items()}
    assert_agree("deployment", doc)


REPO_VALUES: dict[str, list[Any]] = {
    "namespace": ["default", "x", "Bad", ""],
    "agents": [{}, {"a": "agt_0123456789abcdef"}, {"a": "x"}],
    "base_domain": ["localhost", "example.com", "Bad"],
    "prune": [True, "no"],
    "max_prune_share": [0, 0.5, 2],
    "proxy": [
        {},
        {"tls": False},
        {"tls": "internal"},
        {"http_port": 0},
        {"network": "edge"},
        {"x": 1},
    ],
    "policy": [{}, {"allow_host_ports": ["mail"]}, {"allow_host_ports": ["M"]}],
}


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(REPO_VALUES)), st.integers(min_value=0, max_value=5), max_size=5
    )
)
def test_random_repo_configs_get_one_verdict(picks: dict[str, int]) -> None:
    doc = {k: REPO_VALUES[k][i % len(REPO_VALUES[k])] for k, i in picks.items()}
    assert_agree("reconcile", doc)
