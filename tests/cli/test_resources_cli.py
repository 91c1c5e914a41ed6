"""`reconcile plan` through the real console script: a deployment whose memory_mb is more
than the host's total memory (from a `status -f json` snapshot) is blocked with the
reason, in text and in JSON."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from reconciler.model.state import ActualState, AgentState
from tests.conftest import RepoFactory

RECONCILE = str(pathlib.Path(sys.executable).with_name("reconcile"))


def reconcile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def test_plan_blocks_memory_above_the_hosts_total(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    root = make_repo(
        {
            "deployments/big.yaml": "name: big\nimage: busybox:1.36\nmemory_mb: 4096\n",
            "deployments/small.yaml": "name: small\nimage: busybox:1.36\nmemory_mb: 256\n",
        }
    )
    snapshot = tmp_path / "host.json"
    state = ActualState(
        source="local", agents={"local": AgentState(agent="local", total_memory_mb=2048)}
    )
    snapshot.write_text(state.model_dump_json())

    as_json = reconcile("plan", str(root), "--against", f"snapshot:{snapshot}", "-f", "json")
    plan = json.loads(as_json.stdout)
    actions = {a["deployment"]: a for a in plan["actions"]}
    assert actions["small"]["action"] == "install"
    assert actions["big"]["action"] == "blocked"
    reason = (
        "memory_mb 4096 is more than the 2048 MB of memory agent local has in total; "
        "lower memory_mb, or place it on a larger host"
    )
    assert actions["big"]["reason"] == reason

    as_text = reconcile("plan", str(root), "--against", f"snapshot:{snapshot}")
    assert reason in as_text.stdout
