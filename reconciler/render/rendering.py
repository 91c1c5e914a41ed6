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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from reconciler.load.repo import DesiredState, LoadedDeployment
from reconciler.model.deployment import (
    CatalogDeployment,
    DockerfileDeployment,
    FromEnv,
    GitDeployment,
    ImageDeployment,
    ManifestDeployment,
    RepoConfig,
)
from reconciler.model.ids import auto_domain, deployment_id
from reconciler.model.manifest import Manifest
from reconciler.model.memo import Memo
from reconciler.model.state import ActualState
from reconciler.render.domains import AutoDomain, choose_attempts
from reconciler.render.model import (
    APP_SERVICE,
    LABEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
    BuildSource,
    Hook,
    RenderedDeployment,
    RenderedRoute,
    SecretRef,
    canonical,
    digest,
    label_services,
)

__all__ = ["RenderContext", "agents_of", "render", "render_all"]


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs that is not in the deployment file itself."""

    config: RepoConfig = field(default_factory=RepoConfig)
    source_revision: str | None = None
    git_revisions: Mapping[str, str] = field(default_factory=dict)  # deployment name -> sha
    # deployment name -> auto-domain attempt (absent: 0); chosen by render_all on a clash
    domain_attempts: Mapping[str, int] = field(default_factory=dict)


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


# libyaml's emitter is ~5x faster than PyYAML's (the pure-Python emitter was 80% of
# rendering).  The two write byte-identical text except for a few mapping keys, which
# libyaml writes as simple keys where PyYAML writes ``? key`` (the empty string, a key
# longer than ~120 characters, a key with a carriage return) and for lone surrogates, which
# libyaml refuses; such documents take the pure-Python path, so the text never changes.
_CDumper: type | None = getattr(yaml, "CSafeDumper", None)
_MAX_C_KEY_BYTES = 100
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _c_key(key: object) -> bool:
    return (
        type(key) is str
        and key != ""
        and "\r" not in key
        and (
            len(key) * 4 <= _MAX_C_KEY_BYTES
            or len(key.encode("utf-8", "surrogatepass")) <= _MAX_C_KEY_BYTES
        )
    )


def _c_emittable(data: Any) -> bool:
    """Whether libyaml writes ``data`` exactly as PyYAML does: every mapping key (and set
    member) is a non-empty ``str`` of at most 100 UTF-8 bytes without a carriage return."""
    seen: set[int] = set()
    stack = [data]
    while stack:
        value = stack.pop()
        if id(value) in seen:  # a value shared through a YAML alias: looked at once
            continue
        seen.add(id(value))
        if isinstance(value, dict | set | frozenset):
            if not all(_c_key(key) for key in value):
                return False
            if isinstance(value, dict):
                stack.extend(v for v in value.values() if isinstance(v, _CONTAINERS))
        else:
            stack.extend(v for v in value if isinstance(v, _CONTAINERS))
    return True


# A push that changes a tenth of a thousand deployments renders all thousand, and nine in
# ten compose files come out as they did last time: their text is kept, by the ``repr`` of a
# document made only of builtin types (equal reprs are equal documents, key order
# included), so only the changed ones go through the emitter.
_MEMO_TYPES = frozenset({dict, list, str, int, float, bool, type(None)})
_memo: Memo[str] = Memo(4096)


def _memo_key(data: Any) -> bytes | None:
    """The document's key in the memo; None when a value is not of an exact builtin type
    (a ``str`` subclass has the ``repr`` of a ``str`` but may be written otherwise)."""
    stack = [data]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind not in _MEMO_TYPES:
            return None
        if kind is dict:
            if any(type(k) is not str for k in value):
                return None
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
    return hashlib.sha256(repr(data).encode("utf-8", "surrogatepass")).digest()


def _dump(data: Mapping[str, Any]) -> str:
    document = dict(data)
    key = _memo_key(document)
    text = None if key is None else _memo.get(key)
    if text is None:
        text = _emit(document)
        if key is not None:
            _memo.put(key, text)
    return text


def _emit(document: dict[str, Any]) -> str:
    if _CDumper is not None and _c_emittable(document):
        try:
            text: str = yaml.dump(
                document, Dumper=_CDumper, sort_keys=False, default_flow_style=False, width=1 << 16
            )
            return text
        except UnicodeEncodeError:  # a lone surrogate: PyYAML escapes it, libyaml refuses
            pass
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1 << 16)


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
        attempt = ctx.domain_attempts.get(spec.name, 0)
        domain = auto_domain(namespace, spec.name, config.base_domain, attempt)
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
    onion_upstream: str | None = None

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
        # A var's value goes into .env under the container's name for it (``env:``), so
        # Impreza's lower-case catalog vars fill the upstream image's own variables.
        for var in manifest.vars:
            if var.name in spec.vars:
                continue
            if var.generate:
                secrets[var.env or var.name] = SecretRef(source="generate", spec=var.generate)
                secret_keys.add(var.env or var.name)
            elif var.default is not None:
                put_var(var.env or var.name, var.default, var.secret)
        for key, value in spec.vars.items():
            var_spec = manifest.var(key)
            put_var(manifest.env_name(key), value, bool(var_spec and var_spec.secret))
        for route in manifest.routes:
            if route.match_var == "domain" and onion_upstream is None:
                onion_upstream = route.upstream.replace("{deployment_id}", dpl_id)
            host = (
                domain
                if route.match_var == "domain"
                else env.get(manifest.env_name(route.match_var))
            )
            if not host:  # a var with no hostname: validation warned (route-var-empty)
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
        onion_upstream = f"{dpl_id}-{APP_SERVICE}:{spec.target_port}"
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
    spec_hash = digest(
        "v1",
        canonical(compose),
        canonical(env),
        canonical({k: v.model_dump() for k, v in sorted(secrets.items())}),
        canonical([r.model_dump() for r in routes]),
        # the onion's upstream only when onion is on, so no other deployment's hash moves
        canonical(
            {"onion": spec.onion, "resources": resources}
            | ({"onion_upstream": onion_upstream} if spec.onion else {})
        ),
        canonical(build.model_dump() if build else None),
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
        compose_yaml=_dump(label_services(compose, labels)),
        env=env,
        secrets=secrets,
        secret_keys=tuple(sorted(secret_keys)),
        routes=tuple(routes),
        domain=domain,
        onion=spec.onion,
        onion_upstream=onion_upstream if spec.onion else None,
        resources=resources,
        build=build,
        bundle=item.bundle,
        bundle_digest=item.shipped_digest if build is None else None,
        file=item.file,
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


def agents_of(state: DesiredState, *, local: bool = True) -> list[str]:
    """The agents the desired state names (aliases resolved), plus ``local`` unless told
    not to: what to read the actual state of before rendering with it."""
    named = {_agent(d.spec.agent, state.config) for d in state.deployments}
    return sorted(named | {"local"} if local else named)


def render_all(
    state: DesiredState,
    ctx: RenderContext | None = None,
    *,
    actual: ActualState | None = None,
) -> list[RenderedDeployment]:
    """Render a valid desired state, in name order.

    With ``actual``, an auto domain that another deployment already routes on its agent
    (any namespace), or that another desired deployment names explicitly, moves to fresh
    hex (:mod:`reconciler.render.domains`); only those few are rendered twice.  Without
    it, every auto domain is attempt 0 unless ``ctx.domain_attempts`` says otherwise.
    """
    state.require_valid()
    ctx = ctx or RenderContext(config=state.config)
    if ctx.config is not state.config:
        ctx = replace(ctx, config=state.config)
    out = [render(item, ctx) for item in state.deployments]
    if actual is None:
        return out
    config = state.config
    autos = {
        item.name: AutoDomain(
            id=d.id,
            name=d.name,
            namespace=config.namespace,
            agent=d.agent,
            base_domain=config.base_domain,
            file=item.file,
        )
        for item, d in zip(state.deployments, out, strict=True)
        if item.spec.domain is None and d.domain is not None and d.routes
    }
    others = [d for d in out if d.name not in autos]
    chosen = choose_attempts(list(autos.values()), others, actual)
    attempts = {
        n: chosen.get(n, 0) for n in autos if chosen.get(n, 0) != ctx.domain_attempts.get(n, 0)
    }
    if not attempts:
        return out
    again = replace(ctx, domain_attempts={**ctx.domain_attempts, **attempts})
    return [
        render(item, again) if item.name in attempts else d
        for item, d in zip(state.deployments, out, strict=True)
    ]
