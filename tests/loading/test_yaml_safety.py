"""Hostile and malformed YAML is refused with a placed, typed error, cheaply."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from reconciler.load.yamlsafe import MAX_BYTES, MAX_DEPTH, load_yaml
from reconciler.model.errors import InvalidSpec


def refused(content: bytes | str) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        load_yaml(content, "deployments/x.yaml")
    assert len(info.value.problems) == 1
    return info.value


def billion_laughs(levels: int = 10) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


class TestPositions:
    def test_values_and_keys_carry_line_and_column(self) -> None:
        doc = load_yaml("name: web\nvars:\n  A: 1\n  B: [x, {y: z}]\n", "f.yaml")
        assert doc.data == {"name": "web", "vars": {"A": 1, "B": ["x", {"y": "z"}]}}
        assert doc.key_pos(("vars", "A")) == (3, 3)
        assert doc.pos(("vars", "A")) == (3, 6)
        assert doc.pos(("vars", "B", 1, "y")) == (4, 14)
        assert doc.key_pos(("vars", "B", 1, "y")) == (4, 11)

    def test_unknown_path_falls_back_to_nearest_ancestor(self) -> None:
        doc = load_yaml("a:\n  b: 1\n", "f.yaml")
        assert doc.key_pos(("a", "b", "nope")) == (2, 3)

    def test_problem_names_file_line_and_column(self) -> None:
        err = refused("name: a\nname: b\n")
        problem = err.problems[0]
        assert (problem.file, problem.line, problem.col) == ("deployments/x.yaml", 2, 1)
        assert str(err).startswith("deployments/x.yaml:2:1: duplicate key 'name'")


class TestRefusals:
    def test_duplicate_key_names_both_lines(self) -> None:
        problem = refused("a: 1\nb: 2\na: 3\n").problems[0]
        assert problem.rule == "yaml-duplicate-key"
        assert "first defined at line 1" in problem.message
        assert problem.line == 3

    def test_duplicate_key_in_nested_mapping(self) -> None:
        problem = refused("s:\n  app:\n    image: a\n    image: b\n").problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-duplicate-key", 4, 5)

    def test_billion_laughs_refused_fast_without_memory_growth(self) -> None:
        bomb = billion_laughs(10)
        tracemalloc.start()
        start = time.perf_counter()
        problem = refused(bomb).problems[0]
        elapsed = time.perf_counter() - start
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert problem.rule == "yaml-aliases"
        # 10**10 nodes if expanded; refusing must not build them.
        assert elapsed < 0.1
        assert peak < 5 * 1024 * 1024

    def test_many_aliases_refused(self) -> None:
        text = "a: &a 1\nb: [" + ",".join(["*a"] * 300) + "]\n"
        assert refused(text).problems[0].rule == "yaml-aliases"

    def test_small_alias_use_is_fine(self) -> None:
        doc = load_yaml("x-env: &env {A: 1}\nservices:\n  a: {environment: *env}\n", "c.yaml")
        assert doc.data["services"]["a"]["environment"] == {"A": 1}

    def test_merge_keys_follow_yaml_rules(self) -> None:
        text = "base: &b {image: x, init: true}\nsvc:\n  <<: *b\n  image: y\n"
        assert load_yaml(text, "c.yaml").data["svc"] == {"image": "y", "init": True}

    def test_file_over_one_megabyte_refused(self) -> None:
        content = b"a: " + b"x" * MAX_BYTES + b"\n"
        problem = refused(content).problems[0]
        assert problem.rule == "yaml-size"

    @pytest.mark.parametrize("opener", ["[", "{a: "])
    def test_nesting_deeper_than_limit_refused(self, opener: str) -> None:
        closer = "]" if opener == "[" else "}"
        deep = opener * (MAX_DEPTH + 1) + "1" + closer * (MAX_DEPTH + 1)
        assert refused(deep).problems[0].rule == "yaml-depth"

    def test_very_deep_nesting_does_not_crash(self) -> None:
        deep = "[" * 200_000 + "]" * 200_000
        assert refused(deep).problems[0].rule == "yaml-depth"

    def test_nesting_at_limit_is_fine(self) -> None:
        depth = MAX_DEPTH
        doc = load_yaml("[" * depth + "]" * depth, "f.yaml")
        assert isinstance(doc.data, list)

    @pytest.mark.parametrize(
        "text",
        [
            "a: !!python/object/apply:os.system ['true']\n",
            "a: !!python/name:os.system\n",
            "a: !Ref other\n",
            "a: !!binary aGVsbG8=\n",
            "a: !!set {x, y}\n",
            "a: !custom {x: 1}\n",
        ],
    )
    def test_non_standard_tags_refused(self, text: str) -> None:
        assert refused(text).problems[0].rule == "yaml-tag"

    def test_standard_explicit_tags_accepted(self) -> None:
        assert load_yaml("a: !!str 1\nb: !!int '2'\n", "f.yaml").data == {"a": "1", "b": 2}

    @pytest.mark.parametrize("text", ["a: [1, 2\n", "a: b: c\n", "\ta: 1\n", "a: 'x\n"])
    def test_syntax_errors_are_placed(self, text: str) -> None:
        problem = refused(text).problems[0]
        assert problem.rule == "yaml-syntax"
        assert problem.line >= 1

    def test_multiple_documents_refused(self) -> None:
        assert refused("a: 1\n---\nb: 2\n").problems[0].rule == "yaml-multi-document"

    def test_complex_keys_refused(self) -> None:
        assert refused("? [a, b]\n: 1\n").problems[0].rule == "yaml-key"

    def test_invalid_utf8_refused(self) -> None:
        assert refused(b"a: \xff\xfe\n").problems[0].rule == "yaml-encoding"


UNCLOSED_QUOTE = '# a comment\n# another\nname: web\nimage: "caddy:2\ntarget_port: 80\n'


class TestSyntaxMessages:
    """Syntax errors point where the user must edit, never past the file, with a fix."""

    def test_unclosed_quote_is_placed_where_the_quote_opens(self) -> None:
        problem = refused(UNCLOSED_QUOTE).problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", 4, 8)
        assert "while scanning a quoted scalar" in problem.message
        assert problem.fix == "close the quote that opens here"

    def test_unclosed_quote_in_a_flow_mapping(self) -> None:
        problem = refused('name: web\nvars: {A: "x}\n').problems[0]
        assert (problem.line, problem.col) == (2, 11)
        assert "while scanning a quoted scalar" in problem.message
        assert problem.fix == "close the quote that opens here"

    @pytest.mark.parametrize(
        ("text", "where", "closer"),
        [
            ("name: web\nA: [1, 2\n", (2, 4), "`]`"),
            ("name: web\nA: {a: 1\n", (2, 4), "`}`"),
            ("A: [1, 2", (1, 4), "`]`"),
        ],
    )
    def test_unclosed_bracket_at_end_is_placed_where_it_opens(
        self, text: str, where: tuple[int, int], closer: str
    ) -> None:
        problem = refused(text).problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", *where)
        assert "while parsing a flow" in problem.message
        assert problem.fix is not None
        assert problem.fix.startswith("close the bracket")
        assert closer in problem.fix

    def test_unclosed_bracket_noticed_mid_file_names_where_it_opens(self) -> None:
        problem = refused("A: [1, 2\nB: 3\n").problems[0]
        assert (problem.line, problem.col) == (2, 2)
        assert "opened at line 1, column 4" in problem.message
        assert problem.fix == "close the bracket `[` at line 1, column 4 with `]`"

    @pytest.mark.parametrize(
        "text",
        [
            UNCLOSED_QUOTE,
            "a: 'x\n",
            "a: 'x",
            "a: [1, 2\n",
            "a: {b: 1\n\n\n",
            "a: |\n  x\n\tb\n",
            "- a\nb: 1\n",
            "a: b: c\n",
        ],
    )
    def test_never_placed_past_the_last_line(self, text: str) -> None:
        problem = refused(text).problems[0]
        lines = text.splitlines()
        assert 1 <= problem.line <= len(lines)
        assert 1 <= problem.col <= len(lines[problem.line - 1]) + 1

    @pytest.mark.parametrize(
        ("text", "where"),
        [("\ta: 1\n", (1, 1)), ("a:\n\tb: 1\n", (2, 1)), ("a:\n  b: 1\n\tc: 2\n", (3, 1))],
    )
    def test_tab_indentation_is_named(self, text: str, where: tuple[int, int]) -> None:
        problem = refused(text).problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", *where)
        assert "tab character" in problem.message
        assert problem.fix == "indent with spaces, not tabs"

    def test_other_syntax_errors_get_a_generic_fix(self) -> None:
        problem = refused("a: 'x' y\n").problems[0]
        assert problem.rule == "yaml-syntax"
        assert problem.fix == "check the indentation and quoting around this line"

    def test_control_character_is_placed(self) -> None:
        problem = refused("a: b\nc: \x01\n").problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-syntax", 2, 4)


class TestOtherMessages:
    @pytest.mark.parametrize(
        ("content", "where"),
        [
            (b"name: web\nvars:\n  GREETING: Caf\xe9\n", (3, 16)),
            (b"\xef\xbb\xbfa: 1\nb: x\xff\n", (2, 5)),  # after a BOM
            ("a: caf\u00e9 ".encode() + b"\xff\n", (1, 9)),  # columns count characters
        ],
    )
    def test_invalid_utf8_is_placed_at_the_first_bad_byte(
        self, content: bytes, where: tuple[int, int]
    ) -> None:
        problem = refused(content).problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-encoding", *where)
        assert problem.fix == "save the file as UTF-8"

    def test_tag_is_shown_as_written(self) -> None:
        problem = refused("a: !!python/object/apply:os.system ['true']\n").problems[0]
        assert "'!!python/object/apply:os.system'" in problem.message
        assert "tag:yaml.org" not in problem.message

    def test_local_tag_is_shown_as_written(self) -> None:
        assert "'!Ref'" in refused("a: !Ref other\n").problems[0].message

    def test_merge_of_a_non_mapping_has_a_fix(self) -> None:
        problem = refused("port: &port 80\nsvc:\n  <<: *port\n").problems[0]
        assert (problem.rule, problem.line, problem.col) == ("yaml-merge", 3, 7)
        assert problem.fix == "`<<` takes an alias to a mapping, e.g. `<<: *defaults`"


class TestScalars:
    def test_yaml_11_booleans_as_design_expects(self) -> None:
        assert load_yaml("tls: off\n", "f.yaml").data == {"tls": False}

    def test_port_mappings_stay_strings(self) -> None:
        # YAML 1.1 would read 22:22 as the base-60 integer 1342; Compose reads a string.
        assert load_yaml("p: 22:22\n", "f.yaml").data == {"p": "22:22"}

    def test_dates_stay_strings(self) -> None:
        assert load_yaml("v: 2024-01-02\n", "f.yaml").data == {"v": "2024-01-02"}

    def test_empty_file_is_none(self) -> None:
        assert load_yaml("", "f.yaml").data is None
        assert load_yaml("# only a comment\n", "f.yaml").data is None
