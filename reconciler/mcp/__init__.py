"""``reconcile mcp``: the desired-state repository and the control plane, as MCP tools.

Git stays the truth: the tools that change something write a deployment file in a git
worktree of the local clone, validate it, plan it and commit it on a new branch (pushed
only with ``reconcile mcp --push``).  Nothing here talks to Docker through the agent
package: the read tools call the same loader and planner the CLI calls, and the few
host actions go through ``docker compose`` or the control plane (:mod:`.actions`).
"""
