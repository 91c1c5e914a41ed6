"""The app catalog: ``catalog/<app>/<version>.yaml``, one manifest per app version.

Indexing only lists directories, so ``reconcile validate`` pays for parsing just the
manifests a repository uses; each is checked once and cached.
"""

from __future__ import annotations

import difflib
import pathlib
import re
from dataclasses import dataclass
from functools import cached_property

from reconciler.load.files import read_limited
from reconciler.load.manifests import CheckedManifest, check_manifest
from reconciler.load.packaged import CATALOG_DIR, MissingData
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.errors import InvalidSpec

__all__ = ["Catalog", "CatalogEntry", "version_key"]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: 1.10.0 after 1.9.2; numbers sort before words at the same place."""
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


@dataclass(frozen=True)
class CatalogEntry:
    app: str
    version: str
    path: pathlib.Path
    display: str  # the path shown in messages, e.g. catalog/gitea/1.22.6.yaml


class Catalog:
    def __init__(self, root: pathlib.Path, display_root: str = "catalog") -> None:
        self.root = root
        self.display_root = display_root
        self._checked: dict[tuple[str, str], CheckedManifest] = {}

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog shipped inside the package; :class:`MissingData` when it is not there."""
        return cls.at(CATALOG_DIR)

    @classmethod
    def at(cls, root: pathlib.Path, display_root: str = "catalog") -> Catalog:
        """A catalog that holds at least one app, else :class:`MissingData`.

        An empty catalog is refused rather than read: it would turn every ``app:``
        deployment into an "unknown app" error that blames the repository.
        """
        catalog = cls(root, display_root)
        if not root.is_dir():
            raise MissingData(f"catalog {root} is not a directory")
        if not catalog.index:
            raise MissingData(f"catalog {root} holds no app manifests (<app>/<version>.yaml)")
        return catalog

    @cached_property
    def index(self) -> dict[str, dict[str, CatalogEntry]]:
        index: dict[str, dict[str, CatalogEntry]] = {}
        if not self.root.is_dir():
            return index
        for app_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            versions: dict[str, CatalogEntry] = {}
            for f in sorted(app_dir.iterdir()):
                if f.suffix not in (".yaml", ".yml") or not f.is_file():
                    continue
                version = f.stem
                if version == "manifest":
                    version = self._declared_version(f) or "manifest"
                display = f"{self.display_root}/{app_dir.name}/{f.name}"
                versions[version] = CatalogEntry(app_dir.name, version, f, display)
            if versions:
                index[app_dir.name] = versions
        return index

    def _declared_version(self, f: pathlib.Path) -> str | None:
        try:
            doc = load_yaml(read_limited(f), f.name)
        except (InvalidSpec, OSError):
            return None
        version = doc.data.get("version") if isinstance(doc.data, dict) else None
        return str(version) if version is not None else None

    def apps(self) -> list[str]:
        return list(self.index)

    def versions(self, app: str) -> list[str]:
        return sorted(self.index.get(app, {}), key=version_key)

    def latest(self, app: str) -> str | None:
        versions = self.versions(app)
        return versions[-1] if versions else None

    def entry(self, app: str, version: str | None = None) -> CatalogEntry | None:
        version = version or self.latest(app)
        if version is None:
            return None
        return self.index.get(app, {}).get(version)

    def suggest_app(self, app: str) -> list[str]:
        return difflib.get_close_matches(app, self.apps(), n=3, cutoff=0.5)

    def check(self, entry: CatalogEntry) -> CheckedManifest:
        key = (entry.app, entry.version)
        if key not in self._checked:
            self._checked[key] = self._check(entry)
        return self._checked[key]

    def _check(self, entry: CatalogEntry) -> CheckedManifest:
        try:
            doc = load_yaml(read_limited(entry.path), entry.display)
        except InvalidSpec as exc:
            return CheckedManifest(None, None, exc.problems)
        checked = check_manifest(doc)
        m = checked.manifest
        if m is not None and (
            m.name != entry.app or (entry.path.stem != "manifest" and m.version != entry.version)
        ):
            problem = doc.problem(
                ("name",),
                "catalog-layout",
                f"manifest {m.name}@{m.version} is stored as {entry.display}",
                f"store it as {self.display_root}/{m.name}/{m.version}.yaml",
            )
            return CheckedManifest(m, checked.compose, [*checked.problems, problem], checked.routed)
        return checked
