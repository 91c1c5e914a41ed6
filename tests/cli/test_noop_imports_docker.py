"""A no-op ``reconcile apply`` as a process imports only what a no-op needs (issue 15,
item 4): checked by the modules loaded (``sys.modules`` at exit), not with a clock.

Three busybox httpd apps on the real Docker Engine, Compose v2 and Caddy, installed once;
then the no-op runs as users run it, in a fresh interpreter, and the modules it imported
are checked.  A module listed here costs every ``reconcile apply`` its import time (the
server stack alone is ~100 ms); if one comes back on the path, this test names it.

Shared daemon: the namespace is unique, the proxy is a container of its own on a free
port and a network of its own (the apps join only that one); everything is removed.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.noop_host import ProbeHost

pytestmark = pytest.mark.docker

APPS = ("app-a", "app-b", "app-c")
# Never on the no-op path: the control plane, the MCP server, the other commands, the
# Docker SDK and python-on-whales (the no-op reads the Engine API over the socket and
# spawns no compose), the JSON Schema validator (the models validate; the schema only
# explains refusals), git (a directory source), rich's live display (nothing to show).
NEVER = (
    "agent.operations",
    "cryptography",
    "docker",
    "fastapi",
    "git",
    "httpx",
    "jinja2",
    "jsonschema",
    "mcp",
    "prometheus_client",
    "python_on_whales",
    "reconciler.cli.backup",
    "reconciler.cli.catalog",
    "reconciler.cli.day2",
    "reconciler.cli.mcp",
    "reconciler.cli.plan",
    "reconciler.cli.progress",
    "reconciler.cli.serve",
    "reconciler.cli.status",
    "reconciler.mcp",
    "reconciler.model.day2",
    "reconciler.server",
    "rich.live",
    "rich.progress",
    "sqlite3",
    "starlette",
    "uvicorn",
    "watchfiles",
)
# ... and with ``-f json`` nothing is printed through rich at all.
NEVER_JSON = ("rich",)
# The path itself: if these are missing, the run did not take it and the test proves nothing.
ALWAYS = ("reconciler.cli.apply", "reconciler.load.desired", "agent.observe", "agent.executor")


class Host(ProbeHost):
    def __init__(self, base: pathlib.Path) -> None:
        # the normal path's imports are checked here (the fast path: test_fastpath_docker)
        super().__init__(
            base,
            prefix="noop",
            apps=APPS,
            env={"RECONCILE_NO_FAST_PATH": "1"},
            drop_env=("PYTHONDONTWRITEBYTECODE",),
        )

    def apply(self, fmt: str = "json") -> tuple[dict[str, Any], set[str]]:
        """One ``reconcile apply --yes`` in a fresh interpreter: its JSON (the text output
        for ``text``) and the modules it loaded."""
        proc, modules = self.probe(["apply", str(self.repo), "--yes", "-f", fmt, "--settle", "0.5"])
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
        return (json.loads(proc.stdout) if fmt == "json" else {"text": proc.stdout}), modules


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("noop"))
    try:
        first, _ = h.apply()
        assert [(r["action"], r["ok"]) for r in first["results"]] == [("install", True)] * 3
        yield h
    finally:
        h.cleanup()


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The names in ``names`` that were imported, themselves or any submodule of them."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


def test_a_json_no_op_imports_only_what_it_needs(host: Host) -> None:
    doc, modules = host.apply()
    assert doc["results"] == []
    assert {a["action"] for a in doc["plan"]["actions"]} == {"noop"}
    assert len(doc["plan"]["actions"]) == len(APPS)
    assert _loaded(modules, ALWAYS) == list(ALWAYS)
    assert _loaded(modules, NEVER + NEVER_JSON) == []


def test_a_text_no_op_prints_through_rich_without_its_live_display(host: Host) -> None:
    out, modules = host.apply(fmt="text")
    assert out["text"].strip() == f"No changes. {len(APPS)} deployments up to date."
    assert _loaded(modules, ("rich.console",)) == ["rich.console"]
    assert _loaded(modules, NEVER) == []
