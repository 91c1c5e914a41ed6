"""Onion services: each deployment's v3 identity, and the host's one Tor sidecar.

**Keys.**  The agent makes every deployment's ed25519 identity itself (``cryptography``)
and writes it in Tor's own key-file format into the app's state dir::

    apps/<dpl_id>/onion/            0700
        hs_ed25519_secret_key       0600  b"== ed25519v1-secret: type0 ==\\0\\0\\0" + 64 bytes
        hs_ed25519_public_key       0600  b"== ed25519v1-public: type0 ==\\0\\0\\0" + 32 bytes
        hostname                    0600  "<56 base32 chars>.onion\\n"

The 64 secret bytes are Tor's *expanded* key: SHA-512 of the 32-byte seed, the first half
clamped (the scalar), the second half the nonce prefix.  Because the address is derived
here, before anything runs, an onion-only deployment gets ``DOMAIN=<addr>.onion`` on its
first boot.  The key survives updates and uninstalls (the app dir is a tombstone); only a
purge deletes it.  An existing key is always read back, never replaced, so the address is
stable; a key Tor generated itself (only the expanded secret, no seed) is read the same
way, and its public half is checked against the secret (see :func:`public_from_expanded`).

The address (rend-spec-v3, "Encoding onion addresses")::

    onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"
    CHECKSUM = SHA3_256(".onion checksum" | PUBKEY | VERSION)[:2],  VERSION = b"\\x03"

**The sidecar.**  One Tor container per host (``reconciler-tor``) on the proxy network,
configured by a ``torrc`` the agent renders from the onion-enabled deployments: one
``HiddenServiceDir /var/lib/tor/hs/<dpl_id>`` + ``HiddenServicePort 80 <proxy>:80`` per
deployment.  When the set changes the file is rewritten and Tor reloads it on SIGHUP; the
container is created with the first onion deployment and removed with the last.

Decisions, and why:

* **Hidden services point at the proxy, not at the app.**  Caddy gets a plain-HTTP route
  for ``<addr>.onion`` to the deployment's upstream (through the normal route sync, so it
  is diffed and repaired like every route).  Caddy resolves the app's container name per
  request, so an update that recreates the app (new IP) keeps the onion working; Tor,
  which resolves a ``HiddenServicePort`` target once when it reads its config, only needs
  the proxy's address, which changes only when the proxy is recreated.
* **The target is the proxy's IP, written into torrc.**  Tor would resolve
  ``reconciler-proxy`` once per reload and keep a stale address after the proxy is
  recreated.  With the IP in the file, a moved proxy is a changed torrc, which the next
  sync reloads like any other change.
* **Keys are mirrored, not mounted one by one.**  Bind mounts are fixed when a container
  is created: one mount per app dir would force a Tor restart (all services offline) for
  every new onion deployment, and mounting ``apps/`` whole would show Tor every app's
  ``.env`` and data.  So ``<state>/tor/hs/<dpl_id>/`` holds a copy of the key files (the
  same bytes; ``apps/<id>/onion`` stays the source of truth) and ``<state>/tor/hs`` is
  the one mount; a sync adds and removes copies, then reloads.
* **Tor runs as a non-root user that owns its dirs.**  Tor insists that its data dir and
  every hidden-service dir be mode 0700 and owned by the user it runs as.  When the agent
  is root the container runs as the image's ``tor`` user (uid :data:`TOR_UID`) and the
  agent chowns the mirror (never the app's own key dir) to it; when the agent is not
  root, the container runs as the agent's uid, which already owns everything.  All
  capabilities are dropped, the root filesystem is read-only.
* **``DisableNetwork 1``** (settings flag, or ``RECONCILE_TOR_DISABLE_NETWORK=1``) keeps
  Tor off the network; it still loads every key and writes every ``hostname`` file, which
  is how tests and offline hosts check it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from agent.dockersdk import docker_errors, sdk_client
from reconciler.model.errors import HostError, TemporaryError

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

__all__ = [
    "HOSTNAME",
    "KEY_DIR",
    "PUBLIC_HEADER",
    "PUBLIC_KEY",
    "SECRET_HEADER",
    "SECRET_KEY",
    "TOR_UID",
    "OnionIdentity",
    "OnionKeyError",
    "TorSettings",
    "TorSidecar",
    "ensure_identity",
    "expand_seed",
    "generate_identity",
    "onion_address",
    "public_from_expanded",
    "read_identity",
    "render_torrc",
    "write_identity",
]

KEY_DIR = "onion"  # apps/<dpl_id>/onion
SECRET_KEY = "hs_ed25519_secret_key"  # noqa: S105 - a file name
PUBLIC_KEY = "hs_ed25519_public_key"
HOSTNAME = "hostname"
SECRET_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
PUBLIC_HEADER = b"== ed25519v1-public: type0 ==\x00\x00\x00"
VERSION = b"\x03"
_CHECKSUM_PREFIX = b".onion checksum"
_ADDRESS_RE = re.compile(r"^[a-z2-7]{56}\.onion$")

ROLE_LABEL = "io.reconciler.role"
SETTINGS_LABEL = "io.reconciler.tor-settings"
TOR_UID = 990  # the ``tor`` user of scripts/images/tor (rootfs/etc/passwd)
CONFIG_DIR = "/etc/reconciler-tor"  # inside the container, read-only
TORRC = f"{CONFIG_DIR}/torrc"
HS_DIR = "/var/lib/tor/hs"
DATA_DIR = "/var/lib/tor/data"
COMMAND = ("tor", "-f", TORRC)


class OnionKeyError(ValueError):
    """A key dir that is not a usable Tor v3 identity (wrong header, length, or pair)."""


# ----------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True)
class OnionIdentity:
    """A v3 onion identity: the public key and Tor's 64-byte expanded secret key."""

    public_key: bytes
    expanded_secret: bytes = dataclasses.field(repr=False)

    @property
    def address(self) -> str:
        """``<56 base32 chars>.onion``."""
        return onion_address(self.public_key)


