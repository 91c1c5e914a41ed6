"""Issue 13, section 2: what one repository may cost the loader, with the attacks run for real.

Real files on disk and the real loader throughout; ``reconcile --dry-run`` runs as a real
process under an address-space limit, so a regression fails with ``MemoryError`` instead
of eating the machine.  The time limits are tested with an injected clock (no timings in
pass/fail); the parse counts come from wrapping the one function every YAML parse goes
through.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import resource
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.load import yamlsafe
from reconciler.load.budget import Budget, Limits
from reconciler.load.repo import DesiredState, load_repository
from reconciler.load.rules.interpolate import interpolate
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.errors import InvalidSpec
from reconciler.render import RenderContext, render_all
from tests.conftest import REPO_ROOT
from tests.loading import attacks

MiB = 1024 * 1024


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each file name is parsed: every YAML load goes through ``_compose``."""
    counts: Counter[str] = Counter()
    real = yamlsafe._compose

    def counting(events: Iterator[Any], doc: yamlsafe.Document, budget: Budget) -> Any:
        counts[doc.name] += 1
        return real(events, doc, budget)

    monkeypatch.setattr(yamlsafe, "_compose", counting)
    return counts


def rules(state: DesiredState) -> list[tuple[str, str]]:
    return [(p.file, p.rule) for p in state.errors]


