"""Our v3 address derivation against Debian's real ``tor`` (offline: DisableNetwork 1).

Both directions: keys we generate and write in Tor's format are loaded by Tor, which
writes the same ``hostname`` we derived; keys Tor generates itself are read by us to
the address Tor wrote.
"""

from __future__ import annotations

import pathlib
import time

from agent.onion import HOSTNAME, ensure_identity, read_identity
from tests.onion.torproc import run_tor_until_hostnames

KEYS = 60


def test_tor_derives_our_address_for_every_key_we_write(tmp_path: pathlib.Path) -> None:
    ours: dict[pathlib.Path, str] = {}
    for i in range(KEYS):
        directory = tmp_path / "hs" / f"dpl_{i:016x}"
        ours[directory] = ensure_identity(directory).address
        (directory / HOSTNAME).unlink()  # the file Tor writes must be Tor's own
    start = time.monotonic()
    theirs = run_tor_until_hostnames(tmp_path, ours)
    elapsed = time.monotonic() - start
    assert theirs == ours
    assert len(set(ours.values())) == KEYS
    print(f"tor loaded {KEYS} keys and wrote their hostnames in {elapsed:.2f} s")


def test_we_read_keys_tor_generated_to_tors_address(tmp_path: pathlib.Path) -> None:
    dirs = [tmp_path / "hs" / f"tor{i}" for i in range(8)]
    (tmp_path / "hs").mkdir()
    theirs = run_tor_until_hostnames(tmp_path, dirs)
    for directory, hostname in theirs.items():
        identity = read_identity(directory)
        assert identity is not None
        assert identity.address == hostname
        # and reading it again through ensure_identity keeps Tor's key, not a new one
        assert ensure_identity(directory).address == hostname
