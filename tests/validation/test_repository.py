"""Repository-level rules: kinds, catalog lookups, vars, paths, uniqueness, agents."""

from __future__ import annotations

import os
import pathlib
import textwrap

import pytest

from reconciler.load.catalog import Catalog
from reconciler.load.repo import MAX_BUILD_CONTEXT_BYTES, load_repository
from reconciler.model.deployment import DeploymentKind
from reconciler.model.errors import InvalidSpec, Severity
from tests.conftest import RepoFactory

NOTES_MANIFEST = """\
name: notes
version: {version}
description: test app
vars:
  - name: ADMIN_EMAIL
    required: true
    description: who gets the admin account
  - name: SECRET_KEY
    secret: true
    generate: hex:32
  - name: THEME
    default: light
runtime:
  type: docker-compose
  compose_yaml: |
    services:
      app:
        image: busybox:1.36
        container_name: ${{DEPLOYMENT_ID}}-app
        networks: [default, impreza-proxy]
        healthcheck: {{test: ["CMD", "true"]}}
    networks:
      impreza-proxy: {{external: true}}
network:
  reverse_proxy:
    routes:
      - upstream: "{{deployment_id}}-app:80"
"""


@pytest.fixture
def catalog(tmp_path: pathlib.Path) -> Catalog:
    root = tmp_path / "catalog"
    for version in ("1.9.0", "1.10.0"):
        (root / "notes").mkdir(parents=True, exist_ok=True)
        (root / "notes" / f"{version}.yaml").write_text(NOTES_MANIFEST.format(version=version))
    return Catalog(root)


