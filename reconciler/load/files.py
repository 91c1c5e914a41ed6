"""Reading files from a repository without trusting it: bounded sizes, no escaping paths."""

from __future__ import annotations

import os
import pathlib

from reconciler.load.yamlsafe import MAX_BYTES

__all__ = ["PathEscape", "inside", "read_limited", "resolve_inside"]


class PathEscape(ValueError):
    """A path (or a symlink on it) leads outside the directory it must stay in."""


def read_limited(path: pathlib.Path, limit: int = MAX_BYTES) -> bytes:
    """Read at most ``limit + 1`` bytes: enough to know a file is too large, never 2 GB."""
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


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
