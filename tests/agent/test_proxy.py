"""agent.proxy: the pure Caddy config, and the real proxy on the real Docker Engine.

The Docker half runs one module-scoped proxy with its own network, container name,
state dir and a free port on 127.0.0.1, so it never meets a real proxy on this host, plus
two busybox backends on that network.  The tests run in file order and each leaves the
proxy as the next expects.  Traffic goes only to 127.0.0.1 (the published ports); the
proxy reaches the backends over the test network.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from agent.proxy import (
    ADMIN_SOCKET,
    ROLE_LABEL,
    SETTINGS_LABEL,
    CaddyProxy,
    ProxySettings,
    desired_config,
    routes_from_config,
)
from reconciler.model.errors import HostError, InvalidSpec, TemporaryError
from tests.conftest import free_port

ROUTES = {"b.example.test": "dpl_x-b:80", "a.example.test": "dpl_x-a:8080"}


# ----------------------------------------------------------------------------- pure


def _servers(config: dict[str, Any]) -> dict[str, Any]:
    servers: dict[str, Any] = config["apps"]["http"]["servers"]
    return servers


def _is_catch_all_404(route: dict[str, Any]) -> bool:
    return "match" not in route and route["handle"] == [
        {"handler": "static_response", "status_code": 404, "body": route["handle"][0]["body"]}
    ]


def test_desired_config_is_deterministic() -> None:
    reordered = dict(reversed(list(ROUTES.items())))
    one = desired_config(ROUTES, "off")
    assert json.dumps(one) == json.dumps(desired_config(reordered, "off"))
    hosts = [r["match"][0]["host"] for r in _servers(one)["http"]["routes"] if "match" in r]
    assert hosts == [["a.example.test"], ["b.example.test"]]


@pytest.mark.parametrize("tls", ["off", "internal", "auto"])
def test_catch_all_404_is_last_in_every_server(tls: Any) -> None:
    for server in _servers(desired_config(ROUTES, tls)).values():
        assert _is_catch_all_404(server["routes"][-1])
        assert all("match" in r for r in server["routes"][:-1])


def test_route_shape() -> None:
    route = _servers(desired_config({"a.test": "dpl_1-app:80"}, "off"))["http"]["routes"][0]
    assert route == {
        "match": [{"host": ["a.test"]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "dpl_1-app:80"}]}],
        "terminal": True,
    }


def test_tls_off_is_plain_http_on_80_only() -> None:
    config = desired_config(ROUTES, "off")
    assert list(_servers(config)) == ["http"]
    http = _servers(config)["http"]
    assert http["listen"] == [":80"]
    assert http["automatic_https"] == {"disable": True}
    assert "tls" not in config["apps"]
    assert ":443" not in json.dumps(config)


def test_tls_internal_serves_routes_on_443_with_the_internal_issuer() -> None:
    config = desired_config(ROUTES, "internal")
    servers = _servers(config)
    assert servers["https"]["listen"] == [":443"]
    assert routes_from_config({"apps": {"http": {"servers": {"x": servers["https"]}}}}) == ROUTES
    # :80 keeps only the 404; Caddy puts its HTTP->HTTPS redirects in front of it.
    assert servers["http"]["listen"] == [":80"]
    assert len(servers["http"]["routes"]) == 1
    assert "automatic_https" not in servers["http"]
    assert config["apps"]["tls"]["automation"]["policies"] == [
        {"subjects": ["a.example.test", "b.example.test"], "issuers": [{"module": "internal"}]}
    ]


def test_tls_auto_leaves_public_names_to_caddy() -> None:
    public = {"a.example.com": "dpl_1-app:80", "b.example.org": "dpl_2-app:80"}
    config = desired_config(public, "auto")
    assert "tls" not in config["apps"]
    assert set(_servers(config)) == {"http", "https"}
    assert "automatic_https" not in json.dumps(config)


def test_admin_api_is_a_unix_socket_only() -> None:
    for tls in ("off", "internal", "auto"):
        admin = desired_config(ROUTES, tls)["admin"]
        assert admin["listen"].startswith(f"unix/{ADMIN_SOCKET}")
        assert admin["config"] == {"persist": False}


def test_no_routes_is_just_the_404() -> None:
    config = desired_config({}, "internal")
    assert "tls" not in config["apps"]
    assert routes_from_config(config) == {}
    assert all(len(s["routes"]) == 1 for s in _servers(config).values())


@pytest.mark.parametrize("tls", ["off", "internal", "auto"])
def test_routes_round_trip(tls: Any) -> None:
    assert routes_from_config(desired_config(ROUTES, tls)) == ROUTES


def test_routes_from_foreign_configs() -> None:
    assert routes_from_config(None) == {}
    assert routes_from_config({"apps": {}}) == {}
    foreign = {
        "apps": {
            "http": {
                "servers": {
                    "s": {
                        "routes": [
                            {"match": [{"host": ["X.test", "y.test"]}], "handle": []},
                            {"match": [{"host": ["x.test"]}], "handle": [{"handler": "x"}]},
                        ]
                    }
                }
            }
        }
    }
    # A hand-made route that proxies nothing reads as upstream "": unexpected or changed.
    assert routes_from_config(foreign) == {"x.test": "", "y.test": ""}


@pytest.mark.parametrize(
    "routes",
    [
        {"not a host": "a:80"},
        {"a.test": "no-port"},
        {"a.test": "a:99999"},
        {"a.test": "{http.request.host}:80"},
        {"A.test": "a:80", "a.test": "b:80"},
    ],
)
def test_bad_routes_are_invalid_spec(routes: dict[str, str]) -> None:
    with pytest.raises(InvalidSpec):
        desired_config(routes, "off")


def test_domains_are_lower_cased() -> None:
    assert routes_from_config(desired_config({"App.Test.": "a:80"}, "off")) == {"app.test": "a:80"}


def test_settings(tmp_path: pathlib.Path) -> None:
    base = ProxySettings(state_dir=tmp_path, tls=False)
    assert base.tls == "off"
    assert base.config_file == tmp_path / "proxy" / "caddy.json"
    auto = CaddyProxy(base.model_copy(update={"tls": "auto"})).settings_hash
    internal = CaddyProxy(base.model_copy(update={"tls": "internal"})).settings_hash
    moved = CaddyProxy(base.model_copy(update={"tls": "auto", "https_port": 8443})).settings_hash
    assert auto == internal  # same container, only the config differs
    assert len({CaddyProxy(base).settings_hash, auto, moved}) == 3  # 443 published or moved


def test_docker_daemon_down_is_temporary(tmp_path: pathlib.Path) -> None:
    import docker

    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-docker.sock", version="1.41")
    with pytest.raises(TemporaryError, match="not reachable"):
        CaddyProxy(ProxySettings(state_dir=tmp_path), client).ensure()


def test_admin_not_answering_is_temporary(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TemporaryError, match="admin API does not answer"):
        CaddyProxy(ProxySettings(state_dir=tmp_path)).current_routes()


def test_admin_socket_path_too_long_is_a_host_error(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(HostError, match="shorter state dir"):
        CaddyProxy(ProxySettings(state_dir=deep)).current_routes()


# ----------------------------------------------------------------------------- real Docker


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        if os.environ.get("RECONCILE_SKIP_DOCKER") == "1":
            pytest.skip("RECONCILE_SKIP_DOCKER=1")
        pytest.fail(
            f"Docker Engine is not reachable ({exc}); run `bash scripts/setup.sh --docker` "
            "(or set RECONCILE_SKIP_DOCKER=1 to skip the Docker tests)"
        )
    return client


@dataclass
class Env:
    client: Any
    proxy: CaddyProxy
    backends: dict[str, str]  # body -> upstream
    state_dir: pathlib.Path

    @property
    def settings(self) -> ProxySettings:
        return self.proxy.settings

    def routes(self) -> dict[str, str]:
        return {"one.test": self.backends["one"], "two.test": self.backends["two"]}

    def container(self) -> Any:
        return self.client.containers.get(self.settings.container)


def _get(port: int, domain: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": domain}, timeout=5)


def _probe_or_error(proxy: CaddyProxy, domain: str) -> int | TemporaryError:
    try:
        return proxy.probe(domain)
    except TemporaryError as exc:
        return exc


def _until(fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 15) -> Any:
    """Call ``fn`` until ``ok(result)``; transport errors count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
        except (httpx.TransportError, OSError) as exc:
            result = exc
        else:
            if ok(result):
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: last result {result!r}")
        time.sleep(0.1)


