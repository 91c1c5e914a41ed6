"""``benchmarks/transport.py`` as a user runs it, at smoke size: real uvicorn processes
(plain httptools, the guarded protocol of ``reconcile serve``, h11) on 127.0.0.1 driven by
aiohttp.  No timing is asserted: only that every target answered every request and
produced its figure, and that the report names them and the ratio."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "transport.py"


def load_transport() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transport_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["transport_bench"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--h11", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_every_target_answered_every_request_and_has_its_figure(report: dict[str, Any]) -> None:
    targets = report["targets"]
    assert set(targets) == {"floor", "guarded", "h11"}
    requests = report["environment"]["requests"]
    for name, target in targets.items():
        assert target["answered"] == requests, name
        assert target["errors"] == {}, name
        assert target["cpu_us_per_request"] > 0, name
        assert len(target["runs_cpu_us"]) == report["environment"]["runs"]
    assert set(report["ratios_to_floor"]) == {"guarded", "h11"}
    assert all(ratio > 0 for ratio in report["ratios_to_floor"].values())
    assert [run["target"] for run in report["runs"]] == ["floor", "guarded", "h11"]


def test_the_report_names_each_target_and_the_ratio(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_transport()
    bench.print_report(report, report["environment"])
    out = capsys.readouterr().out
    assert "| target | server CPU per request | p99 latency | errors |" in out
    for name in ("floor: uvicorn httptools", "guarded httptools (reconcile serve)"):
        assert f"| {name} | " in out
    assert "ratio guarded / floor (server CPU per request): " in out
    assert "| none |" in out


def test_options_are_checked() -> None:
    bench = load_transport()
    args = bench.parse(["--quick"])
    assert (args.requests, args.connections, args.runs) == (100, 4, 1)
    assert bench.parse(["--rate", "50"]).rate == 50.0
    for bad in (["--requests", "0"], ["--rate", "-1"], ["--connections", "x"], ["--runs", "0"]):
        with pytest.raises(SystemExit):
            bench.parse(bad)