def rules(state) -> list[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    return [(p.file, p.line, p.rule) for p in state.problems]


def test_catalog_versions_sort_naturally(catalog: Catalog) -> None:
    assert catalog.versions("notes") == ["1.9.0", "1.10.0"]
    assert catalog.latest("notes") == "1.10.0"


def test_catalog_deployment_resolves_newest(make_repo: RepoFactory, catalog: Catalog) -> None:
    root = make_repo(
        {"deployments/n.yaml": "name: notes\napp: notes\nvars: {ADMIN_EMAIL: a@b.c}\n"}
    )
    state = load_repository(root, catalog)
    assert state.problems == ()
    (dep,) = state.deployments
    assert dep.kind is DeploymentKind.CATALOG
    assert dep.manifest is not None
    assert dep.manifest.version == "1.10.0"
    assert dep.compose is not None
    assert "app" in dep.compose.data["services"]


def test_var_unknown_suggests_nearest(make_repo: RepoFactory, catalog: Catalog) -> None:
    root = make_repo(
        {
            "deployments/n.yaml": "name: notes\napp: notes\n"
            "vars:\n  ADMIN_EMAIL: a@b.c\n  THEM: dark\n"
        }
    )
    (problem,) = load_repository(root, catalog).problems
    assert (problem.rule, problem.line, problem.col) == ("var-unknown", 5, 3)
    assert problem.fix == "did you mean 'THEME'?"


def test_var_required_names_the_var(make_repo: RepoFactory, catalog: Catalog) -> None:
    root = make_repo({"deployments/n.yaml": "name: notes\napp: notes\n"})
    (problem,) = load_repository(root, catalog).problems
    assert problem.rule == "var-required"
    assert "'ADMIN_EMAIL' (who gets the admin account)" in problem.message
    assert problem.fix == "add `ADMIN_EMAIL: <value>` under `vars:`"


def test_generated_and_defaulted_vars_are_not_required(
    make_repo: RepoFactory, catalog: Catalog
) -> None:
    root = make_repo(
        {"deployments/n.yaml": "name: notes\napp: notes\nvars: {ADMIN_EMAIL: {from_env: MAIL}}\n"}
    )
    assert load_repository(root, catalog).problems == ()


def test_unknown_version_lists_available(make_repo: RepoFactory, catalog: Catalog) -> None:
    root = make_repo(
        {"deployments/n.yaml": "name: notes\napp: notes\nversion: '1.10'\nvars: {ADMIN_EMAIL: x}\n"}
    )
    (problem,) = load_repository(root, catalog).problems
    assert (problem.rule, problem.line) == ("catalog-version-unknown", 3)
    assert "available: 1.9.0, 1.10.0" in (problem.fix or "")


def test_unknown_app_suggests(make_repo: RepoFactory, catalog: Catalog) -> None:
    root = make_repo({"deployments/n.yaml": "name: notes\napp: note\n"})
    (problem,) = load_repository(root, catalog).problems
    assert problem.rule == "catalog-app-unknown"
    assert problem.fix == "did you mean 'notes'?"


def test_broken_catalog_manifest_is_reported_in_its_file(
    make_repo: RepoFactory, catalog: Catalog
) -> None:
    bad = catalog.root / "notes" / "2.0.0.yaml"
    bad.write_text(NOTES_MANIFEST.format(version="2.0.0").replace("    container_name", "    #"))
    root = make_repo({"deployments/n.yaml": "name: notes\napp: notes\nvars: {ADMIN_EMAIL: x}\n"})
    found = rules(load_repository(root, catalog))
    assert ("catalog/notes/2.0.0.yaml", 17, "route-no-container") in found
    assert ("deployments/n.yaml", 2, "catalog-invalid") in found


def test_inline_manifest_errors_point_into_the_deployment_file(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/inline.yaml": """\
            name: inline
            manifest:
              runtime:
                type: docker-compose
                compose_yaml: |
                  services:
                    web:
                      image: busybox:1.36
                      privileged: true
            """
        }
    )
    (problem,) = load_repository(root).problems
    assert (problem.file, problem.line, problem.col) == ("deployments/inline.yaml", 9, 11)
    assert problem.rule == "compose-privileged"


def test_compose_file_plus_routes(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/blog/deployment.yaml": "name: blog\ncompose: ./compose.yaml\n"
            "routes:\n  - upstream: '{deployment_id}-app:80'\n",
            "deployments/blog/compose.yaml": "services:\n  app:\n    image: busybox:1.36\n",
        }
    )
    found = rules(load_repository(root))
    assert found == [("deployments/blog/compose.yaml", 2, "route-no-container")]


def test_missing_compose_file(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/blog.yaml": "name: blog\ncompose: ./blog/compose.yaml\n"})
    (problem,) = load_repository(root).problems
    assert (problem.rule, problem.line, problem.col) == ("path-missing", 2, 10)


def test_compose_path_escaping_repo(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/blog.yaml": "name: blog\ncompose: ../../etc/compose.yaml\n"})
    (problem,) = load_repository(root).problems
    assert problem.rule == "path-escape"


def test_symlinked_compose_file_escaping_repo(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("services: {}\n")
    root = make_repo({"deployments/blog/deployment.yaml": "name: blog\ncompose: ./c.yaml\n"})
    os.symlink(outside, root / "deployments" / "blog" / "c.yaml")
    (problem,) = load_repository(root).problems
    assert problem.rule == "path-escape"
    assert "through a symlink" in problem.message


def test_symlinked_deployment_file_escaping_repo(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    outside = tmp_path / "evil.yaml"
    outside.write_text("name: evil\nimage: busybox:1.36\n")
    root = make_repo({})
    os.symlink(outside, root / "deployments" / "evil.yaml")
    state = load_repository(root)
    assert [p.rule for p in state.problems] == ["path-escape"]
    assert state.deployments == ()


def test_dockerfile_kind_checks_context(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n",
            "deployments/site/Dockerfile": "FROM busybox:1.36\n",
        }
    )
    state = load_repository(root)
    assert state.problems == ()
    assert state.deployments[0].kind is DeploymentKind.DOCKERFILE


def test_dockerfile_missing(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n"})
    (problem,) = load_repository(root).problems
    assert problem.rule == "path-missing"
    assert "deployments/site/Dockerfile" in problem.message


def test_build_context_symlink_out_of_context(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    root = make_repo(
        {
            "deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n",
            "deployments/site/Dockerfile": "FROM busybox:1.36\n",
        }
    )
    os.symlink("/etc/hostname", root / "deployments" / "site" / "leak")
    (problem,) = load_repository(root).problems
    assert problem.rule == "path-escape"
    assert "deployments/site/leak" in problem.message


def test_build_context_over_100_mb(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n",
            "deployments/site/Dockerfile": "FROM busybox:1.36\n",
        }
    )
    with open(root / "deployments" / "site" / "big.bin", "wb") as fh:
        fh.truncate(MAX_BUILD_CONTEXT_BYTES + 1)  # sparse: costs no disk
    (problem,) = load_repository(root).problems
    assert problem.rule == "build-context-size"


def test_git_url_with_credentials(make_repo: RepoFactory) -> None:
    root = make_repo(
        {"deployments/bot.yaml": "name: bot\ngit_url: https://user:tok@example.com/bot.git\n"}
    )
    (problem,) = load_repository(root).problems
    assert problem.rule == "git-url-credentials"


def test_duplicate_names_and_domains(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/a.yaml": "name: web\nimage: busybox:1.36\ndomain: x.example.com\n",
            "deployments/b.yaml": "name: web\nimage: busybox:1.36\n",
            "deployments/c.yaml": "name: other\nimage: busybox:1.36\ndomain: x.example.com\n",
        }
    )
    state = load_repository(root)
    assert rules(state) == [
        ("deployments/b.yaml", 1, "name-duplicate"),
        ("deployments/c.yaml", 3, "domain-duplicate"),
    ]
    assert "deployments/a.yaml:1" in state.problems[0].message
    assert [p.severity for p in state.problems] == [Severity.ERROR, Severity.WARNING]
    assert "deployments/a.yaml:3" in state.problems[1].message
    # A name clash drops the second file; a domain clash only warns: the planner decides
    # who serves the domain (the one already running it, else the first file) and blocks
    # the other, so both stay in the desired state.
    assert sorted(d.file for d in state.deployments) == [
        "deployments/a.yaml",
        "deployments/c.yaml",
    ]


def test_agent_aliases_and_ids(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "reconcile.yaml": "agents: {edge: agt_0123456789abcdef}\n",
            "deployments/a.yaml": "name: aaa\nimage: busybox:1.36\nagent: edge\n",
            "deployments/b.yaml": "name: bbb\nimage: busybox:1.36\n"
            "agent_id: agt_00000000000000ff\n",
            "deployments/c.yaml": "name: ccc\nimage: busybox:1.36\nagent: egde\n",
        }
    )
    (problem,) = load_repository(root).problems
    assert (problem.file, problem.rule, problem.fix) == (
        "deployments/c.yaml",
        "agent-unknown",
        "did you mean 'edge'?",
    )


def test_broken_reconcile_yaml_still_checks_deployments(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "reconcile.yaml": "proxy: {tls: maybe}\n",
            "deployments/a.yaml": "name: aaa\nimage: busybox:1.36\nbogus: 1\n",
        }
    )
    assert [p.file for p in load_repository(root).problems] == [
        "deployments/a.yaml",
        "reconcile.yaml",
    ]


def test_tls_off_unquoted(make_repo: RepoFactory) -> None:
    root = make_repo({"reconcile.yaml": "proxy:\n  tls: off\n"})
    assert load_repository(root).config.proxy.tls == "off"


def test_several_kinds_in_one_file(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/a.yaml": "name: aaa\napp: x\nimage: busybox:1.36\n"})
    (problem,) = load_repository(root).problems
    assert problem.rule == "deployment-kind"
    assert "`app`, `image`" in problem.message
    assert problem.line == 3


def test_empty_and_non_mapping_files(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/a.yaml": "", "deployments/b.yaml": "- just\n- a list\n"})
    assert [p.rule for p in load_repository(root).problems] == [
        "deployment-invalid",
        "deployment-invalid",
    ]


def test_require_valid_raises_with_every_problem(make_repo: RepoFactory) -> None:
    root = make_repo(
        {"deployments/a.yaml": "name: A\nimage: x:1\n", "deployments/b.yaml": "name: b\n"}
    )
    with pytest.raises(InvalidSpec) as info:
        load_repository(root).require_valid()
    assert len(info.value.problems) == 2


def test_file_order_does_not_change_the_result(make_repo: RepoFactory) -> None:
    files = {f"deployments/d{i}.yaml": f"name: app{i}\nimage: busybox:1.36\n" for i in range(5)}
    files["deployments/bad.yaml"] = textwrap.dedent("name: app1\nimage: busybox:1.36\n")
    a = load_repository(make_repo(files))
    b = load_repository(make_repo(dict(reversed(list(files.items())))))
    assert [d.name for d in a.deployments] == [d.name for d in b.deployments]
    assert rules(a) == rules(b)