def onion_address(public_key: bytes) -> str:
    """The v3 address of an ed25519 public key (rend-spec-v3, "Encoding onion addresses")."""
    if len(public_key) != 32:
        raise OnionKeyError(f"an ed25519 public key is 32 bytes, not {len(public_key)}")
    checksum = hashlib.sha3_256(_CHECKSUM_PREFIX + public_key + VERSION).digest()[:2]
    return base64.b32encode(public_key + checksum + VERSION).decode().lower() + ".onion"


def expand_seed(seed: bytes) -> bytes:
    """Tor's expanded secret key for a 32-byte ed25519 seed: SHA-512, first half clamped.

    This is the key expansion of RFC 8032 (5.1.5), which Tor stores instead of the seed.
    """
    if len(seed) != 32:
        raise OnionKeyError(f"an ed25519 seed is 32 bytes, not {len(seed)}")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def generate_identity() -> OnionIdentity:
    """A fresh identity from ``cryptography``'s ed25519 key generation."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    return OnionIdentity(public, expand_seed(key.private_bytes_raw()))


# Ed25519 base-point multiplication (RFC 8032, 5.1.4 and 6), only to get the public half of
# an *expanded* secret key: Tor keeps no seed, and no library we ship (cryptography) takes
# an expanded key.  Not constant time; it runs on keys we read from our own disk, at most
# once per deployment and sync.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_Point = tuple[int, int, int, int]


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def public_from_expanded(expanded_secret: bytes) -> bytes:
    """The ed25519 public key (``a * B``, compressed) of Tor's expanded secret key."""
    if len(expanded_secret) != 64:
        raise OnionKeyError(f"an expanded ed25519 key is 64 bytes, not {len(expanded_secret)}")
    scalar = int.from_bytes(expanded_secret[:32], "little")
    point: _Point = (_BX, _BY, 1, _BX * _BY % _P)
    acc: _Point = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            acc = _add(acc, point)
        point = _add(point, point)
        scalar >>= 1
    zinv = pow(acc[2], _P - 2, _P)
    x, y = acc[0] * zinv % _P, acc[1] * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _read_tagged(path: pathlib.Path, header: bytes, length: int) -> bytes:
    data = path.read_bytes()
    if not data.startswith(header):
        raise OnionKeyError(f"{path} is not a Tor key file (header {data[:32]!r})")
    body = data[len(header) :]
    if len(body) != length:
        raise OnionKeyError(f"{path} holds {len(body)} key bytes, not {length}")
    return body


