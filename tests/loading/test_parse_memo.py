"""The parse memo of reconciler.load.yamlsafe.load_yaml: a text parsed once is not parsed
again, yet every load gets its own objects, pays its budget, and errors stay exact."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.load import yamlsafe
from reconciler.load.budget import Budget, Limits
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.errors import InvalidSpec

TEXT = "name: web\nvars:\n  GREETING: hello\nports: [80, 443]\nratio: 1.5\non: true\n7: seven\n"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    counts: Counter[str] = Counter()
    real = yamlsafe._compose

    def counting(events: Iterator[Any], doc: yamlsafe.Document, budget: Budget, *rest: Any) -> Any:
        counts[doc.name] += 1
        return real(events, doc, budget, *rest)

    monkeypatch.setattr(yamlsafe, "_compose", counting)
    return counts


def test_a_text_is_parsed_once_and_loads_the_same_under_another_name(
    parses: Counter[str],
) -> None:
    first = load_yaml(TEXT, "deployments/a.yaml")
    again = load_yaml(TEXT.encode(), "deployments/b.yaml")
    assert parses == Counter({"deployments/a.yaml": 1})
    assert again.name == "deployments/b.yaml"
    assert (
        again.data
        == first.data
        == {
            "name": "web",
            "vars": {"GREETING": "hello"},
            "ports": [80, 443],
            "ratio": 1.5,
            True: True,  # YAML 1.1: `on` is a boolean, as a key too
            7: "seven",
        }
    )
    assert [type(v) for v in again.data.values()] == [type(v) for v in first.data.values()]
    assert list(again.data) == list(first.data)  # key order kept
    assert again.positions == first.positions and again.key_positions == first.key_positions
    assert again.pos(("vars", "GREETING")) == (3, 13)
    assert again.source == TEXT and again.expanded == first.expanded


def test_every_load_gets_its_own_objects(parses: Counter[str]) -> None:
    first = load_yaml(TEXT, "a.yaml")
    first.data["vars"]["GREETING"] = "changed by a caller"
    first.data["ports"].append(8080)
    again = load_yaml(TEXT, "a.yaml")
    assert again.data["vars"]["GREETING"] == "hello"
    assert again.data["ports"] == [80, 443]
    third = load_yaml(TEXT, "a.yaml")
    assert third.data is not again.data and third.data["vars"] is not again.data["vars"]
    assert parses["a.yaml"] == 1


def test_a_hit_is_charged_to_the_budget_and_one_that_does_not_fit_is_refused_in_place(
    parses: Counter[str],
) -> None:
    text = "pad: " + "P" * 3000 + "\nname: web\n"
    budget = Budget(Limits(expanded_bytes=7000))
    load_yaml(text, "one.yaml", budget)
    spent = budget.bytes
    load_yaml(text, "two.yaml", budget)
    assert budget.bytes == 2 * spent and parses == Counter({"one.yaml": 1})
    with pytest.raises(InvalidSpec) as caught:
        load_yaml(text, "three.yaml", budget)  # a third does not fit: parsed, refused there
    problem = caught.value.problems[0]
    assert (problem.file, problem.rule) == ("three.yaml", "budget-bytes")
    assert parses["three.yaml"] == 1


def test_a_refused_text_is_refused_every_time(parses: Counter[str]) -> None:
    for name in ("x.yaml", "y.yaml"):
        with pytest.raises(InvalidSpec) as caught:
            load_yaml("a: 1\na: 2\n", name)
        assert caught.value.problems[0].file == name
    assert parses == Counter({"x.yaml": 1, "y.yaml": 1})


def test_a_located_load_is_never_memoized(parses: Counter[str]) -> None:
    def shifted(line: int, col: int) -> tuple[int, int]:
        return (line + 10, col)

    first = load_yaml(TEXT, "embedded.yaml", locate=shifted)
    again = load_yaml(TEXT, "embedded.yaml", locate=shifted)
    assert first.pos(("name",)) == again.pos(("name",)) == (11, 7)
    assert parses["embedded.yaml"] == 2
    assert load_yaml(TEXT, "plain.yaml").pos(("name",)) == (1, 7)  # not the shifted one
