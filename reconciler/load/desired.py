"""Getting the desired state for a command: open the source, load it, resolve git refs.

The I/O edge of ``plan`` and ``apply``: a local directory or a git URL (``--ref``,
``--path``) is opened, the repository loaded and validated, and every ``git_url``
deployment's ref resolved to a commit so the plan says exactly what will run.  A ref
that cannot be resolved is not guessed at: that deployment's action is ``blocked``.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from reconciler.load.catalog import Catalog
from reconciler.load.repo import DesiredState, load_repository
from reconciler.model.deployment import GitDeployment
from reconciler.model.errors import ReconcilerError

__all__ = ["Desired", "load_desired"]


@dataclass
class Desired:
    state: DesiredState
    revision: str | None  # the repository's commit, when it came from git
    source: str
    git_revisions: dict[str, str] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)


def load_desired(
    path: str,
    *,
    ref: str | None = None,
    subpath: str | None = None,
    catalog: Catalog | None = None,
    resolve_git: bool = True,
    cache_dir: pathlib.Path | None = None,
) -> Desired:
    """Raises ReconcilerError when the source itself cannot be opened.

    ``cache_dir``: where git sources are fetched (default: the user's cache dir); the
    server keeps its own under its data dir.
    """
    from reconciler.load.sources import open_source

    checkout = open_source(path, ref=ref, subpath=subpath, cache_dir=cache_dir)
    state = load_repository(checkout.path, catalog=catalog)
    desired = Desired(state, checkout.revision, checkout.source)
    if state.ok and resolve_git:
        desired.git_revisions, desired.unresolved = _resolve(state)
    return desired


def _resolve(state: DesiredState) -> tuple[dict[str, str], dict[str, str]]:
    from reconciler.load.sources import resolve_remote_ref

    shas: dict[str, str] = {}
    failed: dict[str, str] = {}
    seen: dict[tuple[str, str], str] = {}
    for item in state.deployments:
        spec = item.spec
        if not isinstance(spec, GitDeployment):
            continue
        key = (spec.git_url, spec.git_ref)
        if key in seen:
            shas[spec.name] = seen[key]
            continue
        try:
            sha = resolve_remote_ref(spec.git_url, spec.git_ref, timeout=20)
        except ReconcilerError as exc:
            failed[spec.name] = f"cannot resolve git_ref {spec.git_ref!r}: {exc}"
            continue
        seen[key] = sha
        shas[spec.name] = sha
    return shas, failed
