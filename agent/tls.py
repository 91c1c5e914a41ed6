"""How an agent trusts its control plane: the system's CAs, a CA file, or a pinned
certificate.

The control plane sends commands that run on this host, so whoever can pose as it owns
the host.  Over ``https://`` the server's certificate is checked against the system's
CAs by default; ``--ca-file`` (``RECONCILE_CA_FILE``) trusts a private CA instead (the
usual case for a self-hosted control plane), and ``--server-fingerprint``
(``RECONCILE_SERVER_FINGERPRINT``) pins the server's certificate by its SHA-256, for a
self-signed certificate with no CA at all.  With a pin alone the chain and the host name
are not checked: the pin is the trust.  With both, both must hold.

The pin is checked inside the TLS handshake (``SSLContext.sslsocket_class``), so a
mismatch fails the connection before a single byte of the request (the agent's
secret, a bootstrap token) is written.

Plain ``http://`` is accepted, loudly: only to the loopback interface is it safe.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import pathlib
import re
import ssl
from urllib.parse import urlsplit

__all__ = [
    "TrustError",
    "agent_trust",
    "fingerprint_of",
    "parse_fingerprint",
    "plain_http_warning",
    "server_ssl_context",
]

log = logging.getLogger("reconcile-agent")

_HEX = re.compile(r"^[0-9a-f]{64}$")


class TrustError(ValueError):
    """The trust settings cannot work (a bad fingerprint, an unreadable CA file, TLS
    options for an ``http://`` URL): the agent refuses to start, exit 2."""


def parse_fingerprint(text: str) -> bytes:
    """``sha256:AB:CD:…``, ``AB:CD:…`` or 64 hex digits -> the 32-byte digest."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not _HEX.match(value):
        raise TrustError(
            f"--server-fingerprint {text!r} is not a SHA-256 fingerprint (64 hex digits, "
            "colons allowed, e.g. from `openssl x509 -noout -fingerprint -sha256 -in cert.pem`)"
        )
    return bytes.fromhex(value)


def fingerprint_of(der: bytes) -> str:
    """The ``sha256:AB:CD:…`` form of a DER certificate's fingerprint, for messages."""
    return "sha256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _pinned(expected: bytes) -> type[ssl.SSLSocket]:
    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True)
            if der is None or not hmac.compare_digest(hashlib.sha256(der).digest(), expected):
                got = fingerprint_of(der) if der else "no certificate"
                raise ssl.SSLCertVerificationError(
                    f"the control plane's certificate is not the pinned one (got {got})"
                )

    return PinnedSocket


def server_ssl_context(
    ca_file: pathlib.Path | None = None, fingerprint: str | None = None
) -> ssl.SSLContext | bool:
    """What ``httpx`` should verify the server with: True (the system's CAs) or a context."""
    if ca_file is None and not fingerprint:
        return True
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TrustError(
            f"--ca-file {ca_file}: cannot load it as PEM certificates: {exc}"
        ) from None
    if fingerprint:
        expected = parse_fingerprint(fingerprint)
        if ca_file is None:  # the pin alone is the trust
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.sslsocket_class = _pinned(expected)
    return context


def _loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_warning(url: str, *, tls_options: bool = False) -> str | None:
    """The warning to log for ``url``, or None when it is https or loopback.

    Raises :class:`TrustError` when TLS options were given for a URL that is not https:
    they would be silently ignored, which is worse than refusing.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return None
    if scheme != "http":
        raise TrustError(f"control plane URL {url!r}: only http:// and https:// are supported")
    if tls_options:
        raise TrustError(
            f"--ca-file and --server-fingerprint need an https:// control plane URL, not {url!r}"
        )
    if _loopback(parts.hostname or ""):
        return None
    return (
        f"INSECURE: the control plane {url} is plain HTTP to another machine.  Anyone on "
        "the path can read this agent's secret and send it commands, which run on this "
        "host.  Serve the control plane over https:// and start the agent with --ca-file "
        "or --server-fingerprint."
    )


def agent_trust(
    server: str | None, ca_file: pathlib.Path | None, fingerprint: str | None
) -> ssl.SSLContext | bool:
    """What the agent verifies ``server`` with; logs the plain-HTTP warning first.

    Called before anything is sent: a bootstrap token is as secret as the credentials.
    """
    if server:
        warning = plain_http_warning(server, tls_options=ca_file is not None or bool(fingerprint))
        if warning:
            log.warning("%s", warning)
    return server_ssl_context(ca_file, fingerprint)
