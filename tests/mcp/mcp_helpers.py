"""Drive ``reconcile mcp`` with the SDK's own client over stdio, as an AI tool would."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp import Client
from mcp.client.stdio import StdioServerParameters

RECONCILE = str(pathlib.Path(sys.executable).with_name("reconcile"))

T = TypeVar("T")


class Session:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The tool's structured result; an error result fails the test with its body."""
        result = await self.client.call_tool(tool, args or {})
        assert not result.is_error, (tool, result.structured_content, result.content)
        assert isinstance(result.structured_content, dict)
        return result.structured_content

    async def fail(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The structured error of a call that must fail."""
        result = await self.client.call_tool(tool, args or {})
        assert result.is_error, (tool, result.structured_content)
        assert isinstance(result.structured_content, dict)
        return result.structured_content


def run_mcp(
    repo: pathlib.Path,
    body: Callable[[Session], Awaitable[T]],
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> T:
    """Start ``reconcile mcp --repo REPO`` as a subprocess and run ``body`` against it."""
    # the server must not inherit a control plane or token from the test runner's env
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    params = StdioServerParameters(
        command=RECONCILE,
        args=["mcp", "--repo", str(repo), *args],
        env={**base, "NO_COLOR": "1", **(env or {})},
    )

    async def main() -> T:
        async with Client(params) as client:
            return await body(Session(client))

    return asyncio.run(main())


def git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def make_clone(base: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A git repository with ``files`` committed on ``main`` (its own author config)."""
    repo = base / "clone"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.invalid")
    git(repo, "config", "user.name", "test")
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo
