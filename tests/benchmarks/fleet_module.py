"""``benchmarks/fleet.py`` as a module for the tests (benchmarks are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "fleet.py"
NAME = "fleet_bench"


def load_fleet() -> ModuleType:
    """The script's module, loaded once."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
