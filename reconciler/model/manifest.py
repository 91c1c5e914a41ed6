"""Catalog manifest: the Impreza Host app-manifest dialect.

Mirrors ``schemas/manifest.schema.json``; ``tests/schemas`` keeps the two in agreement.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "GENERATE_RE",
    "VAR_NAME_RE",
    "Lifecycle",
    "LifecycleHook",
    "Manifest",
    "NetworkSpec",
    "Requirements",
    "ReverseProxy",
    "Route",
    "Runtime",
    "VarSpec",
]

VAR_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
GENERATE_RE = r"^(hex|base64url|alnum|password|uuid)(:[0-9]{1,3})?$"
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
APP_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}[a-z0-9]$"

Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class VarSpec(_Strict):
    name: Annotated[str, StringConstraints(pattern=VAR_NAME_RE)]
    # The container variable this var fills: Impreza's catalogs name vars in lower case
    # (``admin_password``) while the image reads its own name (``ADMIN_TOKEN``).
    env: Annotated[str, StringConstraints(pattern=VAR_NAME_RE)] | None = None
    description: str | None = None
    required: bool = False
    default: Scalar | None = None
    secret: bool = False
    generate: Annotated[str, StringConstraints(pattern=GENERATE_RE)] | None = None


class Runtime(_Strict):
    type: Literal["docker-compose"]
    compose_yaml: Annotated[str, StringConstraints(min_length=1)]


class Route(_Strict):
    upstream: Annotated[str, StringConstraints(min_length=1)]
    match_var: Annotated[str, StringConstraints(pattern=VAR_NAME_RE)] = "domain"


class ReverseProxy(_Strict):
    enabled: bool = True
    routes: list[Route] = Field(default_factory=list)


class NetworkSpec(_Strict):
    reverse_proxy: ReverseProxy | None = None


class LifecycleHook(_Strict):
    run: Annotated[str, StringConstraints(min_length=1)]
    service: str | None = None
    timeout: Annotated[int, Field(ge=1, le=3600)] = 60


class Lifecycle(_Strict):
    install: str | LifecycleHook | None = None
    health: str | LifecycleHook | None = None
    uninstall: str | LifecycleHook | None = None
    backup: str | LifecycleHook | None = None


class Requirements(_Strict):
    memory_mb: Annotated[int, Field(ge=16)] | None = None
    cpus: Annotated[float, Field(gt=0, le=256)] | None = None


class Manifest(_Strict):
    """One app version. ``name``/``version`` may be omitted inline in a deployment."""

    name: Annotated[str, StringConstraints(pattern=APP_NAME_RE)]
    version: Annotated[str, StringConstraints(pattern=VERSION_RE)]
    description: str | None = None
    display_name: str | None = None
    website: str | None = None
    icon: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    license: str | None = None
    vars: list[VarSpec] = Field(default_factory=list)
    runtime: Runtime
    network: NetworkSpec | None = None
    lifecycle: Lifecycle | None = None
    requirements: Requirements | None = None

    @property
    def routes(self) -> list[Route]:
        rp = self.network.reverse_proxy if self.network else None
        if rp is None or not rp.enabled:
            return []
        return list(rp.routes)

    def env_name(self, var: str) -> str:
        """The ``.env`` key a var's value is written under."""
        spec = self.var(var)
        return spec.env if spec is not None and spec.env else var

    def var(self, name: str) -> VarSpec | None:
        for spec in self.vars:
            if spec.name == name:
                return spec
        return None


def manifest_from_data(data: dict[str, Any]) -> Manifest:
    return Manifest.model_validate(data)
