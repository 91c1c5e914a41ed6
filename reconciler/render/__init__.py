"""Pure rendering: a loaded deployment -> what a host will run, plus its spec hash.

:mod:`reconciler.render.model` holds the values (agents import only that);
:mod:`reconciler.render.rendering` produces them from a loaded repository.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from reconciler.render.rendering import RenderContext, agents_of, render, render_all

_RENDERING = frozenset({"RenderContext", "agents_of", "render", "render_all"})


def __getattr__(name: str) -> Any:
    """The rendering functions load on first use: an agent that imports only the values
    (``reconciler.render.model``, through this package) must not pull in the loader."""
    if name in _RENDERING:
        from reconciler.render import rendering

        return getattr(rendering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
