"""Deployment files and ``reconcile.yaml``: what users commit.

Mirrors ``schemas/deployment.schema.json`` and ``schemas/reconcile.schema.json``.
The kind of a deployment is decided by which one of its kind keys it carries
(``app``, ``image``, ``build``, ``git_url``, ``manifest``/``compose``), as on Impreza's
REST bodies; :func:`deployment_kind` is the one place that decides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from reconciler.model.manifest import VAR_NAME_RE, Route

__all__ = [
    "CATALOG_SYNONYMS",
    "KIND_KEYS",
    "NAME_PATTERN",
    "BuildSpec",
    "CatalogDeployment",
    "Deployment",
    "DeploymentKind",
    "DockerfileDeployment",
    "FromEnv",
    "GitDeployment",
    "ImageDeployment",
    "ManifestDeployment",
    "PolicyConfig",
    "ProxyConfig",
    "RepoConfig",
    "deployment_kind",
    "parse_deployment",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,98}[a-z0-9]$"
AGENT_PATTERN = r"^(local|agt_[0-9a-f]{16}|[a-z0-9][a-z0-9_-]{0,62})$"
DOMAIN_PATTERN = (
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
# https://, ssh:// or file://, or the scp form Impreza's deploy-key bodies use
# (``git@github.com:owner/repo.git``), which the model rewrites to ssh://.
GIT_URL_PATTERN = (
    r"^((https://|ssh://|file://)[^\s]+"
    r"|[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s/-][^\s]*)$"
)
_SCP_URL = re.compile(r"^(?P<user>[^@/:]+)@(?P<host>[^@/:]+):(?P<path>[^\s]+)$")
RESERVED_VAR_PREFIXES = ("COMPOSE_", "DOCKER_")
RESERVED_VARS = frozenset({"DEPLOYMENT_ID", "DOMAIN", "DOMAIN_URL"})


class DeploymentKind(StrEnum):
    CATALOG = "catalog"
    IMAGE = "image"
    DOCKERFILE = "dockerfile"
    GIT = "git"
    MANIFEST = "manifest"


# key -> kind; ``compose`` is the file form of ``manifest``; ``app_name`` is Impreza's
# catalog body's name for ``app``.
KIND_KEYS: dict[str, DeploymentKind] = {
    "app": DeploymentKind.CATALOG,
    "app_name": DeploymentKind.CATALOG,
    "image": DeploymentKind.IMAGE,
    "build": DeploymentKind.DOCKERFILE,
    "git_url": DeploymentKind.GIT,
    "manifest": DeploymentKind.MANIFEST,
    "compose": DeploymentKind.MANIFEST,
}


def deployment_kind(data: Mapping[str, Any]) -> DeploymentKind | None:
    """The kind named by the document's keys, or None when zero or several kinds are named."""
    kinds = {KIND_KEYS[k] for k in data if k in KIND_KEYS}
    if len(kinds) != 1:
        return None
    return kinds.pop()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class FromEnv(_Strict):
    """A var read from the environment of the machine that applies the deployment."""

    from_env: Annotated[str, StringConstraints(pattern=VAR_NAME_RE)]


VarValue = str | int | float | bool | FromEnv


class _DeploymentBase(_Strict):
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    agent: Annotated[str, StringConstraints(pattern=AGENT_PATTERN)] = Field(
        default="local", validation_alias=AliasChoices("agent", "agent_id")
    )
    domain: Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN, max_length=253)] | None = None
    onion: bool = False
    vars: dict[str, VarValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_agent_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "agent" in data and "agent_id" in data:
            raise ValueError("give `agent` or `agent_id`, not both")
        return data

    @field_validator("vars")
    @classmethod
    def _var_keys(cls, value: dict[str, VarValue]) -> dict[str, VarValue]:
        for key in value:
            if not re.match(VAR_NAME_RE, key):
                raise ValueError(f"var name {key!r} must match {VAR_NAME_RE}")
            if key.startswith(RESERVED_VAR_PREFIXES) or key in RESERVED_VARS:
                raise ValueError(f"var name {key!r} is reserved")
        return value

    @property
    def kind(self) -> DeploymentKind:
        raise NotImplementedError


Cpus = Annotated[float, Field(gt=0, le=256)]
MemoryMb = Annotated[int, Field(ge=16, le=1_048_576)]
Port = Annotated[int, Field(ge=1, le=65535)]
RelPath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


# Impreza's catalog body (``POST /v1/platform/deployments``) names these differently.
CATALOG_SYNONYMS = {"app": "app_name", "version": "app_version"}


class CatalogDeployment(_DeploymentBase):
    app: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}[a-z0-9]$")] = Field(
        validation_alias=AliasChoices("app", "app_name")
    )
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, validation_alias=AliasChoices("version", "app_version")
    )

    @model_validator(mode="before")
    @classmethod
    def _one_synonym(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for ours, theirs in CATALOG_SYNONYMS.items():
                if ours in data and theirs in data:
                    raise ValueError(f"give `{ours}` or `{theirs}`, not both")
        return data

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind.CATALOG


class _Sized(_DeploymentBase):
    target_port: Port = 80
    cpus: Cpus = 1.0
    memory_mb: MemoryMb = 512


class ImageDeployment(_Sized):
    # Impreza's custom body names its mode; the kind keys already say it, so it must agree.
    mode: Literal["image"] | None = None
    image: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\s]+$")]

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind.IMAGE


