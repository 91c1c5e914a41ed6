"""What a build context weighs when ``docker build`` sends it.

The limit on a build context (100 MB) is about what a build would send to the daemon,
so it follows ``.dockerignore`` as ``docker build`` does: its pattern syntax (``*``,
``?``, ``**``, ``!`` exceptions, a later pattern winning, a directory pattern covering
what is under it), with the Dockerfile and the ignore file itself always sent, and the
BuildKit rule that ``<Dockerfile>.dockerignore`` beside the Dockerfile replaces the
context's ``.dockerignore``.  The matching is the Docker SDK's
(``docker.utils.build.exclude_paths``, what ``docker-py`` uses to build the same tar),
not a copy of it.

The size counted is that of the tar stream the classic builder sends: each entry (file,
directory, symlink) is a 512-byte header, a long name adds a PAX header of its own, a
file's data is rounded up to whole 512-byte blocks, and two zero blocks end the stream.
BuildKit sends fewer bytes for the same files (it skips what the daemon has), so this
is an upper bound for either builder, and the same number on every machine.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

__all__ = ["BLOCK", "ContextSize", "context_size", "ignore_patterns"]

BLOCK = 512  # bytes: a tar header, and the unit file data is padded to
_END = 2 * BLOCK  # two zero blocks close a tar stream
_USTAR_NAME = 100  # bytes a plain tar header holds for a name; longer takes a PAX header
_LARGEST = 3  # entries named in the size error


@dataclass(frozen=True)
class ContextSize:
    """``total``: bytes the tar stream holds; ``largest``: (path, bytes), biggest first;
    ``sent``: every entry the stream holds (context-relative, posix)."""

    total: int
    sent: tuple[str, ...] = ()
    ignore_file: str | None = None  # context-relative, posix, when one applied
    largest: list[tuple[str, int]] = field(default_factory=list)
    escapes: list[pathlib.Path] = field(default_factory=list)  # symlinks leaving the context


def ignore_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore``, read as the Docker CLI reads them.

    One per line, surrounding white space trimmed, empty lines and ``#`` comments
    skipped (a ``#`` elsewhere is part of the pattern), a leading byte order mark
    dropped.
    """
    out: list[str] = []
    for raw in text.removeprefix("\ufeff").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _ignore_file(context: pathlib.Path, dockerfile: str) -> pathlib.Path | None:
    beside = context / (dockerfile + ".dockerignore")
    if beside.is_file():
        return beside
    root = context / ".dockerignore"
    return root if root.is_file() else None


def _entry_bytes(rel: str, path: pathlib.Path) -> int:
    """Bytes one entry adds to the tar stream (``path`` is not followed if a link)."""
    header = BLOCK
    name = rel.encode("utf-8", "surrogateescape")
    if len(name) > _USTAR_NAME:  # PAX extended header: its own header, then the record
        header += BLOCK + -(-(len(name) + 32) // BLOCK) * BLOCK
    try:
        st = path.lstat()
    except OSError:
        return 0
    if path.is_symlink() or not path.is_file():
        return header
    return header + -(-st.st_size // BLOCK) * BLOCK


def context_size(
    context: pathlib.Path, dockerfile: str = "Dockerfile", *, stop_above: int | None = None
) -> ContextSize:
    """What ``docker build`` would send from ``context`` (see the module docstring).

    ``stop_above``: stop counting once the total passes it (the caller only needs to
    know that it did); the total is then a lower bound.
    """
    real = context.resolve()
    escapes: list[pathlib.Path] = []
    every: list[str] = []
    for dirpath, dirnames, filenames in os.walk(context):
        for name in sorted([*dirnames, *filenames]):
            p = pathlib.Path(dirpath, name)
            if p.is_symlink() and not p.resolve().is_relative_to(real):
                escapes.append(p)
            every.append(p.relative_to(context).as_posix())
    ignore = _ignore_file(context, dockerfile)
    if ignore is None:
        included = every
    else:
        # Imported here: the Docker SDK costs ~100 ms to import (it loads its API client),
        # which `reconcile validate` pays only for a context that has an ignore file.
        from docker.utils.build import exclude_paths

        patterns = ignore_patterns(ignore.read_text(encoding="utf-8", errors="replace"))
        if ignore.name != ".dockerignore":  # BuildKit: the Dockerfile's own ignore file
            patterns.append(f"!{ignore.relative_to(context).as_posix()}")
        sent = exclude_paths(str(context), patterns, dockerfile)
        kept = {pathlib.PurePath(p).as_posix() for p in sent}
        included = [p for p in every if p in kept]
    total = _END
    sizes: list[tuple[str, int]] = []
    for rel in included:
        n = _entry_bytes(rel, context / rel)
        total += n
        sizes.append((rel, n))
        if stop_above is not None and total > stop_above:
            break
    sizes.sort(key=lambda item: (-item[1], item[0]))
    return ContextSize(
        total=total,
        sent=tuple(included),
        ignore_file=ignore.relative_to(context).as_posix() if ignore is not None else None,
        largest=sizes[:_LARGEST],
        escapes=escapes,
    )
