"""Unpacking a command's bundle (a tar of repository files) into a scratch repo root.

The bundle comes from the control plane, but it holds files from a git repository that
anyone with push access shapes, so it is unpacked as untrusted input: every member is
checked *before* anything is written (no absolute paths, no ``..``, no links that leave
the root, no devices or fifos, a cap on the total size and the member count), and the
extraction itself runs with :func:`tarfile.data_filter` as a second line of defence (it
also catches link chains that only escape once earlier members exist on disk).
"""

from __future__ import annotations

import pathlib
import posixpath
import tarfile

__all__ = ["MAX_EXTRACTED_BYTES", "MAX_MEMBERS", "BundleError", "extract_bundle"]

MAX_EXTRACTED_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 100_000


class BundleError(Exception):
    """The bundle is refused: it is not a tar, or a member would escape or is too big."""


def _inside(path: str) -> bool:
    """A relative posix path that stays inside the root once normalised."""
    normal = posixpath.normpath(path)
    return normal != ".." and not normal.startswith("../") and not posixpath.isabs(normal)


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or posixpath.isabs(name):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if ".." in pathlib.PurePosixPath(name).parts:
        raise BundleError(f"bundle member {name!r} contains '..'")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise BundleError(f"bundle member {name!r} is not a file, directory or link")
    if member.issym():
        target = member.linkname
        if posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(name), target)):
            raise BundleError(f"bundle symlink {name!r} -> {target!r} points outside the bundle")
    if member.islnk() and not _inside(member.linkname):
        raise BundleError(f"bundle hard link {name!r} -> {member.linkname!r} leaves the bundle")


def extract_bundle(
    archive: pathlib.Path,
    target: pathlib.Path,
    *,
    max_bytes: int = MAX_EXTRACTED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> int:
    """Check every member of ``archive`` then unpack it under ``target``; return the number
    of members.  Raises :class:`BundleError` when any member is bad: nothing is written when
    the checks catch it; the caller unpacks into a scratch directory it removes anyway."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > max_members:
                    raise BundleError(f"the bundle has more than {max_members} members")
                _check_member(member)
                total += max(member.size, 0) if member.isfile() else 0
                if total > max_bytes:
                    raise BundleError(
                        f"the bundle unpacks to more than {max_bytes // (1024 * 1024)} MiB"
                    )
            tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise BundleError(f"bundle refused: {exc}") from None
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle is not a readable tar archive: {exc}") from None
    return len(members)
