"""Unpacking a command's bundle (a tar of repository files) into a scratch repo root.

The bundle comes from the control plane, but it holds files from a git repository that
anyone with push access shapes, and a rogue server (or a MITM on plain HTTP) can send
anything, so it is unpacked as hostile input.  Four passes, each a refusal with a reason
(:class:`BundleError`) and nothing left under ``target`` when it refuses:

1. **Shape**: the raw tar headers are walked with constant memory over the
   decompressed stream, before :mod:`tarfile` parses anything.  The stream is capped
   (``max_bytes``), so is the member count, and every pax or GNU long-name header is at
   most :data:`MAX_HEADER_BYTES`: ``tarfile`` reads such a header whole into memory, and a
   1 MiB gzip of one pax header used 1.09 GiB.  A pax ``size`` (which would make our
   walk and ``tarfile``'s disagree) and global headers are refused.
2. **Members**, from the list alone: relative paths without ``..``; files, directories
   and the symlinks the server marked (:mod:`reconciler.model.bundle`) only; nothing
   under a file or a link; no name twice; each link resolved through the *member list*
   to a file or directory inside its shipped directory, through real directories only.
3. **Write** without following anything: every path is opened component by component
   from a directory fd with ``O_NOFOLLOW`` and created with ``O_EXCL``; symlinks are made
   last.  A link made during extraction is never followed, so the CVE-2025-4517 link
   chain (which passes Python 3.11's ``data`` filter) has nothing to write through.
4. **Verify**: every link is resolved by the kernel (``realpath(strict=True)``: a chain
   too long to resolve is an error, not a silently shorter path) and must end inside the
   real target directory.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pathlib
import posixpath
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY, link_scope

__all__ = [
    "MAX_EXTRACTED_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_MEMBERS",
    "BundleError",
    "extract_bundle",
]

MAX_EXTRACTED_BYTES = 512 * 1024 * 1024  # the decompressed tar stream, headers included
MAX_MEMBERS = 100_000  # files, directories and links
MAX_HEADER_BYTES = 64 * 1024  # one pax / GNU long-name header (a long path needs < 4 KiB)

_BLOCK = tarfile.BLOCKSIZE
# A member has at most a pax header, or a GNU long name and a long link name; tarfile
# reads a run of them by recursion, so a thousand in a row is a RecursionError.
_MAX_EXTENDED_RUN = 3
_CHUNK = 64 * 1024
_PAX = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_EXTENDED = (*_PAX, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_RECORD = re.compile(rb"(\d+) ")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BundleError(Exception):
    """The bundle is refused: not a tar, too big, or a member would escape or clash."""


# ---------------------------------------------------------------- the capped stream


class _Capped:
    """The decompressed bytes of the archive, refused past ``limit``."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._inner: BinaryIO = raw
        self.limit = limit
        self.total = 0
        magic = raw.read(6)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            self._inner = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        elif magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
            raise BundleError("the bundle is compressed with bzip2 or xz: only tar and gzip")

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.total + 1
        data = self._inner.read(room if size is None or size < 0 else min(size, room))
        self.total += len(data)
        if self.total > self.limit:
            raise BundleError(f"the bundle unpacks to more than {_mib(self.limit)}")
        return data

    def exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0:
            data = self.read(min(left, _CHUNK))
            if not data:
                break
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._inner is not self._raw:
            self._inner.close()
        self._raw.close()


@contextlib.contextmanager
def _stream(archive: pathlib.Path, limit: int) -> Iterator[_Capped]:
    raw = open(archive, "rb")  # noqa: SIM115 - closed by _Capped.close
    try:
        capped = _Capped(raw, limit)
    except BaseException:
        raw.close()
        raise
    try:
        yield capped
    finally:
        capped.close()


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


# ---------------------------------------------------------------- pass 1: shape


