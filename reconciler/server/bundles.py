"""Packing a command's bundle: the repository directories an agent needs, as a tar.

The format is fixed in :mod:`reconciler.model.bundle`, which the agent checks against
member by member.  Regular files and directories, owners and times normalised; hard-linked
files go as plain copies (``tarfile`` would write the second one as a hard link, which
agents refuse).  A symlink travels as a symlink only when it resolves inside the shipped
directory that holds it, re-written relative to its real target and marked with
:data:`~reconciler.model.bundle.LINK_PAX_KEY`; one to a file elsewhere in the repository
travels as that file's content; one that leaves the repository, dangles, loops, or
points at a directory outside its shipped directory is refused (the agent would
otherwise unpack a link to somewhere on *its* host).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import stat
import tarfile
from collections.abc import Iterable

from reconciler.load.files import inside
from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY, link_scope
from reconciler.model.errors import InvalidSpec
from reconciler.render import RenderedDeployment

__all__ = ["build_bundle", "bundle_dirs"]


def bundle_dirs(want: RenderedDeployment) -> list[str]:
    """The repository directories an agent needs for this deployment."""
    return want.shipped_dirs()


def _info(arc: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arc)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE or mode & 0o111 else 0o644
    info.size = size
    return info


def build_bundle(root: pathlib.Path, dirs: Iterable[str], dest: pathlib.Path) -> None:
    """A tar of ``dirs`` (repo-relative), written atomically to ``dest``.

    Raises :class:`InvalidSpec` for a link or file that cannot be shipped (see the module
    docstring); nothing is left at ``dest`` then.
    """
    root = root.resolve()
    shipped = sorted(dirs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    seen: set[str] = set()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for rel in shipped:
                base = (root / rel).resolve()
                if not inside(base, root) or not base.is_dir():
                    raise InvalidSpec(f"bundle directory {rel!r} is not a directory in the repo")
                for dirpath, dirnames, filenames in os.walk(base):
                    here = pathlib.Path(dirpath)
                    arc_dir = here.relative_to(root).as_posix()
                    if arc_dir not in seen:
                        seen.add(arc_dir)
                        tar.addfile(_info(arc_dir, tarfile.DIRTYPE, 0o755))
                    dirnames.sort()
                    for name in [*sorted(filenames), *list(dirnames)]:
                        path = here / name
                        arc = f"{arc_dir}/{name}"
                        mode = os.lstat(path).st_mode
                        if stat.S_ISDIR(mode) or arc in seen:
                            continue  # a directory is walked next
                        seen.add(arc)
                        if stat.S_ISLNK(mode):
                            _add_link(tar, root, shipped, here, path, arc)
                        elif stat.S_ISREG(mode):
                            _add_file(tar, path, arc)
                        else:
                            raise InvalidSpec(f"{arc}: not a regular file or directory")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _add_file(tar: tarfile.TarFile, source: pathlib.Path, arc: str) -> None:
    with open(source, "rb") as fh:
        st = os.fstat(fh.fileno())
        tar.addfile(_info(arc, tarfile.REGTYPE, st.st_mode, st.st_size), fh)


def _add_link(
    tar: tarfile.TarFile,
    root: pathlib.Path,
    shipped: list[str],
    here: pathlib.Path,
    path: pathlib.Path,
    arc: str,
) -> None:
    refused = InvalidSpec(
        f"{arc}: symlink to {os.readlink(path)!r} refused: only links that stay inside "
        "the repository (to a file, or to a directory shipped with it) can be shipped"
    )
    try:
        target = pathlib.Path(os.path.realpath(path, strict=True))
    except OSError:  # dangling, a loop, or too long to resolve
        raise refused from None
    if not inside(target, root):
        raise refused
    scope = root / link_scope(arc, shipped)
    if inside(target, scope.resolve()):
        info = _info(arc, tarfile.SYMTYPE, 0o777)
        info.linkname = os.path.relpath(target, here.resolve())
        info.pax_headers = {LINK_PAX_KEY: LINK_INSIDE}
        tar.addfile(info)
    elif target.is_file():
        _add_file(tar, target, arc)
    else:
        raise refused
