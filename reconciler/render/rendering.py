"""Deployment + manifest -> the compose file, ``.env``, routes and spec hash a host runs.

Pure: no Docker, no network, no clock, no environment.  Everything that needs I/O --
the repository's commit, a ``git_url`` ref resolved to a sha, a build context's digest
-- is read at the edges and handed in (:class:`RenderContext`, ``LoadedDeployment``).

The spec hash covers exactly what should cause an update when it changes: the compose
file before our labels, the env (secret *references*, never generated values), routes,
domain, onion, resources and the source revision of what gets built.  The repository's
own commit is deliberately not in it: a push that touches one file must not redeploy
every app.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from reconciler.load.repo import DesiredState, LoadedDeployment
from reconciler.model.deployment import (
    CatalogDeployment,
    DeploymentKind,
    DockerfileDeployment,
    FromEnv,
    GitDeployment,
    ImageDeployment,
    ManifestDeployment,
    RepoConfig,
)
from reconciler.model.ids import auto_domain, deployment_id
from reconciler.model.manifest import Manifest
from reconciler.model.state import RouteRecord, SpecRecord

__all__ = [
    "LABEL_DEPLOYMENT",
    "LABEL_NAMESPACE",
    "LABEL_SPEC_HASH",
    "BuildSource",
    "Hook",
    "RenderContext",
    "RenderedDeployment",
    "RenderedRoute",
    "SecretRef",
    "render",
    "render_all",
    "spec_record",
]

LABEL_NAMESPACE = "io.reconciler.namespace"
LABEL_DEPLOYMENT = "io.reconciler.deployment"
LABEL_SPEC_HASH = "io.reconciler.spec-hash"
LABEL_NAME = "io.reconciler.name"
APP_SERVICE = "app"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderedRoute(_Frozen):
    domain: str
    upstream: str  # "{deployment_id}" already substituted


class SecretRef(_Frozen):
    """A var whose value is not in the repository: generated on the host, or read from env."""

    source: Literal["generate", "env"]
    spec: str  # "hex:32" for generate, the variable name for env


class Hook(_Frozen):
    """A lifecycle command run with ``sh -c`` inside a service of the deployment."""

    run: str
    service: str
    timeout: int = 60


class BuildSource(_Frozen):
    """What the host builds the ``app`` image from."""

    kind: Literal["repo", "git"]
    path: str | None = None  # repo-relative directory shipped with the deployment
    url: str | None = None
    revision: str | None = None  # git sha, or the tree digest of a repo directory
    dockerfile: str = "Dockerfile"


class RenderedDeployment(_Frozen):
    id: str
    name: str
    namespace: str
    agent: str  # "local" or an agt_ id (aliases resolved)
    kind: DeploymentKind
    compose_yaml: str  # the file the host runs, with our labels on every service
    env: dict[str, str] = Field(default_factory=dict)  # literal .env values
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    secret_keys: tuple[str, ...] = ()  # env keys whose values are secret (masked everywhere)
    routes: tuple[RenderedRoute, ...] = ()
    domain: str | None = None
    onion: bool = False
    resources: dict[str, float | int | None] = Field(default_factory=dict)
    build: BuildSource | None = None
    bundle: str | None = None  # repo-relative directory copied into the app dir
    source_revision: str | None = None  # the repository commit, for the record only
    services: tuple[str, ...] = ()
    one_shot: tuple[str, ...] = ()  # services with restart "no": exiting 0 is success
    hooks: dict[str, Hook] = Field(default_factory=dict)  # install/health/uninstall/backup
    spec_hash: str = ""

    @property
    def url(self) -> str | None:
        return self.env.get("DOMAIN_URL") or None


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs that is not in the deployment file itself."""

    config: RepoConfig = field(default_factory=RepoConfig)
    source_revision: str | None = None
    git_revisions: Mapping[str, str] = field(default_factory=dict)  # deployment name -> sha


def _base_url(config: RepoConfig, domain: str) -> str:
    """``DOMAIN_URL``: what a browser types, including a non-standard proxy port."""
    if config.proxy.tls == "off":
        port = config.proxy.http_port
        return f"http://{domain}" + ("" if port == 80 else f":{port}")
    port = config.proxy.https_port
    return f"https://{domain}" + ("" if port == 443 else f":{port}")


