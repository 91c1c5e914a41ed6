"""Real private git servers on 127.0.0.1 for the tests: git's own ``git http-backend``
behind an HTTPS server that demands basic auth, and OpenSSH's ``sshd`` with a temporary
config, host key and authorized key.  Both serve bare repositories under one directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import ipaddress
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import free_port


def self_signed_cert(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(cert.pem, key.pem)`` for 127.0.0.1; the cert is its own CA bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "git-server.crt"
    key_path = directory / "git-server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class GitHttpsServer:
    """``https://127.0.0.1:<port>/<name>.git`` for every bare repository under ``root``;
    every request needs ``Authorization: Basic base64(user:password)``.  ``seen`` keeps
    the Authorization header of each request (None when absent)."""

    def __init__(self, root: pathlib.Path, certs: pathlib.Path, user: str, password: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[str | None] = []
        self.cert, key = self_signed_cert(certs)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                given = self.headers.get("Authorization")
                server.seen.append(given)
                if given != server.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": os.devnull,
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_USER": "git",
                    "REMOTE_ADDR": "127.0.0.1",
                }
                out = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
                ).stdout
                sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
                head, _, payload = out.partition(sep)
                status = 200
                headers = []
                for line in head.decode("latin-1").splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}.git"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _keygen(path: pathlib.Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """OpenSSH's sshd on 127.0.0.1:<port> with a temporary config: public-key login as
    the current user with ``client_key`` only.  ``known_hosts`` trusts its host key."""

    def __init__(self, directory: pathlib.Path) -> None:
        binary = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(binary) or not shutil.which("ssh"):
            pytest.fail(
                "these tests need OpenSSH (apt-get install openssh-server openssh-client; "
                "scripts/setup.sh --docker installs it)",
                pytrace=False,
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        host_pub = _keygen(directory / "host_key")
        self.client_key = directory / "client_key"
        (directory / "authorized_keys").write_text(_keygen(self.client_key) + "\n")
        self.port = free_port()
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.wrong_known_hosts = directory / "wrong_known_hosts"
        other = _keygen(directory / "other_host_key")
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} {other}\n")
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {directory / 'host_key'}\nPidFile {directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
            f"StrictModes no\nAllowUsers {self.user}\nLogLevel ERROR\n"
        )
        if os.geteuid() == 0:
            pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
        self.log = directory / "sshd.log"
        self.proc = subprocess.Popen(
            [binary, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 -- lives as long as sshd
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("sshd did not listen: " + self.log.read_text())

    def url(self, bare: pathlib.Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{bare}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
