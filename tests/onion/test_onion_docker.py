"""Onion services on the real Docker Engine with the real Tor sidecar (offline).

One module-scoped host: a repository with one onion-only busybox deployment, the proxy on
a free port (tls off), a temporary state dir, Tor with ``DisableNetwork 1``.  The
scenarios run in order; traffic goes only to 127.0.0.1 (the proxy's published port).
The ``.onion`` itself cannot be reached here (no network), but everything up to it can:
the address in the app's env, the key Tor loaded, the proxy route Tor points at.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.onion import HOSTNAME, PUBLIC_KEY, SECRET_KEY, hidden_service_ids, read_identity
from reconciler.model.ids import deployment_id
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.docker

DEPLOYMENT = """\
name: hidden
image: busybox:1.36
target_port: 80
onion: {onion}
"""


class OnionHost:
    def __init__(self, base: pathlib.Path) -> None:
        self.docker = docker_client()
        try:
            self.docker.images.list(name="reconciler-tor")[0]
        except IndexError:
            pytest.fail("no reconciler-tor image; `bash scripts/setup.sh --docker` builds it")
        self.namespace = unique_namespace("onion")
        self.port = free_port()
        self.repo = base / "repo"
        self.state = base / "state"
        (self.repo / "deployments").mkdir(parents=True)
        (self.repo / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\nproxy: {{http_port: {self.port}, tls: 'off'}}\n"
        )
        self.id = deployment_id(self.namespace, "hidden")
        self.set_onion(True)

    @property
    def app_dir(self) -> pathlib.Path:
        return self.state / "apps" / self.id

    def set_onion(self, on: bool) -> None:
        path = self.repo / "deployments" / "hidden.yaml"
        path.write_text(DEPLOYMENT.format(onion=str(on).lower()))

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO_ROOT),
                "RECONCILE_STATE_DIR": str(self.state),
                "RECONCILE_TOR_DISABLE_NETWORK": "1",
                "NO_COLOR": "1",
                "COLUMNS": "200",
            },
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"reconcile {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def apply(self, *extra: str) -> dict[str, Any]:
        out = self.reconcile(
            "apply", str(self.repo), "--yes", "-f", "json", "--settle", "1", *extra
        ).stdout
        result: dict[str, Any] = json.loads(out)
        assert all(r["ok"] for r in result["results"]), result["results"]
        return result

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.app_dir / "state.json").read_text())
        return data

    def exec(self, container: str, *cmd: str) -> str:
        code, output = self.docker.containers.get(container).exec_run(list(cmd))
        assert code == 0, (container, cmd, output)
        return str(output.decode())

    def tor_container(self) -> Any:
        found = self.docker.containers.list(all=True, filters={"name": "^reconciler-tor$"})
        return found[0] if found else None

    def teardown(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True)
        for role in ("proxy", "tor"):
            for c in self.docker.containers.list(
                all=True, filters={"label": f"io.reconciler.role={role}"}
            ):
                c.remove(force=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnionHost]:
    h = OnionHost(tmp_path_factory.mktemp("onion"))
    h.teardown()
    try:
        yield h
    finally:
        h.teardown()
        h.docker.close()


def test_onion_only_app_boots_with_its_onion_as_domain_url(host: OnionHost) -> None:
    result = host.apply()
    assert [r["action"] for r in result["results"]] == ["install"]
    identity = read_identity(host.app_dir / "onion")
    assert identity is not None
    address = identity.address
    env = host.exec(f"{host.id}-app", "env")
    assert f"DOMAIN_URL=http://{address}\n" in env
    assert f"DOMAIN={address}\n" in env
    record = host.record()
    assert record["onion_address"] == address
    assert record["urls"] == [f"http://{address}"]
    # the proxy route Tor points at serves the app for the onion host
    response = httpx.get(f"http://127.0.0.1:{host.port}/", headers={"Host": address}, timeout=10)
    assert response.status_code == 200, response.text[:200]
    # status shows it (observe_local copies the record's onion fields)
    status = json.loads(host.reconcile("status", "-f", "json").stdout)
    apps = [a for agent in status["agents"].values() for a in agent["deployments"].values()]
    mine = next(a for a in apps if a["id"] == host.id)
    assert mine["onion_address"] == address
    assert mine["urls"] == [f"http://{address}"]


def test_sidecar_publishes_our_address_from_our_key(host: OnionHost) -> None:
    identity = read_identity(host.app_dir / "onion")
    assert identity is not None
    tor = host.tor_container()
    assert tor is not None and tor.status == "running"
    published = host.exec("reconciler-tor", "cat", f"/var/lib/tor/hs/{host.id}/{HOSTNAME}")
    assert published.strip() == identity.address
    torrc = host.exec("reconciler-tor", "cat", "/etc/reconciler-tor/torrc")
    assert hidden_service_ids(torrc) == [host.id]
    assert "DisableNetwork 1" in torrc
    user = host.exec("reconciler-tor", "id", "-u").strip()
    assert user != "0"
    # a second apply is a no-op and leaves Tor alone
    again = host.apply()
    assert again["results"] == []
    assert host.tor_container().id == tor.id


def test_a_second_onion_app_is_added_and_removed_by_reload(host: OnionHost) -> None:
    tor = host.tor_container()
    second = deployment_id(host.namespace, "both")
    (host.repo / "deployments" / "both.yaml").write_text(
        "name: both\nimage: busybox:1.36\ndomain: both.example.test\nonion: true\n"
    )
    host.apply()
    assert host.tor_container().id == tor.id  # SIGHUP, not a new container
    torrc = host.exec("reconciler-tor", "cat", "/etc/reconciler-tor/torrc")
    assert hidden_service_ids(torrc) == sorted([host.id, second])
    identity = read_identity(host.state / "apps" / second / "onion")
    assert identity is not None
    published = host.exec("reconciler-tor", "cat", f"/var/lib/tor/hs/{second}/{HOSTNAME}")
    assert published.strip() == identity.address
    env = host.exec(f"{second}-app", "env")
    assert f"DOMAIN_URL=http://both.example.test:{host.port}\n" in env  # clearnet stays
    record = json.loads((host.state / "apps" / second / "state.json").read_text())
    assert record["urls"] == [f"http://both.example.test:{host.port}", f"http://{identity.address}"]
    (host.repo / "deployments" / "both.yaml").unlink()
    host.apply("--allow-mass-prune")
    assert host.tor_container().id == tor.id
    torrc = host.exec("reconciler-tor", "cat", "/etc/reconciler-tor/torrc")
    assert hidden_service_ids(torrc) == [host.id]


def test_onion_off_removes_the_hidden_service_and_keeps_the_key(host: OnionHost) -> None:
    before = read_identity(host.app_dir / "onion")
    assert before is not None
    keys = {n: (host.app_dir / "onion" / n).read_bytes() for n in (SECRET_KEY, PUBLIC_KEY)}
    host.set_onion(False)
    plan = json.loads(
        host.reconcile("plan", str(host.repo), "--against", "local", "-f", "json").stdout
    )
    [action] = plan["actions"]
    assert action["action"] == "update"
    assert {"field": "onion", "before": "true", "after": "false"}.items() <= next(
        c for c in action["changes"] if c["field"] == "onion"
    ).items()
    host.apply()
    # the last onion deployment is gone: so is the sidecar (and its torrc)
    assert host.tor_container() is None
    assert not (host.state / "tor").exists()
    assert host.record()["onion_address"] is None
    for name, data in keys.items():
        assert (host.app_dir / "onion" / name).read_bytes() == data
    # toggled back on: the same address, published again
    host.set_onion(True)
    host.apply()
    published = host.exec("reconciler-tor", "cat", f"/var/lib/tor/hs/{host.id}/{HOSTNAME}")
    assert published.strip() == before.address
    assert host.record()["onion_address"] == before.address


def test_uninstall_keeps_the_key_and_purge_deletes_it(host: OnionHost) -> None:
    address = host.record()["onion_address"]
    (host.repo / "deployments" / "hidden.yaml").unlink()
    host.apply("--allow-mass-prune")
    assert host.tor_container() is None
    identity = read_identity(host.app_dir / "onion")
    assert identity is not None and identity.address == address
    # reinstalled: the tombstone's key comes back with the same address
    host.set_onion(True)
    host.apply()
    assert host.record()["onion_address"] == address
    (host.repo / "deployments" / "hidden.yaml").unlink()
    host.apply("--allow-mass-prune", "--purge")
    assert not (host.app_dir / "onion").exists()
    assert host.tor_container() is None