def _agent(agent: str, config: RepoConfig) -> str:
    return config.agents.get(agent, agent)


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _image_compose(
    image: str | None,
    port: int,
    build: BuildSource | None,
    cpus: float,
    memory_mb: int,
    var_keys: Iterable[str],
    network: str,
) -> dict[str, Any]:
    env = {k: f"${{{k}}}" for k in ("DEPLOYMENT_ID", "DOMAIN", "DOMAIN_URL", *sorted(var_keys))}
    service: dict[str, Any] = {}
    if build is not None:
        service["build"] = {"context": "./build", "dockerfile": build.dockerfile}
        service["image"] = "${DEPLOYMENT_ID}-app:latest"
        service["pull_policy"] = "build"
    else:
        service["image"] = image
    service.update(
        {
            "container_name": "${DEPLOYMENT_ID}-app",
            "restart": "unless-stopped",
            "environment": env,
            "expose": [str(port)],
            "cpus": cpus,
            "mem_limit": f"{memory_mb}m",
            "networks": ["default", network],
        }
    )
    return {"services": {APP_SERVICE: service}, "networks": {network: {"external": True}}}


def _label(compose: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``compose`` with ``labels`` on every service (list or mapping form)."""
    out = dict(compose)
    services = {}
    for name, spec in (compose.get("services") or {}).items():
        spec = dict(spec) if isinstance(spec, Mapping) else {}
        existing = spec.get("labels")
        if isinstance(existing, list):
            merged: dict[str, Any] = {}
            for item in existing:
                key, _, value = str(item).partition("=")
                merged[key] = value
        elif isinstance(existing, Mapping):
            merged = dict(existing)
        else:
            merged = {}
        merged.update(labels)
        spec["labels"] = merged
        services[name] = spec
    out["services"] = services
    return out


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, width=1 << 16)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def render(item: LoadedDeployment, ctx: RenderContext) -> RenderedDeployment:
    """Render one valid deployment.  Pure."""
    spec = item.spec
    config = ctx.config
    namespace = config.namespace
    dpl_id = deployment_id(namespace, spec.name)
    network = config.proxy.network

    if spec.domain:
        domain: str | None = spec.domain
    elif spec.onion:
        domain = None  # onion-only: DOMAIN is back-filled with the .onion on the host
    else:
        domain = auto_domain(namespace, spec.name, config.base_domain)
    env: dict[str, str] = {
        "DEPLOYMENT_ID": dpl_id,
        "DOMAIN": domain or "",
        "DOMAIN_URL": _base_url(config, domain) if domain else "",
    }
    secrets: dict[str, SecretRef] = {}
    secret_keys: set[str] = set()
    routes: list[RenderedRoute] = []
    resources: dict[str, float | int | None] = {}
    build: BuildSource | None = None

    def put_var(key: str, value: Any, secret: bool) -> None:
        if isinstance(value, FromEnv):
            secrets[key] = SecretRef(source="env", spec=value.from_env)
            secret_keys.add(key)
        else:
            env[key] = _str(value)
            if secret:
                secret_keys.add(key)

    manifest: Manifest | None = item.manifest
    if isinstance(spec, CatalogDeployment | ManifestDeployment):
        assert manifest is not None
        assert item.compose is not None
        compose: dict[str, Any] = dict(item.compose.data)
        for var in manifest.vars:
            if var.name in spec.vars:
                continue
            if var.generate:
                secrets[var.name] = SecretRef(source="generate", spec=var.generate)
                secret_keys.add(var.name)
            elif var.default is not None:
                put_var(var.name, var.default, var.secret)
        for key, value in spec.vars.items():
            var_spec = manifest.var(key)
            put_var(key, value, bool(var_spec and var_spec.secret))
        for route in manifest.routes:
            host = domain if route.match_var == "domain" else env.get(route.match_var.upper())
            if not host:
                continue
            routes.append(
                RenderedRoute(
                    domain=host, upstream=route.upstream.replace("{deployment_id}", dpl_id)
                )
            )
    else:
        assert isinstance(spec, ImageDeployment | DockerfileDeployment | GitDeployment)
        for key, value in spec.vars.items():
            put_var(key, value, False)
        if isinstance(spec, DockerfileDeployment):
            build = BuildSource(
                kind="repo",
                path=item.bundle,
                revision=item.bundle_digest,
                dockerfile=spec.dockerfile_path or spec.build.dockerfile,
            )
        elif isinstance(spec, GitDeployment):
            build = BuildSource(
                kind="git",
                url=spec.git_url,
                revision=ctx.git_revisions.get(spec.name, spec.git_ref),
                dockerfile=spec.dockerfile_path,
            )
        image = spec.image if isinstance(spec, ImageDeployment) else None
        compose = _image_compose(
            image,
            spec.target_port,
            build,
            spec.cpus,
            spec.memory_mb,
            [*spec.vars],
            network,
        )
        resources = {"cpus": spec.cpus, "memory_mb": spec.memory_mb}
        if domain:
            routes.append(
                RenderedRoute(domain=domain, upstream=f"{dpl_id}-{APP_SERVICE}:{spec.target_port}")
            )

    services = compose.get("services") or {}
    one_shot = tuple(
        sorted(
            n
            for n, s in services.items()
            if isinstance(s, Mapping)
            and str(s.get("restart", "no")) in ("no", "False", "false")
            and "restart" in s
        )
    )
    hooks = _hooks(manifest, services, routes, dpl_id) if manifest is not None else {}
    bundle_digest = item.bundle_digest if build is None else None
    spec_hash = _digest(
        "v1",
        _canonical(compose),
        _canonical(env),
        _canonical({k: v.model_dump() for k, v in sorted(secrets.items())}),
        _canonical([r.model_dump() for r in routes]),
        _canonical({"onion": spec.onion, "resources": resources}),
        _canonical(build.model_dump() if build else None),
        bundle_digest or "",
    )
    labels = {
        LABEL_NAMESPACE: namespace,
        LABEL_DEPLOYMENT: dpl_id,
        LABEL_SPEC_HASH: spec_hash,
        LABEL_NAME: spec.name,
    }
    return RenderedDeployment(
        id=dpl_id,
        name=spec.name,
        namespace=namespace,
        agent=_agent(spec.agent, config),
        kind=spec.kind,
        compose_yaml=_dump(_label(compose, labels)),
        env=env,
        secrets=secrets,
        secret_keys=tuple(sorted(secret_keys)),
        routes=tuple(routes),
        domain=domain,
        onion=spec.onion,
        resources=resources,
        build=build,
        bundle=item.bundle,
        source_revision=ctx.source_revision,
        services=tuple(sorted(services)),
        one_shot=one_shot,
        hooks=hooks,
        spec_hash=spec_hash,
    )


def _hooks(
    manifest: Manifest, services: Mapping[str, Any], routes: list[RenderedRoute], dpl_id: str
) -> dict[str, Hook]:
    """Lifecycle hooks with their service resolved: named, else the routed one, else first."""
    if manifest.lifecycle is None:
        return {}
    default = next(iter(services), APP_SERVICE)
    for route in routes:
        host = route.upstream.rpartition(":")[0]
        for name, spec in services.items():
            if (
                isinstance(spec, Mapping)
                and str(spec.get("container_name", "")).replace("${DEPLOYMENT_ID}", dpl_id) == host
            ):
                default = name
    out: dict[str, Hook] = {}
    for phase in ("install", "health", "uninstall", "backup"):
        hook = getattr(manifest.lifecycle, phase)
        if hook is None:
            continue
        if isinstance(hook, str):
            out[phase] = Hook(run=hook, service=default)
        else:
            out[phase] = Hook(run=hook.run, service=hook.service or default, timeout=hook.timeout)
    return out


def render_all(state: DesiredState, ctx: RenderContext | None = None) -> list[RenderedDeployment]:
    """Render a valid desired state, in name order."""
    state.require_valid()
    ctx = ctx or RenderContext(config=state.config)
    if ctx.config is not state.config:
        ctx = RenderContext(state.config, ctx.source_revision, ctx.git_revisions)
    return [render(item, ctx) for item in state.deployments]


def value_digest(dpl_id: str, key: str, value: str) -> str:
    """Digest of one env value, salted by deployment and key: comparable, not guessable."""
    return _digest("env", dpl_id, key, value)[:16]


def spec_record(rendered: RenderedDeployment) -> SpecRecord:
    """The secret-free record the host keeps, from which later plans explain updates."""
    compose = yaml.safe_load(rendered.compose_yaml) or {}
    images = {
        name: str(
            spec.get("image")
            or ("build:" + (rendered.build.revision or "")[:12] if rendered.build else "")
        )
        for name, spec in (compose.get("services") or {}).items()
        if isinstance(spec, Mapping)
    }
    unlabelled = _label(compose, {})
    for spec in unlabelled["services"].values():
        spec["labels"] = {
            k: v for k, v in spec["labels"].items() if not str(k).startswith("io.reconciler.")
        }
    env = {k: value_digest(rendered.id, k, v) for k, v in rendered.env.items()}
    env.update(
        {
            k: value_digest(rendered.id, k, _canonical(v.model_dump()))
            for k, v in rendered.secrets.items()
        }
    )
    return SpecRecord(
        images=images,
        compose_digest=_digest(_canonical(unlabelled))[:16],
        env=env,
        routes=[RouteRecord(domain=r.domain, upstream=r.upstream) for r in rendered.routes],
        domain=rendered.domain,
        onion=rendered.onion,
        resources=dict(rendered.resources),
        source_revision=rendered.build.revision if rendered.build else None,
    )
