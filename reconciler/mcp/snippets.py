"""``reconcile mcp config --tool ...``: the snippet each AI tool reads to start the server."""

from __future__ import annotations

import json
import shlex
from enum import StrEnum

__all__ = ["AiTool", "snippet"]


class AiTool(StrEnum):
    claude_code = "claude-code"
    cursor = "cursor"
    codex = "codex"


def snippet(tool: AiTool, *, command: str, repo: str, server: str | None) -> str:
    """The config text for ``tool``; the token is named, never written into it."""
    args = ["mcp", "--repo", repo]
    env = {"RECONCILE_SERVER": server} if server else {}
    if tool is AiTool.claude_code:
        # `claude mcp add` writes the same JSON into Claude Code's settings.
        parts = ["claude", "mcp", "add", "reconcile"]
        for key, value in env.items():
            parts += ["--env", f"{key}={value}"]
        return (
            "# run once; export RECONCILE_TOKEN (or RECONCILE_TOKEN_FILE) where claude runs\n"
            + shlex.join([*parts, "--", command, *args])
            + "\n"
        )
    if tool is AiTool.cursor:
        entry: dict[str, object] = {"command": command, "args": args}
        if env:
            entry["env"] = env
        return (
            "// .cursor/mcp.json (or ~/.cursor/mcp.json)\n"
            + json.dumps({"mcpServers": {"reconcile": entry}}, indent=2)
            + "\n"
        )
    lines = [
        "# ~/.codex/config.toml",
        "[mcp_servers.reconcile]",
        f"command = {json.dumps(command)}",
        f"args = {json.dumps(args)}",
    ]
    if env:
        lines.append(
            "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }"
        )
    lines.append('# the token: add RECONCILE_TOKEN_FILE = "/path/to/token" to env')
    return "\n".join(lines) + "\n"