def _body(env: Env, domain: str) -> str:
    r = _until(lambda: _get(env.settings.http_port, domain), lambda r: r.status_code == 200)
    return str(r.text)


def _run_backend(client: Any, name: str, network: str, body: str) -> None:
    client.containers.run(
        "busybox:1.36",
        [
            "sh",
            "-c",
            f"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
        name=name,
        init=True,
        network=network,
        detach=True,
        labels={"io.reconciler.test": "proxy"},
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    client = _docker()
    tag = secrets.token_hex(4)
    settings = ProxySettings(
        state_dir=tmp_path_factory.mktemp("px"),
        network=f"rt-proxy-test-{tag}",
        container=f"rt-proxy-test-{tag}",
        http_port=free_port(),
        https_port=free_port(),
        tls="off",
        bind="127.0.0.1",
    )
    dpl = f"dpl_{secrets.token_hex(8)}"
    backends = {"one": f"{dpl}-one", "two": f"{dpl}-two"}
    proxy = CaddyProxy(settings, client)
    try:
        proxy.ensure()  # creates the network the backends join
        for body, name in backends.items():
            _run_backend(client, name, settings.network, body)
        yield Env(client, proxy, {b: f"{n}:80" for b, n in backends.items()}, settings.state_dir)
    finally:
        import docker.errors

        for name in [*backends.values(), settings.container]:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(name).remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.networks.get(settings.network).remove()
        proxy.close()


def _sparse_api_calls(client: Any) -> tuple[list[str], Callable[[], None]]:
    """Record every HTTP request the SDK makes; returns (calls, undo)."""
    calls: list[str] = []
    original = client.api.send

    def send(request: Any, **kw: Any) -> Any:
        calls.append(f"{request.method} {request.path_url}")
        return original(request, **kw)

    client.api.send = send

    def undo() -> None:
        del client.api.send

    return calls, undo


@pytest.mark.docker
def test_network_and_container_as_configured(env: Env) -> None:
    network = env.client.networks.get(env.settings.network)
    assert network.attrs["Driver"] == "bridge"
    assert network.attrs["Labels"][ROLE_LABEL] == "proxy-network"
    c = env.container()
    assert c.status == "running"
    assert c.labels[ROLE_LABEL] == "proxy"
    assert c.labels[SETTINGS_LABEL] == env.proxy.settings_hash
    assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert c.attrs["Image"] == env.client.images.get("caddy:2").id
    assert env.settings.network in c.attrs["NetworkSettings"]["Networks"]


@pytest.mark.docker
def test_ensure_is_idempotent_and_cheap(env: Env) -> None:
    before = env.container().id
    calls, undo = _sparse_api_calls(env.client)
    try:
        env.proxy.ensure()
    finally:
        undo()
    assert env.container().id == before
    assert len(calls) <= 2, calls


@pytest.mark.docker
def test_sync_serves_each_domain_and_404s_the_rest(env: Env) -> None:
    found = env.proxy.sync(env.routes())
    assert found.missing == ["one.test", "two.test"]
    assert _body(env, "one.test") == "one\n"
    assert _body(env, "two.test") == "two\n"
    assert _get(env.settings.http_port, "nobody.test").status_code == 404
    assert env.proxy.probe("one.test") == 200
    assert env.proxy.probe("nobody.test") == 404
    assert json.loads(env.settings.config_file.read_text()) == env.proxy.desired_config(
        env.routes()
    )


@pytest.mark.docker
def test_diff_in_sync(env: Env) -> None:
    found = env.proxy.diff(env.routes())
    assert found.in_sync == ["one.test", "two.test"]
    assert (found.missing, found.unexpected, found.changed) == ([], [], [])
    assert found.ok
    assert env.proxy.current_routes() == env.routes()
    # In sync: sync() loads nothing (Caddy's config stays the same object).
    assert env.proxy.sync(env.routes()).ok


@pytest.mark.docker
def test_removed_route_is_unexpected_then_gone(env: Env) -> None:
    only_one = {"one.test": env.backends["one"]}
    found = env.proxy.diff(only_one)
    assert found.unexpected == ["two.test"]
    assert found.in_sync == ["one.test"]
    assert env.proxy.sync(only_one).unexpected == ["two.test"]
    assert env.proxy.diff(only_one).ok
    assert env.proxy.current_routes() == only_one
    assert _get(env.settings.http_port, "two.test").status_code == 404
    assert _body(env, "one.test") == "one\n"
    env.proxy.sync(env.routes())
    assert _body(env, "two.test") == "two\n"


@pytest.mark.docker
def test_changed_upstream(env: Env) -> None:
    swapped = {"one.test": env.backends["two"], "two.test": env.backends["two"]}
    found = env.proxy.diff(swapped)
    assert found.changed == ["one.test"]
    assert found.in_sync == ["two.test"]
    assert env.proxy.sync(swapped).changed == ["one.test"]
    assert _body(env, "one.test") == "two\n"
    env.proxy.sync(env.routes())
    assert _body(env, "one.test") == "one\n"


@pytest.mark.docker
def test_hand_edited_config_is_repaired(env: Env) -> None:
    # Someone drops the 404 fallback by hand: routes still agree, the config does not.
    tampered = env.proxy.desired_config(env.routes())
    tampered["apps"]["http"]["servers"]["http"]["routes"].pop()
    env.proxy._load(tampered)
    found = env.proxy.sync(env.routes())
    assert found.routes_in_sync
    assert found.settings_drift
    assert env.proxy.diff(env.routes()).ok
    assert _get(env.settings.http_port, "nobody.test").status_code == 404


@pytest.mark.docker
def test_admin_api_is_not_published_nor_on_the_network(env: Env) -> None:
    c = env.container()
    ports = c.attrs["NetworkSettings"]["Ports"]
    # The image EXPOSEs 80, 443 and 2019; only what has host bindings is published.
    assert {p for p, bound in ports.items() if bound} == {"80/tcp"}, ports  # tls: off
    assert [b["HostIp"] for b in ports["80/tcp"]] == ["127.0.0.1"]
    assert env.client.api.port(c.id, 2019) is None
    # The live config's admin endpoint is the unix socket in the state dir.
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(env.settings.admin_socket))) as a:
        admin = a.get("http://localhost/config/admin").json()
    assert admin["listen"].startswith(f"unix/{ADMIN_SOCKET}")
    # Inside the proxy's network namespace, Caddy listens on TCP :80 and nothing else,
    # so nothing on the proxy network can reach an admin API.
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        code, out = c.exec_run(["cat", table])
        assert code == 0, out
        for line in out.decode().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].rsplit(":", 1)
            # 127.0.0.11 is Docker's embedded DNS resolver, not Caddy.
            if fields[3] == "0A" and address != "0B00007F":  # LISTEN
                listening.add(int(port, 16))
    assert listening == {80}, listening