def _pax_keys(data: bytes) -> Iterator[bytes]:
    """The keywords of a pax header's ``"<len> <key>=<value>\\n"`` records."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_RECORD.match(data, pos)
        length = int(match.group(1)) if match else 0
        if match is None or length <= len(match.group(0)) or pos + length > len(data):
            raise BundleError("the bundle has a malformed pax header")
        yield data[match.end() : pos + length].partition(b"=")[0]
        pos += length


def _check_shape(archive: pathlib.Path, max_bytes: int, max_members: int) -> None:
    members = extended = run = 0
    with _stream(archive, max_bytes) as stream:
        while True:
            block = stream.exactly(_BLOCK)
            if len(block) < _BLOCK:
                raise BundleError("the bundle is truncated (no end-of-archive marker)")
            if block == tarfile.NUL * _BLOCK:
                return  # where tarfile stops too
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise BundleError(f"the bundle has a bad tar header: {exc}") from None
            if info.type in _EXTENDED:
                extended += 1
                run += 1
                if run > _MAX_EXTENDED_RUN:
                    raise BundleError(
                        f"the bundle has more than {_MAX_EXTENDED_RUN} headers in a row"
                    )
                if info.size > MAX_HEADER_BYTES:
                    raise BundleError(
                        f"a bundle header of {info.size} bytes refused (at most "
                        f"{MAX_HEADER_BYTES}): a pax header bomb?"
                    )
                data = stream.exactly(tarfile.BLOCKSIZE * -(-info.size // _BLOCK))
                if info.type in _PAX:
                    for key in _pax_keys(data[: info.size]):
                        if key == b"size" or key.startswith(b"GNU.sparse"):
                            raise BundleError(f"the bundle's pax header sets {key.decode()!r}")
                continue
            if info.type in (tarfile.XGLTYPE, tarfile.GNUTYPE_SPARSE):
                raise BundleError(f"bundle member {info.name!r}: a global pax or sparse header")
            members += 1
            run = 0
            if members > max_members or extended > max_members:
                raise BundleError(f"the bundle has more than {max_members} members")
            if info.isreg():
                skip = _BLOCK * -(-info.size // _BLOCK)
                while skip > 0:
                    got = len(stream.read(min(skip, _CHUNK)))
                    if not got:
                        raise BundleError("the bundle is truncated inside a file")
                    skip -= got
            elif info.size:
                raise BundleError(f"bundle member {info.name!r} is not a file but has data")


# ---------------------------------------------------------------- pass 2: members


def _name(member: tarfile.TarInfo) -> str:
    name = member.name
    if "\x00" in name or not name:
        raise BundleError(f"bundle member {name!r} has an empty or NUL name")
    if name.startswith("/") or posixpath.isabs(name):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if ".." in pathlib.PurePosixPath(name).parts:
        raise BundleError(f"bundle member {name!r} contains '..'")
    return posixpath.normpath(name)


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _resolve_link(name: str, target: str, kinds: dict[str, str], scope: str) -> None:
    """Follow ``target`` from the link's directory through the member list: every step
    through a real directory, the end a file or directory inside ``scope``."""
    if not target or "\x00" in target or posixpath.isabs(target):
        raise BundleError(f"bundle symlink {name!r} -> {target!r} points outside the bundle")
    here = posixpath.dirname(name).split("/") if "/" in name else []
    steps = [p for p in target.split("/") if p not in ("", ".")]
    for i, part in enumerate(steps):
        if part == "..":
            if not here:
                raise BundleError(f"bundle symlink {name!r} -> {target!r} leaves the bundle")
            here.pop()
            continue
        here.append(part)
        kind = kinds.get("/".join(here))
        if kind is None or (kind != "dir" and i < len(steps) - 1):
            raise BundleError(
                f"bundle symlink {name!r} -> {target!r} does not lead to a file or directory "
                "in the bundle through directories only"
            )
    end = "/".join(here)
    if kinds.get(end, "dir") == "link":
        raise BundleError(f"bundle symlink {name!r} -> {target!r} points at another link")
    if scope and not (end == scope or end.startswith(scope + "/")):
        where = f"its shipped directory {scope!r}"
        raise BundleError(f"bundle symlink {name!r} -> {target!r} leaves {where}")


def _check_members(
    archive: pathlib.Path, max_bytes: int, link_roots: Sequence[str]
) -> dict[str, str]:
    """Every member's normalised name -> ``file``, ``dir`` or ``link``."""
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    total = 0
    with _stream(archive, max_bytes) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            name = _name(member)
            if name == ".":
                continue  # the root itself
            if name in kinds:
                raise BundleError(f"bundle member {name!r} appears twice")
            if member.islnk():
                raise BundleError(f"bundle member {name!r} is a hard link; bundles have none")
            if member.issym():
                if member.pax_headers.get(LINK_PAX_KEY) != LINK_INSIDE:
                    raise BundleError(
                        f"bundle symlink {name!r} is not marked as one the repository had "
                        "pointing inside; refused"
                    )
                kinds[name] = "link"
                links[name] = member.linkname
            elif member.isdir():
                kinds[name] = "dir"
            elif member.isfile() and not member.issparse():
                kinds[name] = "file"
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"the bundle unpacks to more than {_mib(max_bytes)}")
            else:
                raise BundleError(f"bundle member {name!r} is not a file, directory or link")
    for name in list(kinds):
        for parent in _parents(name):
            kind = kinds.setdefault(parent, "dir")  # implied by a deeper member
            if kind != "dir":
                raise BundleError(f"bundle member {name!r} lies under {parent!r}, a {kind}")
    for name, target in links.items():
        _resolve_link(name, target, kinds, link_scope(name, link_roots))
    return kinds


