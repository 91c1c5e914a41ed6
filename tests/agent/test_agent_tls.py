"""The agent verifies its control plane: a real ``reconcile-agent`` process against a real
uvicorn serving HTTPS on 127.0.0.1, with certificates made here by ``cryptography``.

A CA file or a pinned fingerprint lets it in; the system's CAs, a foreign CA or a wrong
pin refuse the connection before anything is sent (the bootstrap token never reaches
the impostor).  Plain HTTP to another machine is warned about loudly."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import pathlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.tls import TrustError, agent_trust, parse_fingerprint, plain_http_warning
from tests.agent.agent_fakes import FakeControlPlane
from tests.agent.stub_control_plane import agent_cmd, agent_env, tls_server

TIMEOUT = 60


@dataclass(frozen=True)
class Pki:
    ca: pathlib.Path  # the CA that signed the server's certificate
    other_ca: pathlib.Path  # a CA that did not
    cert: pathlib.Path
    key: pathlib.Path
    fingerprint: str  # sha256 of the server's certificate, AB:CD:... form


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("reconciler test CA")
    _other_key, other_cert = _ca("somebody else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(
        ca=out / "ca.pem",
        other_ca=out / "other-ca.pem",
        cert=out / "server.pem",
        key=out / "server.key",
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    )
    paths.ca.write_bytes(_pem(ca_cert))
    paths.other_ca.write_bytes(_pem(other_cert))
    paths.cert.write_bytes(_pem(cert))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def plane_port(pki: Pki) -> Iterator[tuple[FakeControlPlane, int]]:
    plane = FakeControlPlane(tokens={"tok-1"})
    with tls_server(plane, pki.cert, pki.key) as port:
        yield plane, port


def _agent(state: pathlib.Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(
            "--once",
            "--state-dir",
            str(state),
            "--server",
            f"https://127.0.0.1:{port}",
            "--token",
            "tok-1",
            *args,
        ),
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_a_ca_file_lets_the_agent_in(
    tmp_path: pathlib.Path, pki: Pki, plane_port: tuple[FakeControlPlane, int]
) -> None:
    plane, port = plane_port
    done = _agent(tmp_path, port, "--ca-file", str(pki.ca))
    assert done.returncode == 0, done.stderr
    assert plane.requests[0] == "POST /v1/agent/bootstrap" and plane.reports
    assert "INSECURE" not in done.stderr
    # Later starts reuse the credentials, still verified the same way.
    again = _agent(tmp_path, port, "--ca-file", str(pki.ca))
    assert again.returncode == 0, again.stderr
    assert plane.requests.count("POST /v1/agent/bootstrap") == 1


@pytest.mark.parametrize("pin", ["plain", "sha256-prefixed", "lowercase-hex"])
def test_a_pinned_fingerprint_lets_the_agent_in(
    tmp_path: pathlib.Path, pki: Pki, plane_port: tuple[FakeControlPlane, int], pin: str
) -> None:
    plane, port = plane_port
    fingerprint = {
        "plain": pki.fingerprint,
        "sha256-prefixed": f"sha256:{pki.fingerprint}",
        "lowercase-hex": pki.fingerprint.replace(":", "").lower(),
    }[pin]
    done = _agent(tmp_path, port, "--server-fingerprint", fingerprint)
    assert done.returncode == 0, done.stderr
    assert plane.requests[0] == "POST /v1/agent/bootstrap"


@pytest.mark.parametrize("trust", ["system CAs", "another CA", "wrong pin"])
def test_an_unverified_server_gets_nothing(
    tmp_path: pathlib.Path,
    pki: Pki,
    plane_port: tuple[FakeControlPlane, int],
    trust: str,
) -> None:
    plane, port = plane_port
    args = {
        "system CAs": [],
        "another CA": ["--ca-file", str(pki.other_ca)],
        "wrong pin": ["--server-fingerprint", "ab" * 32],
    }[trust]
    done = _agent(tmp_path, port, *args)
    assert done.returncode == 1
    reason = "not the pinned one" if trust == "wrong pin" else "CERTIFICATE_VERIFY_FAILED"
    assert reason in done.stderr
    assert plane.requests == []  # the token was never sent
    assert plane.tokens == {"tok-1"}
    assert not (tmp_path / "agent" / "credentials.json").exists()


def test_a_pin_and_a_ca_file_must_both_hold(
    tmp_path: pathlib.Path, pki: Pki, plane_port: tuple[FakeControlPlane, int]
) -> None:
    plane, port = plane_port
    both = ["--ca-file", str(pki.ca), "--server-fingerprint"]
    assert _agent(tmp_path, port, *both, "cd" * 32).returncode == 1
    assert plane.requests == []
    assert _agent(tmp_path, port, *both, pki.fingerprint).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "http://127.0.0.1:1", "--ca-file", "x.pem"], "need an https://"),
        (["--server", "https://127.0.0.1:1", "--server-fingerprint", "abc"], "not a SHA-256"),
        (["--server", "https://127.0.0.1:1", "--ca-file", "/nonexistent.pem"], "cannot load"),
        (["--server", "ftp://127.0.0.1:1"], "only http:// and https://"),
    ],
)
def test_trust_settings_that_cannot_work_exit_2(
    tmp_path: pathlib.Path, args: list[str], message: str
) -> None:
    done = subprocess.run(
        agent_cmd("--once", "--state-dir", str(tmp_path), "--token", "t", *args),
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://10.0.0.5:8000", True),
        ("http://control.example.com", True),
        ("http://127.0.0.1:8000", False),
        ("http://127.8.9.10:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
        ("https://control.example.com", False),
    ],
)
def test_plain_http_to_another_machine_is_warned_about(url: str, warned: bool) -> None:
    warning = plain_http_warning(url)
    assert (warning is not None) == warned
    if warning:
        assert warning.startswith("INSECURE") and "--ca-file" in warning


def test_the_warning_is_logged_before_anything_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="reconcile-agent")
    assert agent_trust("http://10.0.0.5:8000", None, None) is True
    assert "INSECURE: the control plane http://10.0.0.5:8000 is plain HTTP" in caplog.text
    caplog.clear()
    assert agent_trust("http://127.0.0.1:8000", None, None) is True
    assert caplog.text == ""


def test_fingerprints_parse_in_the_usual_forms() -> None:
    digest = bytes(range(32))
    colons = digest.hex(":").upper()
    assert parse_fingerprint(colons) == digest
    assert parse_fingerprint(f"SHA256:{colons}") == digest
    assert parse_fingerprint(digest.hex()) == digest
    with pytest.raises(TrustError, match="not a SHA-256"):
        parse_fingerprint(digest.hex()[:-2])
