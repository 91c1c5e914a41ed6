"""The host's one reverse proxy: Caddy in a container, configured through its admin API.

:class:`CaddyProxy` keeps one Caddy container (``reconciler-proxy``) on the proxy network
(``impreza-proxy``) that every routed app joins, and pushes the *full* route set to it
with ``POST /load`` (atomic in Caddy: the old config keeps serving until the new one is
in place; a rejected config changes nothing).  Unknown hosts get a 404.

The admin API listens on a UNIX socket only: ``/run/reconciler/admin.sock`` inside the
container, which is the host directory ``<state_dir>/proxy/run`` bind-mounted there.  It
is therefore never on the proxy network (where every app could reconfigure the proxy)
nor on a published port; reaching it needs access to the state dir on the host.  The
socket is mode 0660 and the state dir is the agent's, so the directory gates access.

Decisions where this module goes beyond, or away from, the design brief:

* **Start-up config: a file, not ``--resume``.**  The container runs
  ``caddy run --config /etc/reconciler/caddy.json``; ``<state_dir>/proxy`` is mounted
  read-only at ``/etc/reconciler`` and every successful ``/load`` is also written there
  atomically (tmp + fsync + rename).  ``--resume`` would read Caddy's own
  ``autosave.json`` from inside the container (lost on recreate unless ``/config`` were
  mounted too) and would keep a config we never wrote.  The *directory* is mounted, not
  the single file: a bind mount of one file pins its inode, so a renamed-over file would
  be invisible to a restarted container.  Caddy's own autosave is turned off
  (``admin.config.persist: false``); our file is the one record.
* **The file is written after Caddy accepted the config**, never before: a config Caddy
  refuses must not become the one a restarted container boots with (it would crash-loop).
  When the container is (re)created, the routes in the file are re-rendered with the
  current settings, so a changed TLS mode or an old file layout cannot stop Caddy.
* **Two servers when TLS is on.**  With ``tls: off`` there is one server, ``http``, on
  :80 with the routes and the 404.  With ``auto``/``internal`` the routes and the 404 sit
  on an ``https`` server on :443, and the ``http`` server on :80 holds only the 404: Caddy
  then inserts its HTTP->HTTPS redirects for the routed domains ahead of that 404.  One
  server listening on both ports (the brief's shape) would serve every routed site in
  plain HTTP on :80, because our host routes come before Caddy's redirect routes.
  With a non-default ``https_port`` Caddy's redirects (to :443) are turned off and ours
  redirect to the published port instead (see :func:`desired_config`).  443 is
  published for TCP and UDP (HTTP/3).
* **``tls: auto`` never orders what cannot be issued.**  ``*.localhost``, ``.local``,
  ``.internal``, ``.test``, IP addresses and single labels get Caddy's local CA through an
  explicit automation policy, public names Caddy's ACME issuers.
* **The probe follows the public scheme.**  With TLS on, :80 only answers 308 for a routed
  domain, which says nothing about the upstream; so :meth:`CaddyProxy.probe` then asks
  ``https://127.0.0.1:{https_port}`` with SNI and ``Host`` set to the domain, without
  verifying the certificate (it checks the route and the upstream; the certificate is
  Caddy's business).  With ``tls: off`` it is the brief's plain HTTP GET on ``http_port``.
* **sync() compares the whole config**, not only the routes: a TLS mode changed in the
  settings, or a hand-edited fallback, is reloaded too (``RouteDiff.settings_drift``).
* **The settings hash covers what goes into the container** (image, network, bind, ports,
  published protocols, mounts, command), so ``tls: auto`` -> ``internal`` only reloads the
  config, while a changed port or ``tls: off`` (no 443) recreates the container.  The
  container is also recreated when the image tag now names another image id.

Docker is reached through the Docker SDK (imported lazily), except the warm "already in
place?" check, which makes the same two inspects through ``agent.engine`` (stdlib) when the
daemon is a local socket; the admin socket through ``http.client`` over a UNIX socket; the
probe through httpx.  Neither SDK nor httpx is imported by a no-op reconcile.  Failures
are typed: :class:`TemporaryError` when the daemon or the admin API does not answer
(retry), :class:`HostError` when the host cannot run the proxy as configured (a port
taken, the image missing), :class:`InvalidSpec` for a route Caddy cannot take (a bad
domain or upstream).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from agent.dockersdk import docker_errors, sdk_client
from reconciler.model.deployment import ProxyConfig
from reconciler.model.errors import HostError, InvalidSpec, TemporaryError

if TYPE_CHECKING:
    import httpx
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.networks import Network

__all__ = [
    "ADMIN_SOCKET",
    "CONFIG_PATH",
    "ROLE_LABEL",
    "SETTINGS_LABEL",
    "CaddyProxy",
    "ProxySettings",
    "RouteDiff",
    "desired_config",
    "publicly_certifiable",
    "routes_from_config",
]

ROLE_LABEL = "io.reconciler.role"
SETTINGS_LABEL = "io.reconciler.proxy-settings"
ADMIN_DIR = "/run/reconciler"  # inside the container
ADMIN_SOCKET = f"{ADMIN_DIR}/admin.sock"
CONFIG_DIR = "/etc/reconciler"  # inside the container, read-only
CONFIG_PATH = f"{CONFIG_DIR}/caddy.json"
COMMAND = ("caddy", "run", "--config", CONFIG_PATH)
NOT_FOUND_BODY = "no site is configured for this host\n"

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_UPSTREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}:[0-9]{1,5}$")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the NUL
PROXY_CONTAINER_ENV = "RECONCILE_PROXY_CONTAINER"
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")  # what Docker takes


class ProxySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: pathlib.Path
    network: str = "impreza-proxy"
    container: str = "reconciler-proxy"
    image: str = "caddy:2"
    http_port: int = 80
    https_port: int = 443
    tls: Literal["auto", "internal", "off"] = "auto"
    bind: str = "0.0.0.0"  # noqa: S104 - the proxy serves the host's public ports
    admin_timeout: float = 10.0  # waiting for the admin socket after a start

    @field_validator("tls", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # ``tls: off`` unquoted is YAML false

    @classmethod
    def from_config(cls, config: ProxyConfig, state_dir: pathlib.Path) -> ProxySettings:
        """The repository's ``proxy:`` settings on this host (``reconcile apply`` and the
        agent's commands alike)."""
        # A second proxy beside the host's (tests and benchmarks on a shared daemon).
        container = os.environ.get(PROXY_CONTAINER_ENV) or "reconciler-proxy"
        if not _CONTAINER_NAME.match(container):
            raise HostError(
                f"{PROXY_CONTAINER_ENV}={container!r} is not a container name Docker takes "
                "(a letter or digit, then letters, digits, '_', '.' or '-')"
            )
        return cls(
            state_dir=state_dir,
            container=container,
            network=config.network,
            http_port=config.http_port,
            https_port=config.https_port,
            tls=config.tls,
        )

    @property
    def proxy_dir(self) -> pathlib.Path:
        return self.state_dir / "proxy"

    @property
    def config_file(self) -> pathlib.Path:
        return self.proxy_dir / "caddy.json"

    @property
    def run_dir(self) -> pathlib.Path:
        return self.proxy_dir / "run"

    @property
    def data_dir(self) -> pathlib.Path:
        return self.proxy_dir / "data"  # certificates and keys survive a recreate

    @property
    def admin_socket(self) -> pathlib.Path:
        return self.run_dir / "admin.sock"


