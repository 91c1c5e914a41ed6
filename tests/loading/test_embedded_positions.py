"""Problems inside a manifest's ``compose_yaml`` string are placed at the line and column
the user edits in the outer file, for every way of writing the string: a block scalar
(any header), a JSON body's double-quoted string with escapes, a single-quoted string.

Real loader and validator on files in tmp_path; nothing is faked.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler.load.catalog import Catalog
from reconciler.load.embedded import load_embedded_yaml, source_offsets
from reconciler.load.repo import load_repository
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.errors import InvalidSpec, Problem
from tests.conftest import RepoFactory

ROUTED_APP = (
    "services:\n"
    "  app:\n"
    "    image: busybox:1.36\n"
    "    container_name: ${DEPLOYMENT_ID}-app\n"
    "    privileged: true\n"
    "    networks: [default, impreza-proxy]\n"
    '    healthcheck: {test: ["CMD", "true"]}\n'
    "networks:\n"
    "  impreza-proxy: {external: true}\n"
)


def placed(problems: tuple[Problem, ...] | list[Problem]) -> list[tuple[str, int, int, str]]:
    return [(p.file, p.line, p.col, p.rule) for p in problems]


def column_of(text: str, line: int, needle: str) -> int:
    return text.splitlines()[line - 1].index(needle) + 1


def test_json_body_policy_error_points_into_the_string(make_repo: RepoFactory) -> None:
    body = {
        "name": "beta",
        "manifest": {
            "runtime": {"type": "docker-compose", "compose_yaml": ROUTED_APP},
            "network": {"reverse_proxy": {"routes": [{"upstream": "{deployment_id}-app:80"}]}},
        },
    }
    text = json.dumps(body, indent=2)
    root = make_repo({"deployments/beta.yaml": text})
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "compose_yaml" in ln)
    assert placed(load_repository(root).problems) == [
        ("deployments/beta.yaml", line, column_of(text, line, "privileged"), "compose-privileged")
    ]


def test_json_body_routing_error_after_escapes(make_repo: RepoFactory) -> None:
    compose = '# caf\u00e9 "menu"\n' + ROUTED_APP.replace("    privileged: true\n", "").replace(
        "${DEPLOYMENT_ID}-app", "web"
    )
    body = {
        "name": "beta",
        "manifest": {
            "runtime": {"type": "docker-compose", "compose_yaml": compose},
            "network": {"reverse_proxy": {"routes": [{"upstream": "{deployment_id}-app:80"}]}},
        },
    }
    # ensure_ascii: the é is written as an escape, six characters for one; \" is two
    text = json.dumps(body, indent=1)
    root = make_repo({"deployments/beta.yaml": text})
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "compose_yaml" in ln)
    (problem,) = load_repository(root).problems
    assert problem.rule == "route-prefix-mismatch"
    assert "\\u00e9" in text
    # placed at the container_name that breaks the contract
    assert (problem.line, problem.col) == (line, column_of(text, line, "container_name"))


def test_block_scalar_syntax_error_is_placed_and_quotes_the_outer_line(
    make_repo: RepoFactory,
) -> None:
    root = make_repo(
        {
            "deployments/a.yaml": """\
            name: alpha
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: |
                  services:
                    app:
                      image: busybox:1.36
                      image: busybox:1.36
            """
        }
    )
    (problem,) = load_repository(root).problems
    assert placed([problem]) == [("deployments/a.yaml", 9, 11, "yaml-duplicate-key")]
    assert "first defined at line 8" in problem.message


def test_block_scalar_with_chomping_and_comment_header(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/c.yaml": """\
            name: gamma
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: |-   # the app
                  services:
                    app:
                      image: busybox:1.36
                      privileged: true
            """
        }
    )
    assert placed(load_repository(root).problems) == [
        ("deployments/c.yaml", 9, 11, "compose-privileged")
    ]


def test_block_scalar_with_indentation_indicator(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/c.yaml": """\
            name: gamma
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: |2
                      services:
                        app:
                          image: busybox:1.36
                          privileged: true
            """
        }
    )
    assert placed(load_repository(root).problems) == [
        ("deployments/c.yaml", 9, 15, "compose-privileged")
    ]


def test_single_quoted_multi_line_string(make_repo: RepoFactory) -> None:
    # folding: an empty line in the source is one line break in the value, '' is one quote
    root = make_repo(
        {
            "deployments/s.yaml": """\
            name: sigma
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: '{services: {app: {image: ''busybox:1.36'',

                     privileged: true}}}'
            """
        }
    )
    assert placed(load_repository(root).problems) == [
        ("deployments/s.yaml", 7, 10, "compose-privileged")
    ]


def test_catalog_manifest_errors_are_placed_in_the_catalog_file(tmp_path: pathlib.Path) -> None:
    manifest = {
        "name": "notes",
        "version": "1.0.0",
        "runtime": {"type": "docker-compose", "compose_yaml": ROUTED_APP},
        "network": {"reverse_proxy": {"routes": [{"upstream": "{deployment_id}-app:80"}]}},
    }
    text = json.dumps(manifest, indent=2)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "1.0.0.yaml").write_text(text)
    catalog = Catalog(tmp_path)
    entry = catalog.entry("notes")
    assert entry is not None
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "compose_yaml" in ln)
    col = column_of(text, line, "privileged")
    assert placed(catalog.check(entry).problems) == [
        ("catalog/notes/1.0.0.yaml", line, col, "compose-privileged")
    ]


def test_escaped_line_break_in_a_double_quoted_string(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/p.yaml": """\
            name: plain
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: "{services: {app: {image: busybox:1.36,\\
                  \\ privileged: true}}}"
            """
        }
    )
    (problem,) = load_repository(root).problems
    assert placed([problem]) == [("deployments/p.yaml", 6, 9, "compose-privileged")]


def test_unfollowed_style_falls_back_to_the_scalar() -> None:
    """A multi-line plain scalar is not mapped: positions stay at the string's start,
    which is less precise but never wrong; a source that does not rebuild the string is
    never trusted."""
    assert source_offsets("x: a\n  b\n", 3, "a b") is None
    assert source_offsets('x: "a"\n', 3, "b") is None
    assert source_offsets("x: |\n  a\n", 3, "b\n") is None
    outer = load_yaml("x: a\n  b\n", "f.yaml")
    with pytest.raises(InvalidSpec) as caught:
        load_embedded_yaml("[a b", outer, ("x",))
    assert [(p.line, p.col) for p in caught.value.problems] == [(1, 4)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))), st.booleans())
@example("\u2028", False)  # PyYAML keeps a raw line separator as itself, never folded
@example("a\n\u2029\u2028b", False)
def test_json_strings_map_every_character(text: str, ascii_only: bool) -> None:
    """Any string written as JSON maps back character by character, escapes included."""
    source = "key: " + json.dumps(text, ensure_ascii=ascii_only)
    try:
        value = load_yaml(source, "f.yaml").data["key"]
    except InvalidSpec:  # e.g. a surrogate pair escape, which libyaml refuses
        return
    offsets = source_offsets(source, 5, value)
    assert offsets is not None
    assert len(offsets) == len(value) + 1
    for ch, off in zip(value, offsets, strict=False):
        written = source[off]
        folded = written in "\r\n\x85\u2028\u2029" and ch in " \n"  # a raw line break
        assert written == ch or written == "\\" or folded
    assert offsets == sorted(offsets)


def test_policy_with_vars_filled_in_is_placed_in_a_json_string(make_repo: RepoFactory) -> None:
    compose = 'services:\n  app:\n    image: busybox:1.36\n    volumes: ["${SOCK}:/sock"]\n'
    body = {
        "name": "sneaky",
        "manifest": {
            "vars": [{"name": "SOCK", "default": "./data/sock"}],
            "runtime": {"type": "docker-compose", "compose_yaml": compose},
        },
        "vars": {"SOCK": "/var/run/docker.sock"},
    }
    text = json.dumps(body, indent=2)
    root = make_repo({"deployments/sneaky.yaml": text})
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "compose_yaml" in ln)
    (problem,) = load_repository(root).errors
    assert problem.rule == "compose-host-mount"
    assert problem.message.endswith("(with this deployment's vars filled in)")
    # at the volume entry inside the string, not at the string's start
    assert (problem.line, problem.col) == (line, column_of(text, line, '[\\"${SOCK}') + 1)
