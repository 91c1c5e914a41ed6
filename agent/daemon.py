"""``reconcile-agent``: the host daemon that long-polls the control plane.

The control plane and the agent protocol are not built yet; until then the entry point
exists so that the distribution's console scripts are stable, and says so plainly.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    sys.stderr.write(
        "reconcile-agent: the agent daemon is not available in this version; "
        "use `reconcile validate` for now\n"
    )
    raise SystemExit(1)
