"""Reading what users commit: safe YAML, JSON Schema, semantic rules, the catalog."""

from reconciler.load.budget import Budget, Limits
from reconciler.load.catalog import Catalog, CatalogEntry
from reconciler.load.repo import DesiredState, LoadedDeployment, load_repository
from reconciler.load.yamlsafe import Document, load_yaml

__all__ = [
    "Budget",
    "Catalog",
    "CatalogEntry",
    "DesiredState",
    "Document",
    "Limits",
    "LoadedDeployment",
    "load_repository",
    "load_yaml",
]
