"""Pure rendering: a loaded deployment -> what a host will run, plus its spec hash."""

from reconciler.render.rendering import (
    LABEL_DEPLOYMENT,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
    BuildSource,
    Hook,
    RenderContext,
    RenderedDeployment,
    RenderedRoute,
    SecretRef,
    render,
    render_all,
    spec_record,
)

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