# ---------------------------------------------------------------- pass 3: write


def _open_dir(root_fd: int, parts: Sequence[str]) -> int:
    """A fd of ``root/parts``, each component made when missing and never followed."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write(archive: pathlib.Path, target: pathlib.Path, max_bytes: int) -> None:
    links: list[tuple[list[str], str]] = []
    root_fd = os.open(target, _DIR_FLAGS)
    try:
        with _stream(archive, max_bytes) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = _name(member)
                if name == ".":
                    continue
                parts = name.split("/")
                if member.isdir():
                    os.close(_open_dir(root_fd, parts))
                    continue
                if member.issym():
                    links.append((parts, member.linkname))
                    continue
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - pass 2 admits files only here
                    raise BundleError(f"bundle member {name!r} has no data")
                parent = _open_dir(root_fd, parts[:-1])
                try:
                    mode = 0o755 if member.mode & 0o111 else 0o644
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(parts[-1], flags, mode, dir_fd=parent)
                finally:
                    os.close(parent)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        for parts, linkname in links:  # last: nothing above ever walks through one
            parent = _open_dir(root_fd, parts[:-1])
            try:
                os.symlink(linkname, parts[-1], dir_fd=parent)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)


# ---------------------------------------------------------------- pass 4: verify


def _verify(target: pathlib.Path, kinds: dict[str, str], link_roots: Sequence[str]) -> None:
    """Every member resolved by the kernel lies inside the real target (a link: inside
    its shipped directory).  ``strict``: a chain too long to resolve is an error here."""
    real_root = pathlib.Path(os.path.realpath(target, strict=True))
    for name, kind in kinds.items():
        scope = real_root / link_scope(name, link_roots) if kind == "link" else real_root
        try:
            real = pathlib.Path(os.path.realpath(target / name, strict=True))
        except OSError as exc:
            raise BundleError(f"bundle member {name!r} cannot be resolved: {exc}") from None
        if real != scope and scope not in real.parents:
            raise BundleError(f"bundle member {name!r} resolves to {real}, outside {scope}")


def _clear(target: pathlib.Path) -> None:
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def extract_bundle(
    archive: pathlib.Path,
    target: pathlib.Path,
    *,
    max_bytes: int = MAX_EXTRACTED_BYTES,
    max_members: int = MAX_MEMBERS,
    link_roots: Sequence[str] = (),
) -> int:
    """Check ``archive`` then unpack it under ``target``; return the number of members.

    ``link_roots`` are the shipped directories (``RenderedDeployment.shipped_dirs``): a
    symlink must stay inside the innermost one that holds it.  Raises
    :class:`BundleError` on anything refused; ``target`` is left empty then (the caller
    unpacks into a fresh scratch directory, so nothing it already had is lost).
    """
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise BundleError(f"{target} is not empty; bundles unpack into a fresh directory")
    try:
        _check_shape(archive, max_bytes, max_members)
        kinds = _check_members(archive, max_bytes, link_roots)
        _write(archive, target, max_bytes)
        _verify(target, kinds, link_roots)
    except BundleError:
        _clear(target)
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError; a file where a
        # directory is expected ENOTDIR: each a refusal, never a crash of the agent.
        _clear(target)
        raise BundleError(
            f"the bundle is not a readable tar archive: {type(exc).__name__}: {exc}"
        ) from None
    return len(kinds)
