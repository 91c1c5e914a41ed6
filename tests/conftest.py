"""Shared fixtures: small desired-state repositories written into tmp_path."""

from __future__ import annotations

import pathlib
import socket
import textwrap
from collections.abc import Callable

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now (for a server or the proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RepoFactory = Callable[[dict[str, str]], pathlib.Path]


@pytest.fixture
def make_repo(tmp_path: pathlib.Path) -> RepoFactory:
    """Write ``{relative path: content}`` (dedented) under a fresh repo root."""

    count = 0

    def make(files: dict[str, str]) -> pathlib.Path:
        nonlocal count
        count += 1
        root = tmp_path / ("repo" if count == 1 else f"repo{count}")
        root.mkdir()
        (root / "deployments").mkdir(exist_ok=True)
        for rel, content in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content))
        return root

    return make


@pytest.fixture(autouse=True)
def fresh_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test parses and emits YAML as if the process had just started: the process-wide
    memos of loading and rendering (tested on their own) never carry one test's documents
    into the next, so a test that counts parses or budgets sees every parse."""
    from reconciler.load import yamlsafe
    from reconciler.model.memo import Memo
    from reconciler.render import rendering

    monkeypatch.setattr(yamlsafe, "_memo", Memo(yamlsafe._memo.size))
    monkeypatch.setattr(rendering, "_memo", Memo(rendering._memo.size))