@pytest.mark.docker
def test_stopped_proxy_is_started_by_ensure(env: Env) -> None:
    before = env.container().id
    env.container().stop(timeout=5)
    env.proxy.ensure()
    c = env.container()
    assert (c.id, c.status) == (before, "running")
    assert _body(env, "one.test") == "one\n"


@pytest.mark.docker
def test_removed_proxy_is_recreated_and_serves_the_last_routes(env: Env) -> None:
    before = env.container().id
    env.container().remove(force=True)
    env.proxy.ensure()
    assert env.container().id != before
    # No sync: the routes come back from caddy.json in the state dir.
    assert env.proxy.current_routes() == env.routes()
    assert _body(env, "one.test") == "one\n"
    assert _body(env, "two.test") == "two\n"
    assert env.proxy.diff(env.routes()).ok


@pytest.mark.docker
def test_taken_port_is_a_host_error(env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        blocked = CaddyProxy(env.settings.model_copy(update={"http_port": port}), env.client)
        with pytest.raises(HostError, match="port of the proxy is taken"):
            blocked.ensure()
        blocked.close()
    env.proxy.ensure()  # the module's settings again: recreated, serving the last routes
    assert _body(env, "two.test") == "two\n"


@pytest.mark.docker
def test_a_foreign_container_with_the_name_is_left_alone(env: Env) -> None:
    name = f"{env.settings.container}-foreign"
    foreign = env.client.containers.create("busybox:1.36", ["true"], name=name)
    try:
        other = CaddyProxy(env.settings.model_copy(update={"container": name}), env.client)
        with pytest.raises(HostError, match="not ours"):
            other.ensure()
        foreign.reload()  # still there, untouched
        assert foreign.status == "created"
    finally:
        foreign.remove(force=True)


@pytest.mark.docker
def test_timings(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: cold ensure, warm ensure, sync of 20 routes."""
    env.container().remove(force=True)
    t = time.monotonic()
    env.proxy.ensure()
    cold = time.monotonic() - t
    warm = []
    for _ in range(20):
        t = time.monotonic()
        env.proxy.ensure()
        warm.append(time.monotonic() - t)
    twenty = {f"app{i:02d}.test": env.backends["one" if i % 2 else "two"] for i in range(20)}
    t = time.monotonic()
    assert env.proxy.sync(twenty).missing == sorted(twenty)
    sync20 = time.monotonic() - t
    noop = []
    for _ in range(10):
        t = time.monotonic()
        assert env.proxy.sync(twenty).ok
        noop.append(time.monotonic() - t)
    first = _until(
        lambda: _get(env.settings.http_port, "app07.test"), lambda r: r.status_code == 200
    )
    assert first.text == "one\n"
    env.proxy.sync(env.routes())
    with capsys.disabled():
        print(
            f"\n[proxy timings] ensure cold (create+start to admin ready) {cold * 1000:.0f} ms; "
            f"ensure warm median {statistics.median(warm) * 1000:.1f} ms "
            f"(max {max(warm) * 1000:.1f}); sync of 20 routes {sync20 * 1000:.1f} ms; "
            f"no-op sync of 20 median {statistics.median(noop) * 1000:.1f} ms"
        )


@pytest.mark.docker
def test_changed_port_recreates_the_container(env: Env) -> None:
    before = env.container()
    moved = CaddyProxy(env.settings.model_copy(update={"http_port": free_port()}), env.client)
    try:
        assert moved.settings_hash != env.proxy.settings_hash
        moved.ensure()
        after = env.container()
        assert after.id != before.id
        assert after.labels[SETTINGS_LABEL] == moved.settings_hash
        assert moved.current_routes() == env.routes()
        assert _body(Env(env.client, moved, env.backends, env.state_dir), "two.test") == "two\n"
    finally:
        moved.close()
    env.proxy.ensure()  # back to the module's port
    assert env.container().labels[SETTINGS_LABEL] == env.proxy.settings_hash


@pytest.mark.docker
def test_tls_internal_serves_https_and_redirects_http(env: Env) -> None:
    env.proxy.sync(env.routes())  # the routes caddy.json holds when the TLS proxy boots
    tls = CaddyProxy(env.settings.model_copy(update={"tls": "internal"}), env.client)
    try:
        tls.ensure()  # 443 is published now: a recreate
        c = env.container()
        published = {p for p, bound in c.attrs["NetworkSettings"]["Ports"].items() if bound}
        assert published == {"80/tcp", "443/tcp", "443/udp"}
        assert c.labels[SETTINGS_LABEL] == tls.settings_hash
        found = tls.sync(env.routes())
        # The recreate booted the file's routes re-rendered for the new TLS mode.
        assert found.ok, found
        # Caddy issues the internal certificates in the background after a load: until
        # then the handshake fails (a TemporaryError from the probe), as the executor's
        # probe loop also allows for.
        status = _until(lambda: _probe_or_error(tls, "one.test"), lambda s: s == 200)
        assert status == 200
        r = _get(tls.settings.http_port, "one.test")
        assert r.status_code == 308
        assert r.headers["location"] == f"https://one.test:{tls.settings.https_port}/"
        assert _get(tls.settings.http_port, "nobody.test").status_code == 404
        # Verified this time: the certificate is for two.test, from Caddy's internal CA,
        # whose root sits in the state dir (data/ is mounted, so it survives a recreate).
        root = tls.settings.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(root)), timeout=5) as h:
            response = h.get(
                f"https://127.0.0.1:{tls.settings.https_port}/",
                headers={"Host": "two.test"},
                extensions={"sni_hostname": "two.test"},
            )
        assert response.text == "two\n"
    finally:
        tls.close()


def test_proxy_container_name_from_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second proxy beside the host's (tests, benchmarks); a name Docker would refuse
    is a typed error before any Docker call."""
    from agent.proxy import PROXY_CONTAINER_ENV
    from reconciler.model.deployment import ProxyConfig
    from reconciler.model.errors import HostError

    monkeypatch.delenv(PROXY_CONTAINER_ENV, raising=False)
    assert ProxySettings.from_config(ProxyConfig(), tmp_path).container == "reconciler-proxy"
    monkeypatch.setenv(PROXY_CONTAINER_ENV, "reconciler-proxy-ci.2")
    assert ProxySettings.from_config(ProxyConfig(), tmp_path).container == "reconciler-proxy-ci.2"
    monkeypatch.setenv(PROXY_CONTAINER_ENV, "../evil name")
    with pytest.raises(HostError, match=PROXY_CONTAINER_ENV):
        ProxySettings.from_config(ProxyConfig(), tmp_path)