def read_identity(directory: pathlib.Path) -> OnionIdentity | None:
    """The identity in a hidden-service dir (ours or Tor's), None when there is no key.

    The secret key decides: the public key file, when present, must be its public half
    (otherwise Tor would announce another address than the one we put in ``DOMAIN``).
    """
    secret_path = directory / SECRET_KEY
    if not secret_path.exists():
        return None
    secret = _read_tagged(secret_path, SECRET_HEADER, 64)
    public = public_from_expanded(secret)
    public_path = directory / PUBLIC_KEY
    if public_path.exists() and _read_tagged(public_path, PUBLIC_HEADER, 32) != public:
        raise OnionKeyError(f"{public_path} is not the public half of {secret_path}")
    return OnionIdentity(public, secret)


def write_identity(directory: pathlib.Path, identity: OnionIdentity) -> None:
    """Tor's three files, each written atomically with mode 0600, in a 0700 dir."""
    from agent.statedir import atomic_write

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    atomic_write(directory / SECRET_KEY, SECRET_HEADER + identity.expanded_secret, 0o600)
    atomic_write(directory / PUBLIC_KEY, PUBLIC_HEADER + identity.public_key, 0o600)
    atomic_write(directory / HOSTNAME, f"{identity.address}\n".encode(), 0o600)


def ensure_identity(directory: pathlib.Path) -> OnionIdentity:
    """The identity kept in ``directory``, made (and written) the first time.

    A missing public key or hostname file is written again from the secret key; an
    existing key is never replaced, so the address never changes before a purge.
    """
    identity = read_identity(directory)
    if identity is None:
        identity = generate_identity()
        write_identity(directory, identity)
        return identity
    from agent.statedir import atomic_write

    want = {
        PUBLIC_KEY: PUBLIC_HEADER + identity.public_key,
        HOSTNAME: f"{identity.address}\n".encode(),
    }
    for name, data in want.items():
        path = directory / name
        if not path.exists() or path.read_bytes() != data:
            atomic_write(path, data, 0o600)
    return identity


def is_onion_address(host: str) -> bool:
    return bool(_ADDRESS_RE.match(host))


# ----------------------------------------------------------------------------- torrc


def render_torrc(
    services: Mapping[str, str],
    *,
    disable_network: bool = False,
    hs_root: str = HS_DIR,
    data_dir: str = DATA_DIR,
) -> str:
    """The sidecar's ``torrc`` for ``{dpl_id: target host:port}``.  Pure and deterministic.

    Services are sorted by id; each gets ``HiddenServiceDir <hs_root>/<id>`` and
    ``HiddenServicePort 80 <target>``.  No SOCKS or control port: the sidecar only serves.
    """
    lines = [
        "# Written by compose-reconciler (agent.onion); reloaded with SIGHUP. Do not edit.",
        f"DataDirectory {data_dir}",
        "SocksPort 0",
        "Log notice stdout",
        "AvoidDiskWrites 1",
    ]
    if disable_network:
        lines.append("DisableNetwork 1")
    for dpl_id in sorted(services):
        lines.append("")
        lines.append(f"HiddenServiceDir {hs_root}/{dpl_id}")
        lines.append("HiddenServiceVersion 3")
        lines.append(f"HiddenServicePort 80 {services[dpl_id]}")
    return "\n".join(lines) + "\n"


def hidden_service_ids(torrc: str, hs_root: str = HS_DIR) -> list[str]:
    """The deployment ids a torrc publishes (for checks and tests)."""
    prefix = f"HiddenServiceDir {hs_root}/"
    return sorted(
        line[len(prefix) :].strip() for line in torrc.splitlines() if line.startswith(prefix)
    )


# ----------------------------------------------------------------------------- the sidecar


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class TorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: pathlib.Path
    network: str = "impreza-proxy"
    container: str = "reconciler-tor"
    image: str | None = None  # None: RECONCILE_TOR_IMAGE, else the newest reconciler-tor:*
    proxy_container: str = "reconciler-proxy"
    proxy_port: int = 80  # the proxy's plain-HTTP port inside the network
    disable_network: bool = False
    hostname_timeout: float = 30.0  # waiting for Tor to publish a new service's hostname

    @classmethod
    def from_env(cls, state_dir: pathlib.Path, **kwargs: Any) -> TorSettings:
        """Settings with ``RECONCILE_TOR_DISABLE_NETWORK`` / ``RECONCILE_TOR_IMAGE`` read."""
        kwargs.setdefault("disable_network", _env_flag("RECONCILE_TOR_DISABLE_NETWORK"))
        kwargs.setdefault("image", os.environ.get("RECONCILE_TOR_IMAGE") or None)
        return cls(state_dir=state_dir, **kwargs)

    @property
    def tor_dir(self) -> pathlib.Path:
        return self.state_dir / "tor"

    @property
    def etc_dir(self) -> pathlib.Path:
        return self.tor_dir / "etc"

    @property
    def torrc(self) -> pathlib.Path:
        return self.etc_dir / "torrc"

    @property
    def hs_dir(self) -> pathlib.Path:
        return self.tor_dir / "hs"

    @property
    def data_dir(self) -> pathlib.Path:
        return self.tor_dir / "data"


