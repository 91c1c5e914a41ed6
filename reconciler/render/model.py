"""What a host runs, as data: the rendered deployment and its secret-free record.

Kept apart from :mod:`reconciler.render.rendering` (which reads loaded repositories)
so that agents import these values without importing the loader: the layers in
DESIGN.md let ``agent.*`` see ``reconciler.model`` and this, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from reconciler.model.deployment import DeploymentKind
from reconciler.model.digests import digest, value_digest
from reconciler.model.ids import LABEL_DEPLOYMENT, LABEL_NAME, LABEL_NAMESPACE, LABEL_SPEC_HASH
from reconciler.model.state import RouteRecord, SpecRecord

__all__ = [
    "APP_SERVICE",
    "LABEL_DEPLOYMENT",
    "LABEL_NAME",
    "LABEL_NAMESPACE",
    "LABEL_SPEC_HASH",
    "BuildSource",
    "Hook",
    "RenderedDeployment",
    "RenderedRoute",
    "SecretRef",
    "canonical",
    "digest",
    "label_services",
    "spec_record",
    "value_digest",
]

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
    # Where the proxy sends ``<addr>.onion`` (the routed upstream, also for onion-only
    # deployments, which have no clearnet route); None when onion is off or nothing is routed.
    onion_upstream: str | None = None
    resources: dict[str, float | int | None] = Field(default_factory=dict)
    build: BuildSource | None = None
    bundle: str | None = None  # repo-relative directory copied into the app dir
    # Digest of the files shipped with it, the deployment file aside (for the record: a
    # change needs a restart); the spec hash covers the whole directory.
    bundle_digest: str | None = None
    file: str = ""  # the deployment file, repo-relative: "first by file path" on a clash
    source_revision: str | None = None  # the repository commit, for the record only
    services: tuple[str, ...] = ()
    one_shot: tuple[str, ...] = ()  # services with restart "no": exiting 0 is success
    hooks: dict[str, Hook] = Field(default_factory=dict)  # install/health/uninstall/backup
    spec_hash: str = ""

    @property
    def url(self) -> str | None:
        return self.env.get("DOMAIN_URL") or None

    def shipped_dirs(self) -> list[str]:
        """The repository directories its command's bundle carries, sorted.  The server
        packs exactly these and the agent scopes the bundle's symlinks by them."""
        dirs = {self.bundle} if self.bundle else set()
        if self.build is not None and self.build.kind == "repo" and self.build.path:
            dirs.add(self.build.path)
        return sorted(dirs)


# libyaml's safe loader when present: the same data, ~8x faster than the pure-Python one
# (a plan with many updates reads one compose file per update).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def label_services(compose: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
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


def spec_record(rendered: RenderedDeployment) -> SpecRecord:
    """The secret-free record the host keeps, from which later plans explain updates."""
    compose = yaml.load(rendered.compose_yaml, Loader=_LOADER) or {}  # noqa: S506 - safe loader
    images = {
        name: str(
            spec.get("image")
            or ("build:" + (rendered.build.revision or "")[:12] if rendered.build else "")
        )
        for name, spec in (compose.get("services") or {}).items()
        if isinstance(spec, Mapping)
    }
    unlabelled = label_services(compose, {})
    for spec in unlabelled["services"].values():
        spec["labels"] = {
            k: v for k, v in spec["labels"].items() if not str(k).startswith("io.reconciler.")
        }
    env = {k: value_digest(rendered.id, k, v) for k, v in rendered.env.items()}
    env.update(
        {
            k: value_digest(rendered.id, k, canonical(v.model_dump()))
            for k, v in rendered.secrets.items()
        }
    )
    return SpecRecord(
        images=images,
        compose_digest=digest(canonical(unlabelled))[:16],
        env=env,
        routes=[RouteRecord(domain=r.domain, upstream=r.upstream) for r in rendered.routes],
        domain=rendered.domain,
        onion=rendered.onion,
        resources=dict(rendered.resources),
        source_revision=rendered.build.revision if rendered.build else None,
        bundle_digest=rendered.bundle_digest,
    )


def networks_created(rendered: RenderedDeployment) -> int:
    """How many networks ``docker compose up`` makes for this deployment: those its
    services join that the file does not declare ``external`` (``default`` included,
    for a service with no ``networks:`` and no ``network_mode``).

    What the planner counts against the host's free address pools.  A service on the
    proxy network only (external) needs none.
    """
    compose = yaml.load(rendered.compose_yaml, Loader=_LOADER) or {}  # noqa: S506 - safe loader
    declared = compose.get("networks") if isinstance(compose, Mapping) else None
    declared = declared if isinstance(declared, Mapping) else {}
    services = compose.get("services") if isinstance(compose, Mapping) else None
    used: set[str] = set()
    for spec in (services or {}).values() if isinstance(services, Mapping) else ():
        if not isinstance(spec, Mapping) or spec.get("network_mode"):
            continue
        joined = spec.get("networks")
        if isinstance(joined, Mapping | list) and joined:
            used.update(str(n) for n in joined)
        else:
            used.add("default")
    return sum(1 for name in used if not _external(declared.get(name)))


def _external(network: object) -> bool:
    return isinstance(network, Mapping) and bool(network.get("external"))
