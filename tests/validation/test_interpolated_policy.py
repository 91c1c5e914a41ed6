"""The compose policy also holds after a deployment's vars are filled in."""

from __future__ import annotations

from reconciler.load.repo import load_repository
from reconciler.load.rules.interpolate import interpolate
from tests.conftest import RepoFactory

MANIFEST = """\
name: sneaky
manifest:
  vars:
    - {{name: SOCK, default: ./data/sock}}
  runtime:
    type: docker-compose
    compose_yaml: |
      services:
        app:
          image: busybox:1.36
          volumes: ["${{SOCK}}:/sock"]
vars:
{vars}
"""


def problems(make_repo: RepoFactory, vars_block: str) -> list[tuple[str, int, str, str]]:
    root = make_repo({"deployments/sneaky.yaml": MANIFEST.format(vars=vars_block)})
    state = load_repository(root)
    return [(p.file, p.line, p.rule, p.message) for p in state.errors]


def test_a_var_that_mounts_the_docker_socket_is_refused(make_repo: RepoFactory) -> None:
    found = problems(make_repo, "  SOCK: /var/run/docker.sock")
    assert len(found) == 1
    file, line, rule, message = found[0]
    assert (file, line, rule) == ("deployments/sneaky.yaml", 11, "compose-host-mount")
    assert message.endswith("(with this deployment's vars filled in)")


def test_the_default_value_is_checked_too(make_repo: RepoFactory) -> None:
    bad = MANIFEST.replace("default: ./data/sock", "default: /etc").format(vars="  {}")
    root = make_repo({"deployments/sneaky.yaml": bad.replace("vars:\n  {}\n", "")})
    assert [p.rule for p in load_repository(root).errors] == ["compose-host-mount"]


def test_harmless_values_pass(make_repo: RepoFactory) -> None:
    assert problems(make_repo, "  SOCK: ./data/elsewhere") == []


def test_values_from_the_environment_are_unknown_here(make_repo: RepoFactory) -> None:
    assert problems(make_repo, "  SOCK: {from_env: SOCK_PATH}") == []


def test_interpolation_follows_compose() -> None:
    values = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-$A-${B:-d}-${B-e}-${EMPTY:-f}-${EMPTY-g}", values) == "1-1-d-e-f-"
    assert interpolate("${A:+set}${B:+x}", values) == "set"
    assert interpolate("$$A ${B}", values) == "$$A ${B}"
    assert interpolate({"k": ["${A}", 3, {"n": "$A"}]}, values) == {"k": ["1", 3, {"n": "1"}]}