@dataclass(frozen=True)
class RouteDiff:
    """Wanted routes against Caddy's live config, each list sorted by domain."""

    in_sync: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # wanted, not live
    unexpected: list[str] = field(default_factory=list)  # live, not wanted
    changed: list[str] = field(default_factory=list)  # live with another upstream
    # Routes agree but the rest of the config does not (TLS mode, fallback, admin).
    settings_drift: bool = False

    @property
    def routes_in_sync(self) -> bool:
        return not (self.missing or self.unexpected or self.changed)

    @property
    def ok(self) -> bool:
        return self.routes_in_sync and not self.settings_drift


# ----------------------------------------------------------------------------- pure part


def _check_routes(routes: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased domains -> upstream; a route Caddy cannot take is InvalidSpec."""
    clean: dict[str, str] = {}
    for domain, upstream in routes.items():
        host = domain.strip().lower().rstrip(".")
        if not _DOMAIN.match(host):
            raise InvalidSpec(f"route domain {domain!r} is not a host name")
        if not _UPSTREAM.match(upstream) or not 0 < int(upstream.rpartition(":")[2]) < 65536:
            raise InvalidSpec(f"route upstream {upstream!r} of {domain} is not <container>:<port>")
        if clean.get(host, upstream) != upstream:
            raise InvalidSpec(f"route domain {host} is given two upstreams")
        clean[host] = upstream
    return clean


def _not_found() -> dict[str, Any]:
    return {"handle": [{"handler": "static_response", "status_code": 404, "body": NOT_FOUND_BODY}]}


# Names no public CA will ever certify: special-use (RFC 6761/6762, RFC 8375, ICANN's
# .internal) and the customary private ones.  ``tls: auto`` gives them Caddy's local CA
# instead of an ACME order that can only fail (and count against rate limits).
_PRIVATE_SUFFIXES = (
    "localhost",
    "local",
    "internal",
    "home.arpa",
    "test",
    "example",
    "invalid",
    "lan",
    "localdomain",
)


def publicly_certifiable(domain: str) -> bool:
    """Whether an ACME CA (Let's Encrypt, ZeroSSL) could issue for ``domain``: a dotted
    name under a public suffix, not an IP address, not a special-use name."""
    import ipaddress

    host = domain.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return False
    if "." not in host.lstrip("*."):
        return False
    return not any(host == s or host.endswith("." + s) for s in _PRIVATE_SUFFIXES)


def _redirect(domains: list[str], https_port: int) -> dict[str, Any]:
    """HTTP -> HTTPS for ``domains``, keeping a non-default HTTPS port in the URL."""
    port = "" if https_port == 443 else f":{https_port}"
    return {
        "match": [{"host": domains}],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 308,
                "headers": {
                    "Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]
                },
            }
        ],
        "terminal": True,
    }


def desired_config(
    routes: Mapping[str, str],
    tls: Literal["auto", "internal", "off"] = "off",
    *,
    https_port: int = 443,
) -> dict[str, Any]:
    """The full Caddy JSON config for ``{domain: upstream}``: pure and deterministic.

    Routes are sorted by domain, each ``host`` match -> ``reverse_proxy``, then a catch-all
    404.  ``tls: off`` is one plain HTTP server on :80.  Otherwise the routes are served on
    :443 and :80 answers them with a 308 to HTTPS (``.onion`` hosts excepted: plain HTTP,
    Tor encrypts):

    * with the standard ``https_port`` 443, Caddy's own automatic redirects do that (and
      they sit where the ACME HTTP-01 challenge is answered);
    * with another ``https_port`` (a test or a shared host), Caddy's redirects would
      point at :443, which is not where the host publishes HTTPS; so they are turned
      off and explicit redirects to ``https://<host>:<https_port>/...`` take their place
      (a public certificate needs 80 and 443 anyway).

    Certificates: ``internal`` issues every routed domain's from Caddy's local CA;
    ``auto`` leaves public names to Caddy's default ACME issuers (Let's Encrypt, then
    ZeroSSL: HTTP-01 on :80, TLS-ALPN-01 on :443) and gives the names no public CA
    certifies (``*.localhost``, ``.local``, ``.internal``, ``.test``, IP addresses, single
    labels; :func:`publicly_certifiable`) to the local CA, explicitly.  Caddy is told
    not to try installing its root into the container's trust store (it cannot).
    """
    clean = _check_routes(routes)
    host_routes: list[dict[str, Any]] = [
        {
            "match": [{"host": [domain]}],
            "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": clean[domain]}]}],
            "terminal": True,
        }
        for domain in sorted(clean)
    ]
    apps: dict[str, Any]
    if tls == "off":
        apps = {
            "http": {
                "servers": {
                    "http": {
                        "listen": [":80"],
                        "routes": [*host_routes, _not_found()],
                        "automatic_https": {"disable": True},
                    }
                }
            }
        }
        return _with_admin(apps)
    # ``.onion`` hosts stay plain HTTP on :80 (Tor encrypts; no CA issues for them):
    # a server that listens only on the HTTP port gets no certificates or redirects.
    onion = [r for r in host_routes if r["match"][0]["host"][0].endswith(".onion")]
    clear = [r for r in host_routes if r not in onion]
    clear_names = sorted(d for d in clean if not d.endswith(".onion"))
    http_routes: list[dict[str, Any]] = [*onion]
    https: dict[str, Any] = {"listen": [":443"], "routes": [*clear, _not_found()]}
    if https_port != 443 and clear_names:
        http_routes.append(_redirect(clear_names, https_port))
        https["automatic_https"] = {"disable_redirects": True}
    servers = {
        "http": {"listen": [":80"], "routes": [*http_routes, _not_found()]},
        "https": https,
    }
    apps = {"http": {"servers": servers}}
    local = (
        clear_names
        if tls == "internal"
        else [d for d in clear_names if not publicly_certifiable(d)]
    )
    if local:
        apps["tls"] = {
            "automation": {"policies": [{"subjects": local, "issuers": [{"module": "internal"}]}]}
        }
    if clear_names:
        apps["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
    return _with_admin(apps)


def _with_admin(apps: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"listen": f"unix/{ADMIN_SOCKET}|0660", "config": {"persist": False}},
        "apps": apps,
    }


def routes_from_config(config: Any) -> dict[str, str]:
    """``{domain: upstream}`` read back out of a Caddy JSON config (live or from the file).

    Every route with a ``host`` matcher counts, in any server; its upstream is the first
    ``reverse_proxy`` dial (several upstreams are joined with ``,``), or ``""`` when the
    route does something else, so a hand-made route shows up as unexpected or changed.
    The first route for a domain wins, as in Caddy.
    """
    found: dict[str, str] = {}
    if not isinstance(config, dict):
        return found
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    if not isinstance(servers, dict):
        return found
    for name in sorted(servers, key=lambda n: (n != "https", n)):
        server = servers[name]
        for route in server.get("routes", []) if isinstance(server, dict) else []:
            if not isinstance(route, dict):
                continue
            hosts = [
                h
                for m in route.get("match", []) or []
                if isinstance(m, dict)
                for h in m.get("host", []) or []
            ]
            if not hosts:
                continue
            upstream = ""
            for handler in route.get("handle", []) or []:
                if isinstance(handler, dict) and handler.get("handler") == "reverse_proxy":
                    dials = [u.get("dial", "") for u in handler.get("upstreams", []) or []]
                    upstream = ",".join(str(d) for d in dials)
                    break
            for host in hosts:
                found.setdefault(str(host).lower(), upstream)
    return found


def _diff(want: Mapping[str, str], live: Mapping[str, str], config_differs: bool) -> RouteDiff:
    missing = sorted(d for d in want if d not in live)
    unexpected = sorted(d for d in live if d not in want)
    changed = sorted(d for d in want if d in live and live[d] != want[d])
    return RouteDiff(
        in_sync=sorted(d for d in want if live.get(d) == want[d]),
        missing=missing,
        unexpected=unexpected,
        changed=changed,
        settings_drift=config_differs and not (missing or unexpected or changed),
    )


def _atomic_write(path: pathlib.Path, data: bytes, mode: int = 0o644) -> None:
    """tmp in the same dir + fsync + rename + fsync of the dir: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(config: Mapping[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------------------- the real part


class CaddyProxy:
    """The host's Caddy: :meth:`ensure` it runs, :meth:`sync` its routes, :meth:`probe`."""

    def __init__(self, settings: ProxySettings, client: DockerClient | None = None) -> None:
        self.settings = settings
        self._docker = client
        self._lock = threading.RLock()
        self._probe_client: httpx.Client | None = None

    # ------------------------------------------------------------------ container

    @functools.cached_property
    def settings_hash(self) -> str:
        """Hash of everything that goes into the container; a change recreates it."""
        s = self.settings
        spec = {
            "image": s.image,
            "network": s.network,
            "ports": self._ports(),
            "mounts": self._volumes(),
            "command": list(COMMAND),
            "restart": "unless-stopped",
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _ports(self) -> dict[str, list[Any]]:
        s = self.settings
        ports: dict[str, list[Any]] = {"80/tcp": [s.bind, s.http_port]}
        if s.tls != "off":
            ports["443/tcp"] = [s.bind, s.https_port]
            ports["443/udp"] = [s.bind, s.https_port]  # HTTP/3
        return ports

    def _volumes(self) -> dict[str, dict[str, str]]:
        s = self.settings
        return {
            str(s.proxy_dir.resolve()): {"bind": CONFIG_DIR, "mode": "ro"},
            str(s.run_dir.resolve()): {"bind": ADMIN_DIR, "mode": "rw"},
            str(s.data_dir.resolve()): {"bind": "/data", "mode": "rw"},
        }

    def _client(self) -> DockerClient:
        if self._docker is None:
            self._docker = sdk_client()
        return self._docker

    def _docker_errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Docker SDK failures -> our typed errors; a taken port names the setting."""
        s = self.settings

        def port_taken(text: str) -> HostError | None:
            if "port is already allocated" in text or "address already in use" in text:
                return HostError(
                    f"{doing}: a published port of the proxy is taken on "
                    f"{s.bind} (http {s.http_port}, https {s.https_port}); free it or set "
                    f"proxy.http_port / proxy.https_port in reconcile.yaml: {text}"
                )
            return None

        return docker_errors(doing, api_error=port_taken)

    def _find_container(self) -> Container | None:
        import docker.errors

        with self._docker_errors("inspecting the proxy container"):
            try:
                return self._client().containers.get(self.settings.container)
            except docker.errors.NotFound:
                return None

    def _image_id(self) -> str | None:
        """The local image id the configured tag names, None when absent."""
        import docker.errors

        with self._docker_errors(f"inspecting image {self.settings.image}"):
            try:
                return str(self._client().images.get(self.settings.image).id)
            except docker.errors.ImageNotFound:
                return None

    def _current(self, container: Container, image_id: str | None) -> bool:
        """Is this container ours, as configured now (running or not)?"""
        return self._current_attrs(container.attrs, image_id)

    def _current_attrs(self, attrs: Mapping[str, Any], image_id: str | None) -> bool:
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        return (
            labels.get(ROLE_LABEL) == "proxy"
            and labels.get(SETTINGS_LABEL) == self.settings_hash
            and (image_id is None or attrs.get("Image") == image_id)
        )

    def _on_network(self, container: Container, network_id: str | None = None) -> bool:
        return self._on_network_attrs(container.attrs, network_id)

    def _on_network_attrs(self, attrs: Mapping[str, Any], network_id: str | None = None) -> bool:
        nets = ((attrs.get("NetworkSettings") or {}).get("Networks")) or {}
        net = nets.get(self.settings.network)
        if net is None:
            return False
        return network_id is None or net.get("NetworkID") in ("", None, network_id)

    def _in_place(self) -> bool:
        """The warm check of :meth:`ensure` without the SDK: the same two inspects through
        ``agent.engine`` (local UNIX socket, no client given).  False means "not known to
        be in place" -- then the SDK path checks again and repairs, with its errors."""
        from agent.engine import EngineError, local_engine

        engine = None if self._docker is not None else local_engine(timeout=30)
        if engine is None:
            return False
        try:
            attrs = engine.inspect_container(self.settings.container)
            try:
                image_id: str | None = str(engine.inspect_image(self.settings.image)["Id"])
            except EngineError as exc:
                if exc.status != 404:
                    return False
                image_id = None  # the tag is gone: as _image_id() says
        except Exception:  # absent, or a hiccup: the SDK path decides
            return False
        state = attrs.get("State")
        status = state.get("Status") if isinstance(state, dict) else state
        return (
            status == "running"
            and self._on_network_attrs(attrs)
            and self._current_attrs(attrs, image_id)
        )

    def ensure(self) -> None:
        """The network exists and the proxy container runs as configured, admin answering.

        Cheap when everything is in place: one container inspect and one image inspect
        (through ``agent.engine`` when the daemon is a local socket: no SDK import).
        """
        with self._lock:
            if self._in_place():
                return
            container = self._find_container()
            if (
                container is not None
                and container.status == "running"
                and self._on_network(container)
                and self._current(container, self._image_id())
            ):
                return
            self._ensure_cold(container)

    def _ensure_cold(self, container: Container | None) -> None:
        import docker.errors

        network = self._ensure_network()
        image_id = self._image_id()  # None: the tag is gone; a stopped proxy may still start
        if container is not None and container.labels.get(ROLE_LABEL) != "proxy":
            raise HostError(
                f"a container named {self.settings.container} exists without the label "
                f"{ROLE_LABEL}=proxy; it is not ours, so it is left alone: remove or rename it"
            )
        if container is not None and (
            not self._current(container, image_id)
            or not self._on_network(container, network.id)
            or container.status in ("dead", "removing")
        ):
            with (
                self._docker_errors("removing the outdated proxy container"),
                contextlib.suppress(docker.errors.NotFound),
            ):
                container.remove(force=True)
            container = None
        if container is None:
            if image_id is None:
                self._pull()
            self._prepare_files()
            container = self._create()
        with self._docker_errors("starting the proxy container"):
            container.reload()
            if container.status == "paused":
                container.unpause()
            elif container.status in ("created", "exited"):
                container.start()
        self._wait_admin(container)

    def _ensure_network(self) -> Network:
        import docker.errors

        client = self._client()
        with self._docker_errors(f"ensuring network {self.settings.network}"):
            try:
                return client.networks.get(self.settings.network)
            except docker.errors.NotFound:
                pass
            try:
                return client.networks.create(
                    self.settings.network,
                    driver="bridge",
                    check_duplicate=True,
                    labels={ROLE_LABEL: "proxy-network"},
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: created meanwhile by someone else
                    raise
                return client.networks.get(self.settings.network)

    def _pull(self) -> None:
        import docker.errors

        repo, _, tag = self.settings.image.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = self.settings.image, "latest"
        try:
            self._client().images.pull(repo, tag=tag)
        except docker.errors.DockerException as exc:
            raise HostError(
                f"the proxy image {self.settings.image} is not on this host and could not be "
                f"pulled ({exc}); run `bash scripts/setup.sh --docker`"
            ) from exc

    def _prepare_files(self) -> None:
        """Dirs for the mounts, and a config file that matches the current settings.

        The routes of the last file survive (that is how a recreated proxy serves again
        without a sync); everything else is rendered afresh from the settings.
        """
        s = self.settings
        for d in (s.proxy_dir, s.run_dir, s.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(s.run_dir, 0o700)
        routes: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            routes = routes_from_config(json.loads(s.config_file.read_text()))
        try:
            data = _encode(desired_config(routes, s.tls, https_port=s.https_port))
        except InvalidSpec:
            data = _encode(
                desired_config({}, s.tls, https_port=s.https_port)
            )  # a file we cannot trust: start empty
        if not s.config_file.exists() or s.config_file.read_bytes() != data:
            _atomic_write(s.config_file, data)

    def _create(self) -> Container:
        import docker.errors

        s = self.settings
        client = self._client()
        restart: Any = {"Name": "unless-stopped"}  # the stubs' Literal lacks unless-stopped
        with self._docker_errors("creating the proxy container"):
            try:
                return client.containers.create(
                    s.image,
                    list(COMMAND),
                    name=s.container,
                    detach=True,
                    labels={ROLE_LABEL: "proxy", SETTINGS_LABEL: self.settings_hash},
                    ports={k: tuple(v) for k, v in self._ports().items()},
                    volumes=self._volumes(),
                    network=s.network,
                    restart_policy=restart,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
            # Another process created it meanwhile: use theirs.
            return client.containers.get(s.container)

    def _wait_admin(self, container: Container) -> None:
        """Poll the admin socket (50 ms steps) until Caddy answers, bounded."""
        deadline = time.monotonic() + self.settings.admin_timeout
        checked = time.monotonic()
        last: Exception | None = None
        while True:
            try:
                self._get_config()
                return
            except TemporaryError as exc:
                last = exc
            now = time.monotonic()
            if now - checked > 1.0:  # a Caddy that exits at once should not cost 10 s
                checked = now
                with self._docker_errors("inspecting the proxy container"):
                    container.reload()
                if container.status in ("exited", "dead"):
                    raise HostError(
                        f"the proxy container {self.settings.container} exited: "
                        f"{self._log_tail(container)}"
                    )
            if now > deadline:
                raise TemporaryError(
                    f"the proxy's admin API did not answer within {self.settings.admin_timeout:g}"
                    f" s at {self.settings.admin_socket} ({last}); logs: "
                    f"{self._log_tail(container)}"
                )
            time.sleep(0.05)

    def _log_tail(self, container: Container, lines: int = 5) -> str:
        try:
            raw = container.logs(tail=lines)
        except Exception as exc:  # only for a message
            return f"(no logs: {exc})"
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return " | ".join(text.strip().splitlines()[-lines:])

    def remove(self) -> None:
        """Remove the proxy container and our network (if we made it and it is empty)."""
        import docker.errors

        with self._lock, self._docker_errors("removing the proxy"):
            container = self._find_container()
            if container is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            try:
                network = self._client().networks.get(self.settings.network)
            except docker.errors.NotFound:
                network = None
            if (
                network is not None
                and (network.attrs.get("Labels") or {}).get(ROLE_LABEL) == "proxy-network"
            ):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    network.remove()  # refused while apps are still attached: keep it
        self.close()

    def close(self) -> None:
        if self._probe_client is not None:
            self._probe_client.close()
        self._probe_client = None

    # ------------------------------------------------------------------ admin API

    def _admin_request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One request to Caddy's admin socket: (status, body).  Transport failures raise
        OSError or http.client.HTTPException.  Stdlib only (httpx costs ~100 ms to import)."""
        from agent.engine import UnixHTTPConnection

        sock = str(self.settings.admin_socket)
        if len(os.fsencode(sock)) > _SUN_PATH_MAX:
            raise HostError(
                f"the proxy's admin socket path is longer than {_SUN_PATH_MAX} bytes, "
                f"which a UNIX socket cannot be: {sock}; use a shorter state dir"
            )
        conn = UnixHTTPConnection(sock, timeout=10.0, connect_timeout=1.0)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _admin_call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import http.client

        try:
            return self._admin_request(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            raise TemporaryError(
                f"the proxy's admin API does not answer at {self.settings.admin_socket}: {exc}",
                retry_after=2.0,
            ) from exc

    def _get_config(self) -> Any:
        status, body = self._admin_call("GET", "/config/")
        if status != 200:
            raise TemporaryError(
                f"the proxy's admin API answered GET /config/ with {status}: "
                f"{body.decode(errors='replace')[:300]}"
            )
        return json.loads(body)

    def _load(self, config: Mapping[str, Any]) -> None:
        status, body = self._admin_call("POST", "/load", json.dumps(config).encode())
        if status == 400:
            raise InvalidSpec(
                f"Caddy refused the proxy config: {body.decode(errors='replace')[:500]}"
            )
        if status != 200:
            raise TemporaryError(
                f"the proxy's admin API answered POST /load with {status}: "
                f"{body.decode(errors='replace')[:300]}"
            )

    def desired_config(self, routes: Mapping[str, str]) -> dict[str, Any]:
        return desired_config(routes, self.settings.tls, https_port=self.settings.https_port)

    def current_routes(self) -> dict[str, str]:
        """The routes Caddy serves now (from its live config)."""
        return routes_from_config(self._get_config())

    def _compare(self, routes: Mapping[str, str]) -> tuple[dict[str, Any], RouteDiff]:
        want = self.desired_config(routes)
        live = self._get_config()
        return want, _diff(_check_routes(routes), routes_from_config(live), live != want)

    def diff(self, routes: Mapping[str, str]) -> RouteDiff:
        return self._compare(routes)[1]

    def sync(self, routes: Mapping[str, str]) -> RouteDiff:
        """Make Caddy serve exactly ``routes``; returns the diff found before repairing.

        When anything differs, the full config is ``POST /load``-ed (atomic in Caddy), then
        written to ``<state_dir>/proxy/caddy.json`` for the next container start.
        """
        with self._lock:
            want, found = self._compare(routes)
            if not found.ok:
                self._load(want)
            data = _encode(want)
            path = self.settings.config_file
            try:
                on_disk = path.read_bytes()
            except FileNotFoundError:
                on_disk = b""
            if on_disk != data:
                _atomic_write(path, data)
            return found

    # ------------------------------------------------------------------ probe

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int:
        """Status of ``GET path`` for ``domain`` through the proxy on 127.0.0.1.

        Plain HTTP on ``http_port`` with ``tls: off``; otherwise HTTPS on ``https_port``
        with SNI and Host set to the domain, certificate not verified.  Redirects are not
        followed.  A connection failure is a TemporaryError.
        """
        import httpx

        if self._probe_client is None:
            self._probe_client = httpx.Client(
                verify=False,  # noqa: S501 - our own proxy on loopback; see the docstring
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        s = self.settings
        if s.tls == "off":
            url, extensions = f"http://127.0.0.1:{s.http_port}{path}", {}
        else:
            url, extensions = f"https://127.0.0.1:{s.https_port}{path}", {"sni_hostname": domain}
        try:
            response = self._probe_client.get(
                url, headers={"Host": domain}, extensions=extensions, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise TemporaryError(f"probe of {domain} through the proxy failed: {exc}") from exc
        return response.status_code