class TestEachFileOnce:
    def test_an_include_fan_out_parses_each_file_once(
        self, tmp_path: pathlib.Path, parses: Counter[str]
    ) -> None:
        """4 includes per level over 8 levels: 65,536 paths reach the last level, which
        was 16,384 parses of each of its files (4^8 in all); now each of the 33 once."""
        files = attacks.fan_out(tmp_path, 4, 8)
        state = load_repository(tmp_path)
        assert state.ok, [p.render() for p in state.errors]
        compose = {n for n in parses if n != "deployments/blog/deployment.yaml"}
        assert len(compose) == files == 33
        assert set(parses.values()) == {1}

    def test_a_finding_deep_in_the_fan_out_is_still_reported_once(
        self, tmp_path: pathlib.Path
    ) -> None:
        attacks.fan_out(tmp_path, 3, 8)
        last = tmp_path / "deployments/blog/l8_2.yaml"
        last.write_text(last.read_text() + "    privileged: true\n")
        state = load_repository(tmp_path)
        found = [p for p in state.errors if p.rule == "compose-privileged"]
        assert [(p.file, p.line) for p in found] == [("deployments/blog/l8_2.yaml", 5)]

    def test_a_file_reached_shallow_and_deep_is_judged_at_its_shallowest(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Checked once, breadth first: the 9-deep path to ``shared.yaml`` is not held
        against it, as it is also included from the top."""
        d = attacks.deployment(tmp_path, compose="include: [./c1.yaml, ./shared.yaml]\n")
        (d / "compose.yaml").write_text((d / "compose.yaml").read_text() + attacks.COMPOSE)
        for i in range(1, 9):
            nxt = f"./c{i + 1}.yaml" if i < 8 else "./shared.yaml"
            (d / f"c{i}.yaml").write_text(f"include: [{nxt}]\nservices: {{}}\n")
        (d / "shared.yaml").write_text("services: {}\n")
        state = load_repository(tmp_path)
        assert state.ok, [p.render() for p in state.errors]

    def test_a_compose_file_shared_by_deployments_is_parsed_once(
        self, tmp_path: pathlib.Path, parses: Counter[str]
    ) -> None:
        common = tmp_path / "deployments/common"
        common.mkdir(parents=True)
        (common / "compose.yaml").write_text(attacks.COMPOSE)
        for name in ("one", "two", "three"):
            (tmp_path / f"deployments/{name}.yaml").write_text(
                attacks.DEPLOYMENT.format(name=name, agent="local").replace(
                    "./compose.yaml", "./common/compose.yaml"
                )
            )
        state = load_repository(tmp_path)
        assert [d.name for d in state.deployments] == ["one", "three", "two"]
        assert parses["deployments/common/compose.yaml"] == 1


class TestExpandedBytes:
    def test_aliases_over_a_big_scalar_are_refused_before_they_are_expanded(
        self, tmp_path: pathlib.Path
    ) -> None:
        """64 KiB aliased 16^3 times: a 66 KB file that expands to 256 MiB when the
        compose file is hashed; few nodes and 48 aliases, so only bytes catch it."""
        expanded = attacks.big_aliases(tmp_path, 64, 16, 3)
        assert expanded == 256 * MiB
        tracemalloc.start()
        try:
            state = load_repository(tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert rules(state) == [("deployments/blog/compose.yaml", "budget-bytes")]
        problem = state.errors[0]
        assert problem.line == 4  # the level whose aliases cross the limit
        assert "more than 64 MiB" in problem.message and "expanded_bytes" in problem.message
        assert peak < 16 * MiB

    def test_the_same_aliases_under_the_limit_load_and_render(self, tmp_path: pathlib.Path) -> None:
        attacks.big_aliases(tmp_path, 8, 8, 3)  # 4 MiB expanded
        state = load_repository(tmp_path)
        assert state.ok, [p.render() for p in state.errors]
        (rendered,) = render_all(state, RenderContext(config=state.config))
        assert rendered.spec_hash

    def test_the_bytes_are_counted_over_the_whole_repository(self, tmp_path: pathlib.Path) -> None:
        """Four files of 400 KB each under a 1 MiB budget: the third crosses it, the
        fourth is not loaded at all (it would only fail the same way)."""
        for name in ("app1", "app2", "app3", "app4"):
            attacks.deployment(
                tmp_path, name, compose=f"x-pad: {'P' * 400_000}\n" + attacks.COMPOSE
            )
        state = load_repository(tmp_path, budget=Budget(Limits(expanded_bytes=MiB)))
        assert rules(state) == [
            ("deployments/app3/compose.yaml", "budget-bytes"),
            ("deployments/app4/deployment.yaml", "budget-bytes"),
        ]
        assert "not checked" in state.errors[1].message
        assert [d.name for d in state.deployments] == ["app1", "app2"]

    def test_a_shared_compose_file_is_parsed_once_but_paid_for_at_each_use(
        self, tmp_path: pathlib.Path, parses: Counter[str]
    ) -> None:
        """Each deployment renders and hashes the file again, so 1,000 deployments on one
        compose file near the limit must not cost 1,000 times the limit."""
        common = tmp_path / "deployments/common"
        common.mkdir(parents=True)
        (common / "compose.yaml").write_text(f"x-pad: {'P' * 400_000}\n" + attacks.COMPOSE)
        for name in ("use1", "use2", "use3"):
            (tmp_path / f"deployments/{name}.yaml").write_text(
                attacks.DEPLOYMENT.format(name=name, agent="local").replace(
                    "./compose.yaml", "./common/compose.yaml"
                )
            )
        state = load_repository(tmp_path, budget=Budget(Limits(expanded_bytes=MiB)))
        assert rules(state) == [("deployments/common/compose.yaml", "budget-bytes")]
        assert [d.name for d in state.deployments] == ["use1", "use2"]
        assert parses["deployments/common/compose.yaml"] == 1

    def test_interpolating_a_var_many_times_is_refused_while_it_is_built(
        self, tmp_path: pathlib.Path
    ) -> None:
        """``${A}`` 4,096 times in a 16 KB label, A of 64 KiB: 256 MiB once filled in."""
        assert attacks.interpolation(tmp_path, 64, 4096) == 256 * MiB
        tracemalloc.start()
        try:
            state = load_repository(tmp_path, budget=Budget(Limits(expanded_bytes=4 * MiB)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert rules(state) == [("deployments/blog/compose.yaml", "budget-bytes")]
        problem = state.errors[0]
        assert problem.line == 6  # the label
        assert "vars filled in" in problem.message and "4 MiB" in problem.message
        assert peak < 16 * MiB

    def test_interpolation_fills_an_aliased_value_once_and_keeps_it_shared(self) -> None:
        doc = load_yaml("x: &s {a: '${A}', b: '$$x'}\ny: *s\nz: [*s, *s]\n", "c.yaml")
        out = interpolate(doc.data, {"A": "filled"})
        assert out["x"] == {"a": "filled", "b": "$$x"}
        assert out["x"] is out["y"] is out["z"][0] is out["z"][1]
        assert doc.data["x"]["a"] == "${A}"  # a copy: the loaded document is untouched


class TestNodes:
    def test_the_nodes_are_counted_over_the_whole_repository(self, tmp_path: pathlib.Path) -> None:
        for name in ("nodes1", "nodes2"):
            items = ", ".join(["1"] * 300)
            attacks.deployment(tmp_path, name, compose=f"x-list: [{items}]\n" + attacks.COMPOSE)
        state = load_repository(tmp_path, budget=Budget(Limits(nodes=700)))
        assert rules(state) == [("deployments/nodes2/compose.yaml", "budget-nodes")]
        assert "more than 700 nodes" in state.errors[0].message
        assert "limit nodes" in state.errors[0].message
        assert [d.name for d in state.deployments] == ["nodes1"]


def ticking() -> Iterator[float]:
    """A clock that moves one second each time it is read."""
    return itertools.count(0.0, 1.0)


class TestTime:
    def test_a_deployment_over_its_time_fails_alone(self, tmp_path: pathlib.Path) -> None:
        """Every include read looks at the clock; the deep deployment runs out of its
        file_seconds, the next deployment starts its own and loads."""
        attacks.fan_out(tmp_path, 2, 4, name="deep")
        attacks.deployment(tmp_path, "plain")
        clock = ticking()
        budget = Budget(Limits(file_seconds=5, repo_seconds=1000), clock=lambda: next(clock))
        state = load_repository(tmp_path, budget=budget)
        assert {f.rsplit("/", 1)[0] for f, rule in rules(state)} == {"deployments/deep"}
        assert {rule for f, rule in rules(state)} == {"budget-time"}
        assert "file_seconds" in state.errors[0].message
        assert [d.name for d in state.deployments] == ["plain"]

    def test_a_long_document_is_stopped_part_way_through_its_parse(self) -> None:
        """The parser looks at the clock every 1,024 events, so one huge file is stopped
        where it is, not after it has been read whole."""
        clock = ticking()
        budget = Budget(Limits(file_seconds=3, repo_seconds=1000), clock=lambda: next(clock))
        text = "x:\n" + "".join(f"  - {i}\n" for i in range(10_000))
        with pytest.raises(InvalidSpec) as info:
            load_yaml(text, "deployments/x.yaml", budget)
        (problem,) = info.value.problems
        assert (problem.file, problem.rule) == ("deployments/x.yaml", "budget-time")
        assert "file_seconds" in problem.message
        assert 1 < problem.line < 5_000

    def test_a_repository_over_its_time_stops_loading(self, tmp_path: pathlib.Path) -> None:
        for i in range(6):
            attacks.deployment(tmp_path, f"app{i}")
        clock = ticking()
        budget = Budget(Limits(file_seconds=1000, repo_seconds=8), clock=lambda: next(clock))
        state = load_repository(tmp_path, budget=budget)
        assert {rule for f, rule in rules(state)} == {"budget-time"}
        assert "repo_seconds" in state.errors[0].message
        assert "not checked" in state.errors[-1].message
        assert 0 < len(state.deployments) < 6


def _limited(gib: int) -> None:
    size = gib * 1024 * MiB
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


class TestAsAProcess:
    def test_plan_of_a_repository_that_expands_to_gigabytes_is_a_clean_refusal(
        self, tmp_path: pathlib.Path
    ) -> None:
        """The 881 KB repository of the report, at 3 GiB expanded: ``plan`` died with
        MemoryError.  Under a 1 GiB address-space limit it now exits with the error."""
        assert attacks.big_aliases(tmp_path, 800, 16, 3) > 3 * 1024 * MiB
        assert (tmp_path / "deployments/blog/compose.yaml").stat().st_size < 1 * MiB
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "--dry-run", str(tmp_path), "--against", "empty"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=lambda: _limited(1),
        )
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert "MemoryError" not in out and "Traceback" not in out
        assert "budget-bytes" in out and "deployments/blog/compose.yaml:3:" in out
