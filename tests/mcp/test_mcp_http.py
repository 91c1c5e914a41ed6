"""``reconcile mcp --http PORT``: the same tools over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import subprocess
import time

import httpx
from mcp import Client

from tests.conftest import free_port
from tests.mcp.mcp_helpers import RECONCILE, make_clone

START_TIMEOUT = 60.0  # seconds until the port accepts; a guard, not a measured figure


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "reconcile mcp --http exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("reconcile mcp --http did not listen")


def test_streamable_http_serves_the_tools_on_loopback(tmp_path: pathlib.Path) -> None:
    clone = make_clone(
        tmp_path,
        {
            "reconcile.yaml": "namespace: mcphttp\n",
            "deployments/a.yaml": "name: aaa\nagent: local\napp: nosuch\n",
        },
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    proc = subprocess.Popen(
        [RECONCILE, "mcp", "--repo", str(clone), "--http", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc)

        async def main() -> tuple[set[str], object]:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool("validate", {})
                return tools, result.structured_content

        tools, report = asyncio.run(main())
        # a web page that rebinds its own name to 127.0.0.1 is turned away by its Host
        rebound = httpx.post(
            f"http://127.0.0.1:{port}/mcp",
            headers={"Host": "evil.example", "Content-Type": "application/json"},
            content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
            timeout=10,
        )
        assert rebound.status_code in (403, 421), rebound.status_code
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert {"deploy_catalog_app", "get_logs", "validate"} <= tools
    assert isinstance(report, dict)
    assert report["valid"] is False  # no such catalog app
    assert report["problems"][0]["file"] == "deployments/a.yaml"
