"""Hostile bundles that take effort to build, shared by the extraction and process tests."""

from __future__ import annotations

import gzip
import tarfile


def _gzip_members(parts: list[bytes], repeat: tuple[bytes, int]) -> bytes:
    """A multi-member gzip: the repeated chunk is compressed once (a bomb in a second)."""
    head, *tail = parts
    chunk, times = repeat
    body = gzip.compress(chunk, 9) * times
    return gzip.compress(head) + body + b"".join(map(gzip.compress, tail))


def pax_bomb(size: int = 1170 * 1024 * 1024) -> bytes:
    """A gzip of one pax header ``size`` bytes long: about 1 MiB on the wire."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = size
    record = f"{size} path=".encode()
    chunk = b"a" * (8 << 20)
    fill = size - len(record) - 1
    times, rest = divmod(fill, len(chunk))
    tail = b"a" * rest + b"\n" + b"\0" * (-size % 512)
    tail += tarfile.TarInfo("x").tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 1024
    return _gzip_members([header.tobuf(format=tarfile.USTAR_FORMAT) + record, tail], (chunk, times))
