"""Reading files from a repository without trusting it: bounded sizes, no escaping paths."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Collection

from reconciler.load.budget import Budget, BudgetExceeded
from reconciler.load.yamlsafe import MAX_BYTES, Document, load_yaml
from reconciler.model.errors import InvalidSpec, Problem

__all__ = [
    "DEPLOYMENT_FILES",
    "PathEscape",
    "inside",
    "load_once",
    "read_limited",
    "resolve_inside",
    "tree_digest",
    "tree_digests",
]


class PathEscape(ValueError):
    """A path (or a symlink on it) leads outside the directory it must stay in."""


def read_limited(path: pathlib.Path, limit: int = MAX_BYTES) -> bytes:
    """Read at most ``limit + 1`` bytes: enough to know a file is too large, never 2 GB."""
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


def load_once(resolved: pathlib.Path, name: str, budget: Budget) -> Document:
    """``load_yaml`` of the file at ``resolved`` (a resolved path: the callers have one
    already, and resolving again cost 10% of loading 1,000 files), parsed once however
    many deployments or ``include:`` paths reach it.

    An ``include:`` tree with N files per level reached every file once per path to it:
    N^8 parses for 8 levels.  Parsed once, but paid for at each use: a compose file that
    1,000 deployments share is rendered and hashed 1,000 times, so its expanded size is
    charged to ``budget`` each time.  A file that failed fails again from the cache, with
    the same problems.
    """
    cached = budget.documents.get(resolved)
    if cached is None:
        try:
            cached = load_yaml(read_limited(resolved), name, budget)
        except InvalidSpec as exc:
            cached = exc
        budget.documents[resolved] = cached
        if isinstance(cached, Document):
            return cached
    if isinstance(cached, InvalidSpec):
        raise InvalidSpec(list(cached.problems))
    doc: Document = cached
    try:
        budget.charge(*doc.expanded)
    except BudgetExceeded as exc:
        raise InvalidSpec(Problem(name, 1, 1, exc.rule, exc.message, exc.fix)) from None
    return doc


def inside(child: pathlib.Path, parent: pathlib.Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def resolve_inside(
    base: pathlib.Path, rel: str, root: pathlib.Path, what: str = "the repository"
) -> pathlib.Path:
    """``base / rel`` resolved (symlinks followed); raise PathEscape if it leaves ``root``."""
    if os.path.isabs(rel) or rel.startswith("~"):
        raise PathEscape(f"{rel!r} is an absolute path")
    target = (base / rel).resolve()
    if not inside(target, root.resolve()):
        lexical = pathlib.Path(os.path.normpath((base / rel).absolute()))
        via = " through a symlink" if inside(lexical, root.absolute()) else ""
        raise PathEscape(f"{rel!r} leads outside {what}{via}")
    return target


def tree_digest(root: pathlib.Path, only: Collection[str] | None = None) -> str:
    """sha256 over a directory's files (relative path, executable bit, content).

    A change to any file of a build context or a compose bundle changes the spec hash,
    so an edited ``index.html`` is an update, and an untouched one is not.  ``only``:
    the files that count (root-relative, posix), e.g. those a build sends past its
    ``.dockerignore``; a change to any other is no update.
    """
    return tree_digests(root, only)[0]


# The deployment file itself sits in its bundle directory but is never shipped to the app.
DEPLOYMENT_FILES = frozenset({"deployment.yaml", "deployment.yml", "deployment.json"})


def tree_digests(root: pathlib.Path, only: Collection[str] | None = None) -> tuple[str, str]:
    """(:func:`tree_digest`, the same without the top-level deployment file) in one walk.

    The second says whether the files an app sees changed: editing only ``domain:`` in
    ``deployment.yaml`` must not count as new files for the app (the executor then moves
    the route without restarting it).
    """
    import hashlib

    outer = hashlib.sha256()
    shipped = hashlib.sha256()
    entries: list[tuple[str, pathlib.Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in filenames:
            path = pathlib.Path(dirpath, name)
            entries.append((path.relative_to(root).as_posix(), path))
    if only is not None:
        wanted = only if isinstance(only, set | frozenset) else set(only)
        entries = [(rel, path) for rel, path in entries if rel in wanted]
    for rel, path in sorted(entries):
        if path.is_symlink():
            line = f"L {rel} {os.readlink(path)}\n".encode()
        else:
            inner = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 16), b""):
                    inner.update(chunk)
            mode = "x" if os.access(path, os.X_OK) else "-"
            line = f"F {rel} {mode} {inner.hexdigest()}\n".encode()
        outer.update(line)
        if rel not in DEPLOYMENT_FILES:
            shipped.update(line)
    return outer.hexdigest(), shipped.hexdigest()