class BuildSpec(_Strict):
    context: RelPath
    dockerfile: RelPath = "Dockerfile"


class DockerfileDeployment(_Sized):
    mode: Literal["dockerfile"] | None = None
    build: BuildSpec
    dockerfile_path: RelPath | None = None

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind.DOCKERFILE


class GitDeployment(_Sized):
    mode: Literal["dockerfile"] | None = None  # Impreza: a git source is dockerfile mode
    git_url: Annotated[str, StringConstraints(pattern=GIT_URL_PATTERN, max_length=2048)]
    git_ref: Annotated[str, StringConstraints(pattern=r"^[^-\s][^\s]*$", max_length=255)] = "main"
    dockerfile_path: RelPath = "Dockerfile"
    # Impreza's private-repository switch. Informational here: the host's own ssh key
    # (deploy_key) or credential helper (pat) authenticates; a token in the file
    # (``git_pat``) is refused by the loader, since secrets do not belong in git.
    git_auth_method: Literal["none", "deploy_key", "pat"] | None = None

    @field_validator("git_url")
    @classmethod
    def _scp_to_ssh(cls, value: str) -> str:
        """``git@host:owner/repo.git`` -> ``ssh://git@host/owner/repo.git``: one spelling
        for the plan, the spec hash and the URL checks of :mod:`reconciler.load.sources`."""
        found = None if "://" in value else _SCP_URL.match(value)
        if found is None:
            return value
        return f"ssh://{found['user']}@{found['host']}/{found['path'].lstrip('/')}"

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind.GIT


class ManifestDeployment(_DeploymentBase):
    """A full manifest, inline or by path, or a compose file plus routes."""

    mode: Literal["manifest"] | None = None
    manifest: RelPath | dict[str, Any] | None = None
    compose: RelPath | None = None
    routes: list[Route] = Field(default_factory=list)
    # Accepted and ignored, as on Impreza: compose is the source of truth.
    cpus: Cpus | None = None
    memory_mb: MemoryMb | None = None

    @model_validator(mode="after")
    def _manifest_or_compose(self) -> ManifestDeployment:
        if (self.manifest is None) == (self.compose is None):
            raise ValueError("give exactly one of `manifest` or `compose`")
        if self.manifest is not None and "routes" in self.model_fields_set:
            raise ValueError("`routes` go with `compose`; a manifest declares its own routes")
        return self

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind.MANIFEST


def _discriminate(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return str(getattr(value, "kind", DeploymentKind.MANIFEST).value)
    if isinstance(value, Mapping):
        kind = deployment_kind(value)
        return kind.value if kind else None
    return None


Deployment = Annotated[
    Annotated[CatalogDeployment, Tag("catalog")]
    | Annotated[ImageDeployment, Tag("image")]
    | Annotated[DockerfileDeployment, Tag("dockerfile")]
    | Annotated[GitDeployment, Tag("git")]
    | Annotated[ManifestDeployment, Tag("manifest")],
    Discriminator(
        _discriminate,
        custom_error_type="deployment_kind",
        custom_error_message=(
            "a deployment needs exactly one of: app, image, build, git_url, manifest or compose"
        ),
    ),
]

_DEPLOYMENT_ADAPTER: TypeAdapter[Deployment] = TypeAdapter(Deployment)


def parse_deployment(data: Any) -> Deployment:
    """Validate a loaded document into the deployment model of its kind."""
    return _DEPLOYMENT_ADAPTER.validate_python(data)


class ProxyConfig(_Strict):
    http_port: Port = 80
    https_port: Port = 443
    tls: Literal["auto", "internal", "off"] = "auto"
    network: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")] = (
        "impreza-proxy"
    )

    @field_validator("tls", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # ``tls: off`` unquoted is YAML 1.1 ``false``.
        if value is False:
            return "off"
        return value


class PolicyConfig(_Strict):
    allow_host_ports: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(
        default_factory=list
    )


class RepoConfig(_Strict):
    """``reconcile.yaml`` at the repository root; every key optional."""

    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "default"
    agents: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")],
        Annotated[str, StringConstraints(pattern=r"^agt_[0-9a-f]{16}$")],
    ] = Field(default_factory=dict)
    base_domain: Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN, max_length=200)] = (
        "localhost"
    )
    prune: bool = True
    max_prune_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
