"""Onion identities on disk: Tor's key-file format, the v3 address, stable re-reads, modes."""

from __future__ import annotations

import base64
import hashlib
import pathlib
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.onion import (
    HOSTNAME,
    PUBLIC_KEY,
    SECRET_KEY,
    OnionKeyError,
    ensure_identity,
    expand_seed,
    generate_identity,
    onion_address,
    public_from_expanded,
    read_identity,
    render_torrc,
    write_identity,
)

# rend-spec-v3 gives no test vector; this one was produced by tor 0.4.9 itself (a key it
# generated, its hostname file) and is pinned so a regression needs no tor binary to show.
TOR_PUBLIC = bytes.fromhex("bfdb6bf0c9a8bbcd7e525bc08f97c7f4fd2309b42b1ef1e05788cef615c0afae")


def test_secret_key_file_is_tors_header_and_the_64_byte_expanded_key(
    tmp_path: pathlib.Path,
) -> None:
    identity = generate_identity()
    write_identity(tmp_path / "k", identity)
    data = (tmp_path / "k" / SECRET_KEY).read_bytes()
    assert data[:32] == b"== ed25519v1-secret: type0 ==\x00\x00\x00"
    assert len(data) == 32 + 64
    assert data[32:] == identity.expanded_secret
    public = (tmp_path / "k" / PUBLIC_KEY).read_bytes()
    assert public == b"== ed25519v1-public: type0 ==\x00\x00\x00" + identity.public_key
    assert (tmp_path / "k" / HOSTNAME).read_text() == identity.address + "\n"


def test_expanded_key_is_clamped_sha512_of_the_seed_and_matches_the_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    expanded = expand_seed(seed)
    digest = hashlib.sha512(seed).digest()
    assert expanded[32:] == digest[32:]
    assert expanded[0] & 7 == 0 and expanded[31] & 0x80 == 0 and expanded[31] & 0x40
    assert public_from_expanded(expanded) == key.public_key().public_bytes_raw()


def test_address_is_base32_of_key_checksum_and_version() -> None:
    address = onion_address(TOR_PUBLIC)
    assert address == "x7nwx4gjvc5427sslpai7f6h6t6sgcnufmppdycxrdhpmfoav6xpylid.onion"
    raw = base64.b32decode(address.removesuffix(".onion").upper())
    assert raw[:32] == TOR_PUBLIC
    assert raw[34:] == b"\x03"
    expected = hashlib.sha3_256(b".onion checksum" + TOR_PUBLIC + b"\x03").digest()[:2]
    assert raw[32:34] == expected
    # one flipped bit in the key changes the checksum too
    other = onion_address(bytes([TOR_PUBLIC[0] ^ 1]) + TOR_PUBLIC[1:])
    assert base64.b32decode(other.removesuffix(".onion").upper())[32:34] != expected


def test_existing_key_is_read_back_never_replaced(tmp_path: pathlib.Path) -> None:
    first = ensure_identity(tmp_path / "onion")
    secret = (tmp_path / "onion" / SECRET_KEY).read_bytes()
    (tmp_path / "onion" / HOSTNAME).unlink()
    (tmp_path / "onion" / PUBLIC_KEY).unlink()
    again = ensure_identity(tmp_path / "onion")
    assert again.address == first.address
    assert (tmp_path / "onion" / SECRET_KEY).read_bytes() == secret
    assert (tmp_path / "onion" / HOSTNAME).read_text() == first.address + "\n"
    assert read_identity(tmp_path / "onion") == first


def test_files_are_0600_in_a_0700_dir(tmp_path: pathlib.Path) -> None:
    ensure_identity(tmp_path / "onion")
    assert stat.S_IMODE((tmp_path / "onion").stat().st_mode) == 0o700
    for name in (SECRET_KEY, PUBLIC_KEY, HOSTNAME):
        assert stat.S_IMODE((tmp_path / "onion" / name).stat().st_mode) == 0o600, name


def test_mismatched_or_foreign_key_files_are_refused(tmp_path: pathlib.Path) -> None:
    write_identity(tmp_path / "a", generate_identity())
    write_identity(tmp_path / "b", generate_identity())
    (tmp_path / "a" / PUBLIC_KEY).write_bytes((tmp_path / "b" / PUBLIC_KEY).read_bytes())
    with pytest.raises(OnionKeyError, match="not the public half"):
        read_identity(tmp_path / "a")
    (tmp_path / "b" / SECRET_KEY).write_bytes(b"== ed25519v1-secret: type0 ==\x00\x00\x00abc")
    with pytest.raises(OnionKeyError, match="3 key bytes"):
        read_identity(tmp_path / "b")
    assert read_identity(tmp_path / "missing") is None


def test_torrc_has_one_block_per_service_sorted() -> None:
    text = render_torrc({"dpl_b": "10.0.0.2:80", "dpl_a": "10.0.0.2:80"}, disable_network=True)
    assert "DisableNetwork 1" in text
    assert text.index("/dpl_a\n") < text.index("/dpl_b\n")
    assert text.count("HiddenServicePort 80 10.0.0.2:80") == 2
    assert "DisableNetwork" not in render_torrc({})
