"""The shipped examples: the demo repositories validate clean, and every validation rule
has a mini repository under ``examples/invalid/`` that is broken in exactly one way.

``examples/invalid/<dir>/expected.txt`` lists what ``reconcile validate`` must report for
that directory, one ``<file>:<line>:<col> <rule>`` per line (file relative to the mini
repository; ``#`` starts a comment).  The README there shows the real output.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from reconciler.load.repo import DesiredState, load_repository
from reconciler.model.deployment import FromEnv
from reconciler.model.errors import Severity

ROOT = pathlib.Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
UPSTREAM = EXAMPLES / "upstream"
INVALID = EXAMPLES / "invalid"
INVALID_DIRS = sorted(p for p in INVALID.iterdir() if p.is_dir())

# Images scripts/setup.sh makes available on a machine with no registry.
OFFLINE_IMAGES = {"busybox:1.36", "caddy:2"}

# Rules that report a warning; every other rule is an error.
WARNING_RULES = {
    "compose-no-healthcheck",
    "compose-image-unpinned",
    "compose-root-user",
    "domain-duplicate",
    "route-var-empty",
}

# Every rule code the validator can emit for a repository, each of which must be shown
# by some directory in examples/invalid/.  Kept by hand on purpose: a new rule is added
# here together with its example.
COVERED_RULES = {
    # YAML loading
    "yaml-syntax",
    "yaml-duplicate-key",
    "yaml-aliases",
    "yaml-tag",
    "yaml-depth",
    "yaml-multi-document",
    "yaml-key",
    "yaml-merge",
    "yaml-encoding",
    "budget-bytes",
    # repository and deployment files
    "repo-layout",
    "schema",
    "deployment-invalid",
    "deployment-kind",
    "var-reserved",
    "var-unknown",
    "var-case",
    "name-from-file",
    "upload-mode",
    "catalog-app-unknown",
    "catalog-version-unknown",
    "agent-unknown",
    "name-duplicate",
    "domain-duplicate",
    "path-escape",
    "path-missing",
    "git-url-credentials",
    "git-pat",
    # the routing contract
    "route-no-container",
    "route-prefix-mismatch",
    "route-no-port",
    "route-upstream-id",
    "route-match-var",
    "route-var-empty",
    "route-not-on-network",
    "route-network-not-external",
    "route-network-undeclared",
    # the compose policy
    "compose-invalid",
    "compose-privileged",
    "compose-host-mount",
    "compose-host-namespace",
    "compose-devices",
    "compose-cap-add",
    "compose-security-opt",
    "compose-ports",
    "compose-path-escape",
    "compose-no-healthcheck",
    "compose-image-unpinned",
    "compose-root-user",
}

# Rules with no example directory, and why.
NOT_COVERED_RULES = {
    "yaml-size": "needs a file over 1 MiB; examples stay small",
    "build-context-size": "needs a build context over 100 MB",
    "budget-nodes": "needs over 2,000,000 expanded nodes: 21 files at the per-document limit",
    "budget-time": "depends on the machine's speed (tests/loading uses an injected clock)",
    "var-required": "no app in the built-in catalog has a required var without a default "
    "or `generate:`",
    "catalog-invalid": "needs a broken manifest in the built-in catalog",
    "catalog-layout": "needs a misplaced manifest in the built-in catalog",
}

# ``file:line:col``, or ``file`` alone for a problem about a path with no line in it.
_EXPECTED_LINE = re.compile(r"^(?P<where>\S+?(?::\d+:\d+)?) (?P<rule>[a-z][a-z0-9-]*)$")


def expected(directory: pathlib.Path) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for raw in (directory / "expected.txt").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXPECTED_LINE.match(line)
        assert match, f"{directory.name}/expected.txt: bad line {raw!r}"
        out.add((match["where"], match["rule"]))
    return out


def reported(state: DesiredState) -> set[tuple[str, str]]:
    return {(p.location(), p.rule) for p in state.problems}


def rendered(state: DesiredState) -> list[str]:
    return [f"{p.location()} {p.rule}: {p.message}" for p in state.problems]


# --------------------------------------------------------------------- the demo repositories


def test_main_example_is_clean_and_shows_every_offline_kind() -> None:
    state = load_repository(EXAMPLES)
    assert state.problems == (), rendered(state)
    assert state.config.namespace == "examples"
    assert {d.kind.value for d in state.deployments} == {
        "catalog",
        "image",
        "dockerfile",
        "manifest",
    }
    manifests = [d for d in state.deployments if d.kind.value == "manifest"]
    assert {"compose", "manifest"} <= {
        "compose" if d.spec.compose is not None else "manifest" for d in manifests
    }, "both an inline manifest and a compose file plus routes"
    assert any(d.spec.domain for d in state.deployments), "one deployment sets `domain:`"
    assert any(d.spec.vars for d in state.deployments if d.kind.value == "catalog")


def test_main_example_needs_only_offline_images() -> None:
    state = load_repository(EXAMPLES)
    images: set[str] = set()
    for d in state.deployments:
        if d.kind.value == "image":
            images.add(d.spec.image)
        elif d.kind.value == "dockerfile":
            context = d.directory / d.spec.build.context
            dockerfile = context / (d.spec.dockerfile_path or d.spec.build.dockerfile)
            images |= set(re.findall(r"(?im)^FROM\s+(\S+)", dockerfile.read_text(encoding="utf-8")))
        if d.compose is not None:
            services = d.compose.data["services"]
            images |= {s["image"] for s in services.values() if "image" in s}
    assert images, "no images found"
    assert images <= OFFLINE_IMAGES, images - OFFLINE_IMAGES


def test_upstream_example_is_clean_and_uses_an_agent_alias() -> None:
    state = load_repository(UPSTREAM)
    assert state.problems == (), rendered(state)
    assert {d.kind.value for d in state.deployments} == {"catalog", "git"}
    assert {d.spec.app for d in state.deployments if d.kind.value == "catalog"} >= {
        "vaultwarden",
        "gitea",
        "n8n",
        "nextcloud",
    }
    aliases = set(state.config.agents)
    assert aliases
    assert any(d.spec.agent in aliases for d in state.deployments)
    assert any(isinstance(v, FromEnv) for d in state.deployments for v in d.spec.vars.values()), (
        "a secret var is read with `{from_env: NAME}`"
    )


# --------------------------------------------------------------------- one rule, one directory


@pytest.mark.parametrize("directory", INVALID_DIRS, ids=lambda p: p.name)
def test_invalid_example_reports_exactly_what_expected_txt_says(directory: pathlib.Path) -> None:
    want = expected(directory)
    assert want, f"{directory.name}/expected.txt lists no problem"
    state = load_repository(directory)
    assert reported(state) == want, rendered(state)


@pytest.mark.parametrize("directory", INVALID_DIRS, ids=lambda p: p.name)
def test_invalid_example_severities(directory: pathlib.Path) -> None:
    rules = {rule for _, rule in expected(directory)}
    state = load_repository(directory)
    for problem in state.problems:
        want = Severity.WARNING if problem.rule in WARNING_RULES else Severity.ERROR
        assert problem.severity is want, problem.render()
    assert state.ok is rules.issubset(WARNING_RULES), rendered(state)


def test_every_rule_has_an_invalid_example() -> None:
    shown = {rule for d in INVALID_DIRS for _, rule in expected(d)}
    missing = sorted(COVERED_RULES - shown)
    assert not missing, f"no examples/invalid/<dir>/expected.txt shows: {missing}"
    unknown = sorted(shown - COVERED_RULES)
    assert not unknown, f"add these rules to COVERED_RULES: {unknown}"
    assert not COVERED_RULES & set(NOT_COVERED_RULES)


def test_warning_examples_have_only_their_warning() -> None:
    for directory in INVALID_DIRS:
        rules = [rule for _, rule in expected(directory)]
        if set(rules) & WARNING_RULES:
            assert len(rules) == 1, f"{directory.name}: {rules}"


def test_invalid_examples_are_small_on_disk() -> None:
    """The alias bomb and the deep nesting are refused, not stored: a few hundred bytes."""
    for directory in INVALID_DIRS:
        for path in directory.rglob("*"):
            if path.is_file():
                assert path.stat().st_size < 4096, path.relative_to(ROOT)


def test_readme_lists_every_invalid_example() -> None:
    readme = (INVALID / "README.md").read_text(encoding="utf-8")
    for directory in INVALID_DIRS:
        assert f"`{directory.name}/`" in readme, directory.name
