"""The no-op fast path (issue 15) on the real Docker Engine, Compose and Caddy: an
unchanged ``reconcile apply`` answers without typer, pydantic or yaml and prints what the
normal path printed; every change of an input sends the next run down the normal path,
which acts on it.

Which path a run took is read from the modules it loaded (``sys.modules`` at exit), not
from a clock.  Shared daemon: unique namespace, a proxy container and network of its own.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.cli.fastpath import RECORD_NAME
from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import free_port

pytestmark = pytest.mark.docker

APPS = ("app-a", "app-b")
COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    command: [sh, -c, 'mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www']
    networks: [NETWORK]
networks:
  NETWORK: {external: true}
"""
DEPLOYMENT = (
    "# note a\nname: NAME\ncompose: ./compose.yaml\n"
    "routes:\n  - upstream: '{deployment_id}-app:80'\n"
)
HEAVY = ("typer", "pydantic", "yaml", "rich")
PROBE = """\
import atexit, pathlib, sys
out = pathlib.Path(sys.argv.pop(1))
atexit.register(lambda: out.write_text("\\n".join(sorted(sys.modules))))
from reconciler.cli import main
main()
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    modules: set[str]

    @property
    def fast(self) -> bool:
        return not any(m in self.modules for m in HEAVY)

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc


class Host:
    def __init__(self, base: pathlib.Path) -> None:
        self.docker = docker_client()
        self.namespace = unique_namespace("fast")
        self.proxy = f"reconciler-proxy-{self.namespace}"
        self.port = free_port()
        self.repo = base / "repo"
        self.state = base / "state"
        (self.repo / "deployments").mkdir(parents=True)
        (self.repo / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\n"
            f"proxy: {{tls: off, http_port: {self.port}, network: {self.namespace}}}\n"
        )
        for name in APPS:
            app = self.repo / "deployments" / name
            app.mkdir()
            (app / "compose.yaml").write_text(COMPOSE.replace("NETWORK", self.namespace))
            (app / "deployment.yaml").write_text(DEPLOYMENT.replace("NAME", name))
        self.env = {
            **os.environ,
            "RECONCILE_STATE_DIR": str(self.state),
            "RECONCILE_PROXY_CONTAINER": self.proxy,
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.env.pop("RECONCILE_NO_FAST_PATH", None)

    def apply(self, *extra: str, fmt: str = "json", env: dict[str, str] | None = None) -> Run:
        loaded = self.repo.parent / "modules.txt"
        loaded.unlink(missing_ok=True)
        argv = ["apply", str(self.repo), "--yes", "-f", fmt, "--settle", "0.5", *extra]
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, str(loaded), *argv],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, set(loaded.read_text().split()))

    def converge(self, *extra: str, fmt: str = "json") -> Run:
        """Runs until one takes the fast path (a repair, then the no-op that records)."""
        for _ in range(3):
            run = self.apply(*extra, fmt=fmt)
            assert run.code == 0, run.stderr[-2000:]
            if run.fast:
                return run
        raise AssertionError("the fast path was never taken")

    def container(self, app: str) -> Any:
        found = self.docker.containers.list(
            all=True,
            filters={
                "label": [
                    f"io.reconciler.namespace={self.namespace}",
                    f"io.reconciler.name={app}",
                ]
            },
        )
        assert len(found) == 1
        return found[0]

    def cleanup(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True, v=True)
        for c in self.docker.containers.list(all=True, filters={"name": f"^/{self.proxy}$"}):
            c.remove(force=True)
        for n in self.docker.networks.list(names=[self.namespace]):
            n.remove()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("fast"))
    try:
        first = h.apply()
        assert first.code == 0, first.stderr[-3000:]
        assert [(r["action"], r["ok"]) for r in first.json()["results"]] == [("install", True)] * 2
        assert not (h.state / RECORD_NAME).exists()  # not a no-op: nothing recorded
        yield h
    finally:
        h.cleanup()


def _noop(run: Run) -> None:
    assert run.code == 0, run.stderr[-2000:]
    doc = run.json()
    assert doc["results"] == []
    assert {a["action"] for a in doc["plan"]["actions"]} == {"noop"}


def _without_seconds(run: Run) -> dict[str, Any]:
    doc = run.json()
    doc.pop("seconds")
    return doc


def test_an_unchanged_no_op_takes_the_fast_path_and_prints_the_same(host: Host) -> None:
    normal = host.apply("--no-fast-path")
    _noop(normal)
    assert not normal.fast
    recorded = host.apply()  # the record is written by a run of this very argv
    assert not recorded.fast
    fast = host.apply()
    assert fast.fast, sorted(m for m in fast.modules if m.split(".")[0] in HEAVY)
    assert fast.code == 0
    assert fast.stderr == ""
    assert _without_seconds(fast) == _without_seconds(normal)
    assert isinstance(fast.json()["seconds"], float)
    # Text: the same words, byte for byte.
    text_normal = host.apply(fmt="text")
    assert not text_normal.fast
    text_fast = host.apply(fmt="text")
    assert text_fast.fast
    assert text_fast.stdout == text_normal.stdout
    assert text_fast.stdout.strip() == f"No changes. {len(APPS)} deployments up to date."


def test_disabled_by_the_flag_and_the_environment(host: Host) -> None:
    host.converge()
    assert not host.apply(env={"RECONCILE_NO_FAST_PATH": "1"}).fast
    assert not host.apply("--no-fast-path").fast


def test_a_same_size_same_mtime_edit_is_seen(host: Host) -> None:
    host.converge()
    path = host.repo / "deployments" / "app-a" / "deployment.yaml"
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace("# note a", "# note b"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    run = host.apply()
    assert not run.fast
    assert run.code == 0, run.stderr[-2000:]
    # The deployment file is part of the spec: the normal path updates the app.
    assert [(r["deployment"], r["action"], r["ok"]) for r in run.json()["results"]] == [
        ("app-a", "update", True)
    ]
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    host.converge()


def test_a_file_added_or_removed_is_seen(host: Host) -> None:
    host.converge()
    extra = host.repo / "deployments" / "app-a" / "notes.txt"
    extra.write_text("x")
    assert not host.apply().fast
    host.converge()
    extra.unlink()
    assert not host.apply().fast


def test_an_environment_change_is_seen(host: Host) -> None:
    host.converge()
    run = host.apply(env={"SOME_UNRELATED_VAR": "1"})
    assert not run.fast
    _noop(run)


def test_a_different_flag_is_seen(host: Host) -> None:
    host.converge()
    assert not host.apply("--settle", "0.6").fast


def test_a_state_record_change_is_seen(host: Host) -> None:
    host.converge()
    records = sorted((host.state / "apps").rglob("*.json"))
    assert records
    st = records[0].stat()
    os.utime(records[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    run = host.apply()
    assert not run.fast
    _noop(run)


@pytest.mark.parametrize("how", ["remove", "stop"])
def test_a_container_removed_or_stopped_is_repaired(host: Host, how: str) -> None:
    host.converge()
    container = host.container("app-a")
    if how == "remove":
        container.remove(force=True)
    else:
        container.stop(timeout=1)
    run = host.apply()
    assert not run.fast
    assert run.code == 0, run.stderr[-2000:]
    results = run.json()["results"]
    assert [(r["deployment"], r["action"], r["ok"]) for r in results] == [("app-a", "repair", True)]
    assert not (host.state / RECORD_NAME).exists()  # a repair is not recorded
    assert host.container("app-a").status == "running"
    host.converge()


def test_a_restarted_container_is_seen(host: Host) -> None:
    host.converge()
    host.container("app-b").restart(timeout=1)
    # A restart keeps the id and the state; the fast path proves no more than the normal
    # path observes (the list), so both agree: still a no-op, served.
    run = host.apply()
    _noop(run)


def test_the_proxy_removed_is_recreated(host: Host) -> None:
    host.converge()
    host.docker.containers.get(host.proxy).remove(force=True)
    run = host.apply()
    assert not run.fast
    _noop(run)
    assert host.docker.containers.get(host.proxy).status == "running"
    host.converge()
