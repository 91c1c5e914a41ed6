"""The agent's layer boundary holds at run time, not only in import-linter's static graph:
importing a package runs its ``__init__``, so ``reconciler.render.model`` would drag the
whole loader into every agent if ``reconciler/render/__init__.py`` imported it eagerly."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

AGENT_MODULES = [
    "agent.daemon",
    "agent.runner",
    "agent.executor",
    "agent.observe",
    "agent.proxy",
    "agent.onion",
    "agent.client",
]


def test_agent_modules_load_no_loader_planner_server_or_cli() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {AGENT_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('reconciler'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "reconciler.render.model" in loaded  # the values the agent does use
    forbidden = ("reconciler.load", "reconciler.plan", "reconciler.server", "reconciler.cli")
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_the_render_package_still_offers_the_rendering_functions() -> None:
    import reconciler.render as render

    assert callable(render.render_all) and render.RenderContext.__name__ == "RenderContext"
