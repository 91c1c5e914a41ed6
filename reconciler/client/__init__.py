"""Clients of the control plane's admin API shared by ``reconciler.cli`` and
``reconciler.mcp``: one place for the wire, so the CLI and the MCP tools cannot drift
apart.  Below both in the layers; imports only :mod:`reconciler.model` (and httpx)."""
