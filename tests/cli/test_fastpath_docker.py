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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.cli.fastpath import RECORD_NAME
from tests.cli.noop_host import DEPLOYMENT as BASE_DEPLOYMENT
from tests.cli.noop_host import ProbeHost

pytestmark = pytest.mark.docker

APPS = ("app-a", "app-b")
DEPLOYMENT = "# note a\n" + BASE_DEPLOYMENT
HEAVY = ("typer", "pydantic", "yaml", "rich")


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


class Host(ProbeHost):
    def __init__(self, base: pathlib.Path) -> None:
        super().__init__(
            base,
            prefix="fast",
            apps=APPS,
            deployment=DEPLOYMENT,
            drop_env=("RECONCILE_NO_FAST_PATH",),
        )

    def apply(self, *extra: str, fmt: str = "json", env: dict[str, str] | None = None) -> Run:
        argv = ["apply", str(self.repo), "--yes", "-f", fmt, "--settle", "0.5", *extra]
        proc, modules = self.probe(argv, env)
        return Run(proc.returncode, proc.stdout, proc.stderr, modules)

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
