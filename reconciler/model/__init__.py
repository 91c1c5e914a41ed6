"""Pure data: pydantic models, identities and the error tree. Imports nothing of ours."""

from reconciler.model.deployment import (
    KIND_KEYS,
    BuildSpec,
    CatalogDeployment,
    Deployment,
    DeploymentKind,
    DockerfileDeployment,
    FromEnv,
    GitDeployment,
    ImageDeployment,
    ManifestDeployment,
    PolicyConfig,
    ProxyConfig,
    RepoConfig,
    deployment_kind,
    parse_deployment,
)
from reconciler.model.errors import (
    HostError,
    InvalidSpec,
    Problem,
    ReconcilerError,
    Severity,
    TemporaryError,
)
from reconciler.model.ids import auto_domain, deployment_id
from reconciler.model.manifest import Manifest, Route, VarSpec

__all__ = [
    "KIND_KEYS",
    "BuildSpec",
    "CatalogDeployment",
    "Deployment",
    "DeploymentKind",
    "DockerfileDeployment",
    "FromEnv",
    "GitDeployment",
    "HostError",
    "ImageDeployment",
    "InvalidSpec",
    "Manifest",
    "ManifestDeployment",
    "PolicyConfig",
    "Problem",
    "ProxyConfig",
    "ReconcilerError",
    "RepoConfig",
    "Route",
    "Severity",
    "TemporaryError",
    "VarSpec",
    "auto_domain",
    "deployment_id",
    "deployment_kind",
    "parse_deployment",
]
