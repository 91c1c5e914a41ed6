"""Schema errors read as YAML, point at the value that is wrong, and say what to write."""

from __future__ import annotations

import pytest

from reconciler.load.schema import validate_against
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.errors import Problem

IMAGE = "/$defs/image"


def problems(text: str, schema: str, fragment: str = "") -> list[Problem]:
    doc = load_yaml(text, "f.yaml")
    return validate_against(doc, schema, fragment=fragment)


def one(text: str, schema: str, fragment: str = "") -> Problem:
    found = problems(text, schema, fragment)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


def image(extra: str) -> Problem:
    return one(f"name: web\nimage: caddy:2\n{extra}", "deployment", IMAGE)


class TestEnum:
    def test_yaml_true_is_spelled_as_yaml_with_the_choices_yaml_accepts(self) -> None:
        problem = one("proxy:\n  tls: on\n", "reconcile")
        assert problem.message == (
            "proxy.tls true (YAML reads `on` as true) is not one of `auto`, `internal`, `off`"
        )
        assert problem.fix == "use one of: auto, internal, off"
        assert (problem.line, problem.col) == (2, 8)  # the value, not the key

    def test_yes_is_explained_too(self) -> None:
        problem = one("proxy:\n  tls: yes\n", "reconcile")
        assert "true (YAML reads `yes` as true)" in problem.message

    def test_canonical_true_needs_no_explanation(self) -> None:
        problem = one("proxy:\n  tls: true\n", "reconcile")
        assert problem.message.startswith("proxy.tls true is not one of")
        assert "True" not in problem.message

    def test_a_string_is_quoted(self) -> None:
        problem = one("proxy:\n  tls: offf\n", "reconcile")
        assert problem.message == "proxy.tls 'offf' is not one of `auto`, `internal`, `off`"

    def test_null_is_spelled_null(self) -> None:
        problem = one("proxy:\n  tls:\n", "reconcile")
        assert problem.message.startswith("proxy.tls null is not one of")

    def test_const_fix_names_the_one_choice(self) -> None:
        text = (
            "name: status\nversion: 1.0.0\nruntime:\n  type: compose\n"
            "  compose_yaml: |\n    services: {}\n"
        )
        problem = one(text, "manifest")
        assert problem.message == "runtime.type must be `docker-compose`, not 'compose'"
        assert problem.fix == "use docker-compose"
        assert (problem.line, problem.col) == (4, 9)


class TestType:
    def test_quoted_number_where_an_integer_is_wanted(self) -> None:
        problem = image('target_port: "80"\n')
        assert problem.message == "target_port must be an integer, not the string '80'"
        assert problem.fix == "remove the quotes"
        assert (problem.line, problem.col) == (3, 14)

    def test_quoted_number_where_a_number_is_wanted(self) -> None:
        assert image('cpus: "0.5"\n').fix == "remove the quotes"

    def test_string_where_a_boolean_is_wanted(self) -> None:
        problem = image("onion: sometimes\n")
        assert problem.message == "onion must be a boolean, not the string 'sometimes'"
        assert problem.fix == "use true or false"
        assert (problem.line, problem.col) == (3, 8)

    def test_other_type_errors_say_what_to_write(self) -> None:
        assert image("target_port: eighty\n").fix == "write an integer"
        problem = image("vars:\n  - A\n")
        assert problem.message == "vars must be a mapping, not a list"
        assert problem.fix == "write a mapping"
        assert (problem.line, problem.col) == (4, 3)

    def test_number_where_a_string_is_wanted(self) -> None:
        problem = one("name: 123\nimage: caddy:2\n", "deployment", IMAGE)
        assert problem.message == "name must be a string, not the integer 123"
        assert problem.fix == "put the value in quotes to keep it a string"


class TestValuePosition:
    def test_pattern_points_at_the_value(self) -> None:
        problem = one("name: My_Web\nimage: caddy:2\n", "deployment", IMAGE)
        assert (problem.line, problem.col) == (1, 7)

    def test_maximum_points_at_the_value_and_says_what_to_write(self) -> None:
        problem = image("target_port: 70000\n")
        assert (problem.line, problem.col) == (3, 14)
        assert problem.fix == "use 65535 or less"

    def test_missing_field_still_points_at_the_key_of_its_mapping(self) -> None:
        text = "name: site\nbuild:\n  dockerfile: Dockerfile\n"
        problem = one(text, "deployment", "/$defs/dockerfile")
        assert problem.message == "missing required field 'context' in build"
        assert (problem.line, problem.col) == (2, 1)

    def test_unknown_field_still_points_at_the_key(self) -> None:
        problem = image("domian: web.localhost\n")
        assert problem.message == "unknown field 'domian'"
        assert (problem.line, problem.col) == (3, 1)

    def test_reserved_var_still_points_at_the_key(self) -> None:
        problem = image("vars:\n  DOMAIN: example.com\n")
        assert (problem.rule, problem.line, problem.col) == ("var-reserved", 4, 3)

    def test_invalid_var_name_points_at_the_key(self) -> None:
        problem = image("vars:\n  1A: x\n")
        assert problem.message == "var name '1A' is not valid"
        assert (problem.line, problem.col) == (4, 3)


@pytest.mark.parametrize("value", ["on", "yes", "true"])
def test_messages_never_show_python_spellings(value: str) -> None:
    problem = one(f"proxy:\n  tls: {value}\n", "reconcile")
    for python in ("True", "False", "None", "['"):
        assert python not in problem.message
