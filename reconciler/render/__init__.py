"""Pure rendering: a loaded deployment -> what a host will run, plus its spec hash.

:mod:`reconciler.render.model` holds the values (agents import only that);
:mod:`reconciler.render.rendering` produces them from a loaded repository.
"""

from reconciler.render.model import (
    LABEL_DEPLOYMENT,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
    BuildSource,
    Hook,
    RenderedDeployment,
    RenderedRoute,
    SecretRef,
    spec_record,
    value_digest,
)
from reconciler.render.rendering import RenderContext, agents_of, render, render_all

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
    "agents_of",
    "render",
    "render_all",
    "spec_record",
    "value_digest",
]
