"""Where the data the package ships lives: the built-in catalog and the JSON Schemas.

Both are real files inside the ``reconciler`` package (``reconciler/catalog``,
``reconciler/schemas``), so a wheel or an sdist carries them; the checkout's top-level
``catalog`` and ``schemas`` are symlinks to them, for people browsing the repository.
The loader, the tests, the scripts and the benchmarks all resolve them here, so an
installed package and a checkout read the same files the same way.
"""

from __future__ import annotations

import pathlib
from importlib import resources

from reconciler.model.errors import ReconcilerError

__all__ = ["CATALOG_DIR", "SCHEMAS_DIR", "MissingData", "schema_path"]

_PACKAGE = pathlib.Path(str(resources.files("reconciler")))

#: ``<app>/<version>.yaml`` manifests, one directory per app.
CATALOG_DIR = _PACKAGE / "catalog"
#: ``<name>.schema.json`` (JSON Schema 2020-12), the contract editors and the loader share.
SCHEMAS_DIR = _PACKAGE / "schemas"


class MissingData(ReconcilerError):
    """This installation lacks data the package ships (a catalog, a schema): reinstall it.

    Never retried, and never read as "no apps": an empty catalog would make every ``app:``
    deployment invalid for a reason that has nothing to do with the repository.
    """


def schema_path(name: str) -> pathlib.Path:
    """The shipped schema ``name`` (``manifest``, ``deployment`` or ``reconcile``)."""
    return SCHEMAS_DIR / f"{name}.schema.json"
