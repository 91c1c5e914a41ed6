"""``benchmarks/fleet.py`` as a user runs it, at smoke size: a real ``reconcile serve``
process on 127.0.0.1, 20 simulated agents over real HTTP, a real git push and a signed
webhook, and a real ``kill -9`` of the server.  No timing is asserted: only that every
phase produced its figures, every command reached its agent and was acknowledged once,
nothing failed outside the kill, and the server agrees at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.benchmarks.fleet_module import SCRIPT, load_fleet
from tests.conftest import REPO_ROOT

AGENTS = DEPLOYMENTS = 20
PHASES = ("bootstrap", "idle", "rollout", "steady", "push", "kill")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fleet")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--kill", "--json", "--tmpdir", str(tmp)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, Any] = json.loads(done.stdout)
    assert list(tmp.iterdir()) == [], "the benchmark left its temp dir behind"
    return data


def test_every_phase_produced_numbers(report: dict[str, Any]) -> None:
    (result,) = report["results"]
    assert (result["agents"], result["deployments"]) == (AGENTS, DEPLOYMENTS)
    phases = result["phases"]
    assert tuple(phases) == PHASES
    for name, phase in phases.items():
        assert phase["heartbeats"] > 0, name
        for key in ("heartbeat_p50_ms", "heartbeat_p99_ms", "server_rss_mb", "loop_lag_p99_ms"):
            assert isinstance(phase[key], float), (name, key)
        assert phase["server_cpu_pct"] > 0, name
        assert phase["sim_cpu_pct"] > 0, name
    for name in ("rollout", "push"):
        phase = phases[name]
        for key in ("webhook_to_plan_s", "webhook_to_all_received_s", "webhook_to_all_acked_s"):
            assert isinstance(phase[key], float), (name, key)
        assert phase["pickups"] == phase["changed"] == phase["received"] == phase["acked"]
        for key in ("pickup_created_p99_ms", "pickup_insert_p99_ms"):
            assert isinstance(phase[key], float), (name, key)
    assert phases["rollout"]["changed"] == DEPLOYMENTS
    assert phases["push"]["changed"] == DEPLOYMENTS // 10
    assert isinstance(phases["kill"]["kill_to_ready_s"], float)


def test_every_command_acknowledged_once_and_nothing_failed(report: dict[str, Any]) -> None:
    (result,) = report["results"]
    phases = result["phases"]
    for name in PHASES[:-1]:  # the kill phase fails requests on purpose
        assert phases[name]["errors"] == {}, name
    # rollout + push + kill: 20 + 2 + 2
    assert result["commands_received"] == DEPLOYMENTS + 2 * (DEPLOYMENTS // 10)
    assert result["commands_acknowledged"] == result["commands_received"]
    assert result["commands_accepted_twice"] == 0
    assert result["specs_issued_twice"] == 0
    assert phases["kill"]["lost"] == 0
    assert result["server_view"] == {
        "deployments": DEPLOYMENTS,
        "in_sync": DEPLOYMENTS,
        "last_command": {"done": DEPLOYMENTS},
    }
    assert result["notes"] == []


def test_the_table_names_every_goal(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = load_fleet()
    fleet.print_report(report["results"], report["environment"])
    out = capsys.readouterr().out
    assert "| figure | measured | goal |" in out
    assert "no figure" not in out
    for figure in (
        "20 idle agents, heartbeat every 2 s",
        "first rollout of 20 deployments",
        "webhook → plan stored",
        "every affected agent has its command",
        "the long-polling agent receives it",
        "server `kill -9` under load",
        "the same spec issued and applied twice",
    ):
        assert figure in out


def test_options_are_checked() -> None:
    fleet = load_fleet()
    args = fleet.parse(["--quick", "--agents", "7", "--ack-delay", "0"])
    assert (args.agents, args.heartbeat, args.ack_delay) == ([7], 2.0, 0.0)
    assert fleet.parse(["--set", "keep_alive=15"]).settings == {"keep_alive": 15}
    for bad in (["--agents", "0"], ["--agents", "ten"], ["--heartbeat", "0"], ["--set", "x"]):
        with pytest.raises(SystemExit):
            fleet.parse(bad)