def _version_key(tag: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-]", tag))


class TorSidecar:
    """The host's Tor container: :meth:`sync` publishes exactly the given key dirs."""

    def __init__(self, settings: TorSettings, client: DockerClient | None = None) -> None:
        self.settings = settings
        self._docker = client
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ docker plumbing

    def _client(self) -> DockerClient:
        if self._docker is None:
            self._docker = sdk_client()
        return self._docker

    def _docker_errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return docker_errors(doing)

    @functools.cached_property
    def image(self) -> str:
        """The configured image, else the newest local ``reconciler-tor:<version>``."""
        if self.settings.image:
            return self.settings.image
        with self._docker_errors("listing the Tor images"):
            tags = [
                tag
                for image in self._client().images.list(name="reconciler-tor")
                for tag in image.tags
                if tag.startswith("reconciler-tor:")
            ]
        if not tags:
            raise HostError(
                "no Tor sidecar image (reconciler-tor:<version>) on this host; "
                "`bash scripts/setup.sh --docker` builds it from Debian's tor package"
            )
        return max(tags, key=lambda t: _version_key(t.partition(":")[2]))

    def _user(self) -> tuple[int, int]:
        uid = os.geteuid()
        return (TOR_UID, TOR_UID) if uid == 0 else (uid, os.getegid())

    def _settings_hash(self) -> str:
        s = self.settings
        spec = {
            "image": self.image,
            "network": s.network,
            "mounts": self._volumes(),
            "command": list(COMMAND),
            "user": list(self._user()),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _volumes(self) -> dict[str, dict[str, str]]:
        s = self.settings
        return {
            str(s.etc_dir.resolve()): {"bind": CONFIG_DIR, "mode": "ro"},
            str(s.hs_dir.resolve()): {"bind": HS_DIR, "mode": "rw"},
            str(s.data_dir.resolve()): {"bind": DATA_DIR, "mode": "rw"},
        }

    def _find(self) -> Container | None:
        import docker.errors

        with self._docker_errors("inspecting the Tor container"):
            try:
                return self._client().containers.get(self.settings.container)
            except docker.errors.NotFound:
                return None

    def proxy_target(self) -> str:
        """``<proxy IP>:<port>`` on the proxy network (see the module docstring)."""
        import docker.errors

        s = self.settings
        with self._docker_errors("inspecting the proxy container"):
            try:
                proxy = self._client().containers.get(s.proxy_container)
            except docker.errors.NotFound:
                raise TemporaryError(
                    f"the proxy container {s.proxy_container} is not there; onion services "
                    "point at it",
                    retry_after=2.0,
                ) from None
        nets = (proxy.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (nets.get(s.network) or {}).get("IPAddress")
        if not address:
            raise TemporaryError(
                f"the proxy container {s.proxy_container} has no address on {s.network}",
                retry_after=2.0,
            )
        return f"{address}:{s.proxy_port}"

    # ------------------------------------------------------------------ files

    def _own(self, path: pathlib.Path) -> None:
        uid, gid = self._user()
        if os.geteuid() == 0:
            os.chown(path, uid, gid)

    def _mirror(self, keys: Mapping[str, pathlib.Path]) -> None:
        """``<state>/tor/hs/<id>/`` = the key files of each app; others removed."""
        s = self.settings
        for d in (s.tor_dir, s.etc_dir, s.hs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(s.data_dir, 0o700)
        self._own(s.data_dir)
        from agent.statedir import atomic_write

        for dpl_id, source in keys.items():
            target = s.hs_dir / dpl_id
            target.mkdir(exist_ok=True, mode=0o700)
            os.chmod(target, 0o700)
            for name in (SECRET_KEY, PUBLIC_KEY):
                data = (source / name).read_bytes()
                path = target / name
                if not path.exists() or path.read_bytes() != data:
                    atomic_write(path, data, 0o600)
                self._own(path)
            self._own(target)
        for entry in s.hs_dir.iterdir():
            if entry.name not in keys and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ sync

    def sync(self, keys: Mapping[str, pathlib.Path]) -> bool:
        """Publish exactly ``{dpl_id: key dir}``; True when Tor was (re)configured.

        No services: the container is removed (the mirror too; the apps' keys stay).
        Otherwise the mirror and ``torrc`` are written, the container created when absent
        or outdated, reloaded with SIGHUP when ``torrc`` changed, and each new service's
        ``hostname`` (written by Tor) checked against the address derived here.
        """
        with self._lock:
            if not keys:
                # nothing published before: no Docker call (every no-op reconcile gets here)
                return self.remove() if self.settings.tor_dir.exists() else False
            s = self.settings
            target = self.proxy_target()
            self._mirror(keys)
            text = render_torrc(dict.fromkeys(keys, target), disable_network=s.disable_network)
            try:
                old = s.torrc.read_text()
            except FileNotFoundError:
                old = ""
            if old != text:
                from agent.statedir import atomic_write

                atomic_write(s.torrc, text.encode(), 0o644)
            container = self._find()
            fresh = False
            if container is not None and (
                container.labels.get(SETTINGS_LABEL) != self._settings_hash()
                or container.status not in ("running", "restarting", "created")
            ):
                with self._docker_errors("removing the outdated Tor container"):
                    container.remove(force=True)
                container = None
            if container is None:
                container = self._create()
                fresh = True
                with self._docker_errors("starting the Tor container"):
                    container.start()
            elif old != text:
                with self._docker_errors("reloading Tor (SIGHUP)"):
                    container.kill(signal="SIGHUP")
            if fresh or old != text:
                self._wait_hostnames(keys, container)
            return fresh or old != text

    def _create(self) -> Container:
        import docker.errors

        s = self.settings
        uid, gid = self._user()
        restart: Any = {"Name": "unless-stopped"}
        with self._docker_errors("creating the Tor container"):
            try:
                return self._client().containers.create(
                    self.image,
                    list(COMMAND),
                    name=s.container,
                    detach=True,
                    labels={ROLE_LABEL: "tor", SETTINGS_LABEL: self._settings_hash()},
                    volumes=self._volumes(),
                    network=s.network,
                    user=f"{uid}:{gid}",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    read_only=True,
                    restart_policy=restart,
                )
            except docker.errors.ImageNotFound:
                raise HostError(
                    f"the Tor image {self.image} is not on this host; "
                    "`bash scripts/setup.sh --docker` builds it"
                ) from None
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
            return self._client().containers.get(s.container)

    def _wait_hostnames(self, keys: Mapping[str, pathlib.Path], container: Container) -> None:
        """Tor writes ``hostname`` once it loaded a service's key: wait, and compare."""
        deadline = time.monotonic() + self.settings.hostname_timeout
        pending = dict(keys)
        while pending:
            for dpl_id in list(pending):
                path = self.settings.hs_dir / dpl_id / HOSTNAME
                try:
                    published = path.read_text().strip()
                except FileNotFoundError:
                    continue
                want = (pending[dpl_id] / HOSTNAME).read_text().strip()
                if published != want:
                    raise HostError(
                        f"Tor publishes {dpl_id} as {published}, but its key says {want}"
                    )
                del pending[dpl_id]
            if not pending:
                return
            if time.monotonic() > deadline:
                with self._docker_errors("reading the Tor logs"):
                    container.reload()
                    tail = container.logs(tail=5).decode(errors="replace")
                raise TemporaryError(
                    f"Tor did not publish {', '.join(sorted(pending))} within "
                    f"{self.settings.hostname_timeout:g} s (container {container.status}): "
                    + " | ".join(tail.strip().splitlines())
                )
            time.sleep(0.1)

    def torrc_text(self) -> str:
        try:
            return self.settings.torrc.read_text()
        except FileNotFoundError:
            return ""

    def remove(self) -> bool:
        """Remove the container and ``<state>/tor`` (mirror, torrc, Tor's cache); the apps'
        own keys stay.  With no ``<state>/tor`` left, later syncs cost no Docker call."""
        import docker.errors

        with self._lock:
            container = self._find()
            if container is not None:
                with (
                    self._docker_errors("removing the Tor container"),
                    contextlib.suppress(docker.errors.NotFound),
                ):
                    container.remove(force=True)
            shutil.rmtree(self.settings.tor_dir, ignore_errors=True)
            return container is not None
