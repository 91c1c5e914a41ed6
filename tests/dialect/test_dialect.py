"""Impreza's dialect, case by case: catalog body synonyms, names from file names, JSON
deployment files, lower-case catalog vars, upload mode, and routes on any declared var.

Real loader, built-in catalog, renderer and planner; no Docker (the two-route manifest
served through the real proxy is ``tests/dialect/test_two_routes_docker.py``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from reconciler.load.catalog import Catalog
from reconciler.load.repo import load_repository
from reconciler.model.deployment import DeploymentKind
from reconciler.model.state import ActualState, AgentState
from reconciler.plan import plan
from reconciler.plan.report import text_plan
from reconciler.render import render_all
from tests.conftest import RepoFactory

ROUTED_COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    healthcheck: {test: ["CMD", "true"]}
    networks: [default, impreza-proxy]
networks:
  impreza-proxy: {external: true}
"""


def _errors(root: pathlib.Path) -> list[tuple[str, int, int, str]]:
    return [(p.file, p.line, p.col, p.rule) for p in load_repository(root).errors]


# ----------------------------------------------------------------- 1. catalog body


def test_app_name_and_app_version_are_synonyms(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/vault.yaml": "app_name: vaultwarden\napp_version: '1.32.0'\n"})
    state = load_repository(root)
    assert state.problems == ()
    (dep,) = state.deployments
    assert (dep.name, dep.kind) == ("vault", DeploymentKind.CATALOG)
    assert dep.manifest is not None and dep.manifest.version == "1.32.0"


def test_app_version_left_out_is_the_newest(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/vault.yaml": "app_name: vaultwarden\n"})
    (dep,) = load_repository(root).deployments
    assert dep.manifest is not None and dep.manifest.version == "1.33.2"


def test_app_and_app_name_together_are_refused(make_repo: RepoFactory) -> None:
    root = make_repo(
        {"deployments/vault.yaml": "name: vault\napp: vaultwarden\napp_name: vaultwarden\n"}
    )
    (problem,) = load_repository(root).errors
    assert problem.rule == "schema" and "cannot be used together" in problem.message


def test_unknown_app_version_is_placed_on_app_version(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/vault.yaml": "app_name: vaultwarden\napp_version: '0.1'\n"})
    (problem,) = load_repository(root).errors
    assert (problem.rule, problem.line, problem.col) == ("catalog-version-unknown", 2, 1)
    assert problem.fix is not None and "1.32.0" in problem.fix


def test_name_of_a_directory_deployment_is_the_directory(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/site/deployment.yaml": "build: {context: .}\n",
            "deployments/site/Dockerfile": "FROM busybox:1.36\n",
        }
    )
    state = load_repository(root)
    assert state.problems == ()
    assert [d.name for d in state.deployments] == ["site"]


def test_a_name_the_file_gives_that_breaks_the_rule_is_an_error(
    make_repo: RepoFactory,
) -> None:
    root = make_repo({"deployments/My Vault.json": '{"app_name": "vaultwarden"}\n'})
    (problem,) = load_repository(root).errors
    assert (problem.file, problem.line, problem.rule) == (
        "deployments/My Vault.json",
        1,
        "name-from-file",
    )
    assert "the name comes from the file name" in problem.message
    assert "'My Vault'" in problem.message
    assert problem.fix == "add `name: my-vault`, or rename the file"


def test_an_explicit_name_wins_over_the_file_name(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/x.yaml": "name: vault\napp_name: vaultwarden\n"})
    (dep,) = load_repository(root).deployments
    assert dep.name == "vault"


def test_a_derived_name_clash_names_both_files(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/vault.yaml": "app_name: vaultwarden\n",
            "deployments/other.yaml": "name: vault\napp: vaultwarden\n",
        }
    )
    assert [e[3] for e in _errors(root)] == ["name-duplicate"]


# ----------------------------------------------------------------- JSON files


def test_json_files_are_discovered_at_both_places(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/api.json": '{"name": "api", "mode": "image", "image": "busybox:1.36"}',
            "deployments/site/deployment.json": '{"build": {"context": "."}}',
            "deployments/site/Dockerfile": "FROM busybox:1.36\n",
            "deployments/notes.txt": "not a deployment",
        }
    )
    state = load_repository(root)
    assert state.problems == ()
    assert state.files == ("deployments/api.json", "deployments/site/deployment.json")


def test_json_numbers_are_json_numbers(make_repo: RepoFactory) -> None:
    """YAML 1.1 reads ``5e-1`` as a string; a JSON body means the number 0.5."""
    root = make_repo(
        {"deployments/api.json": '{"name": "api", "image": "busybox:1.36", "cpus": 5e-1}'}
    )
    state = load_repository(root)
    assert state.problems == ()
    (want,) = render_all(state)
    assert want.resources["cpus"] == 0.5


def test_json_problems_are_placed_in_the_json_file(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/api.json": '{\n  "name": "api",\n  "image": "busybox:1.36",\n'
            '  "target_port": "8080"\n}\n',
            "deployments/dup.json": '{"name": "dup", "image": "a:1", "image": "b:2"}',
        }
    )
    assert _errors(root) == [
        ("deployments/api.json", 4, 18, "schema"),
        ("deployments/dup.json", 1, 33, "yaml-duplicate-key"),
    ]


def test_mode_must_agree_with_the_kind(make_repo: RepoFactory) -> None:
    root = make_repo(
        {"deployments/api.json": '{"name": "api", "mode": "manifest", "image": "busybox:1.36"}'}
    )
    (problem,) = load_repository(root).errors
    assert problem.rule == "schema" and "`image`" in problem.message


def test_git_body_is_dockerfile_mode(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/bot.json": '{"name": "bot", "mode": "dockerfile", '
            '"git_url": "file:///srv/bot.git", "git_ref": "main"}'
        }
    )
    (dep,) = load_repository(root).deployments
    assert dep.kind is DeploymentKind.GIT


# ----------------------------------------------------------------- 2. catalog vars


def test_upper_case_var_gets_the_lower_case_name(make_repo: RepoFactory) -> None:
    root = make_repo(
        {"deployments/vault.yaml": "app_name: vaultwarden\nvars:\n  SIGNUPS_ALLOWED: 'false'\n"}
    )
    (problem,) = load_repository(root).errors
    assert (problem.rule, problem.line, problem.col) == ("var-case", 3, 3)
    assert problem.message == "vaultwarden's var is 'signups_allowed', not 'SIGNUPS_ALLOWED'"
    assert problem.fix is not None and problem.fix.startswith("write `signups_allowed:`")


def test_the_container_name_of_a_var_points_at_the_var(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/vault.yaml": "app_name: vaultwarden\nvars:\n  ADMIN_TOKEN: x\n"})
    (problem,) = load_repository(root).errors
    assert problem.rule == "var-unknown"
    assert problem.fix == "did you mean 'admin_password'? (it fills the container's ADMIN_TOKEN)"


def test_defaults_and_generated_secrets_use_the_container_names(
    make_repo: RepoFactory,
) -> None:
    root = make_repo({"deployments/vault.yaml": "app_name: vaultwarden\n"})
    (want,) = render_all(load_repository(root))
    assert want.env["SIGNUPS_ALLOWED"] == "true"
    assert want.env["INVITATIONS_ALLOWED"] == "true"
    assert want.secrets["ADMIN_TOKEN"].source == "generate"
    assert not any(key.islower() for key in want.env)


def test_interpolated_policy_sees_lower_case_vars_filled_in(make_repo: RepoFactory) -> None:
    """The compose file reads ``${TZ}``-style upstream names; a lower-case var fills them."""
    root = make_repo({"deployments/kuma.yaml": "app_name: uptime-kuma\nvars: {timezone: UTC}\n"})
    state = load_repository(root)
    assert state.errors == []
    (want,) = render_all(state)
    assert want.env["TZ"] == "UTC"


# ----------------------------------------------------------------- 3. upload mode


def test_upload_mode_shows_the_build_line(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/web/deployment.json": '{\n  "name": "web",\n  "mode": "dockerfile",\n'
            '  "context_id": "ctx_1",\n  "dockerfile_path": "docker/Dockerfile"\n}\n'
        }
    )
    (problem,) = load_repository(root).errors
    assert (problem.rule, problem.line, problem.col) == ("upload-mode", 4, 3)
    assert problem.message == (
        "`context_id` 'ctx_1' names a build context uploaded to Impreza; "
        "a deployment applied from git cannot use an upload"
    )
    assert problem.fix == (
        "commit the project directory to the repository and write "
        "`build: {context: ., dockerfile: docker/Dockerfile}` instead of `context_id:` "
        "(the path is relative to this file)"
    )


# ----------------------------------------------------------------- 4. every route renders

TWO_ROUTES = """\
name: wiki
domain: wiki.example.com
vars:
  admin_domain: admin.example.com
manifest:
  vars:
    - name: admin_domain
  runtime:
    type: docker-compose
    compose_yaml: |
      services:
        app:
          image: busybox:1.36
          container_name: ${DEPLOYMENT_ID}-app
          healthcheck: {test: ["CMD", "true"]}
          networks: [default, impreza-proxy]
      networks:
        impreza-proxy: {external: true}
  network:
    reverse_proxy:
      routes:
        - upstream: "{deployment_id}-app:80"
          match_var: domain
        - upstream: "{deployment_id}-app:8080"
          match_var: %s
"""


def test_a_lower_case_match_var_renders_beside_the_domain_route(
    make_repo: RepoFactory,
) -> None:
    root = make_repo({"deployments/wiki.yaml": TWO_ROUTES % "admin_domain"})
    state = load_repository(root)
    assert state.errors == []
    (want,) = render_all(state)
    assert [(r.domain, r.upstream) for r in want.routes] == [
        ("wiki.example.com", f"{want.id}-app:80"),
        ("admin.example.com", f"{want.id}-app:8080"),
    ]


def test_a_match_var_naming_no_var_is_placed_at_its_line(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/wiki.yaml": TWO_ROUTES % "admin_host"})
    (problem,) = load_repository(root).errors
    assert (problem.rule, problem.line, problem.col) == ("route-match-var", 25, 22)
    assert problem.message == "route 2 answers on var 'admin_host', which `vars:` does not declare"
    assert problem.fix == "did you mean 'admin_domain'?"


def test_a_match_var_in_another_case_is_refused_with_the_name(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/wiki.yaml": TWO_ROUTES % "ADMIN_DOMAIN"})
    (problem,) = load_repository(root).errors
    assert problem.rule == "route-match-var"
    assert problem.fix == "did you mean 'admin_domain'?"


def test_compose_routes_answer_on_a_deployment_var(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/blog/deployment.yaml": "name: blog\ndomain: blog.example.com\n"
            "vars: {preview_domain: preview.example.com}\ncompose: compose.yaml\nroutes:\n"
            "  - {upstream: '{deployment_id}-app:80'}\n"
            "  - {upstream: '{deployment_id}-app:80', match_var: preview_domain}\n",
            "deployments/blog/compose.yaml": ROUTED_COMPOSE,
        }
    )
    state = load_repository(root)
    assert state.errors == []
    (want,) = render_all(state)
    assert [r.domain for r in want.routes] == ["blog.example.com", "preview.example.com"]


def test_compose_route_on_a_var_the_deployment_lacks_is_an_error(
    make_repo: RepoFactory,
) -> None:
    root = make_repo(
        {
            "deployments/blog/deployment.yaml": "name: blog\ncompose: compose.yaml\nroutes:\n"
            "  - {upstream: '{deployment_id}-app:80', match_var: preview_domain}\n",
            "deployments/blog/compose.yaml": ROUTED_COMPOSE,
        }
    )
    assert _errors(root) == [("deployments/blog/deployment.yaml", 4, 53, "route-match-var")]


def test_an_install_lists_the_hostnames_it_will_serve(make_repo: RepoFactory) -> None:
    root = make_repo({"deployments/wiki.yaml": TWO_ROUTES % "admin_domain"})
    desired = render_all(load_repository(root))
    result = plan(desired, ActualState(source="empty", agents={"local": AgentState(agent="local")}))
    (action,) = result.actions
    assert action.routes == ["wiki.example.com", "admin.example.com"]
    lines = [line for _, line in text_plan(result)]
    assert "      routes: wiki.example.com, admin.example.com" in lines
    assert result.model_dump(mode="json")["actions"][0]["routes"] == action.routes


def test_a_route_var_with_no_value_is_a_warning_not_a_silent_drop(
    make_repo: RepoFactory,
) -> None:
    text = (TWO_ROUTES % "admin_domain").replace("vars:\n  admin_domain: admin.example.com\n", "")
    root = make_repo({"deployments/wiki.yaml": text})
    state = load_repository(root)
    (problem,) = state.problems
    assert (problem.rule, problem.severity.value, problem.line, problem.col) == (
        "route-var-empty",
        "warning",
        23,
        22,
    )
    assert problem.fix == "set `admin_domain: <hostname>` under `vars:` to serve it"
    (want,) = render_all(state)
    assert [r.domain for r in want.routes] == ["wiki.example.com"]


def test_a_route_var_read_from_the_environment_is_a_warning(make_repo: RepoFactory) -> None:
    text = (TWO_ROUTES % "admin_domain").replace(
        "admin_domain: admin.example.com", "admin_domain: {from_env: ADMIN_HOST}"
    )
    root = make_repo({"deployments/wiki.yaml": text})
    (problem,) = load_repository(root).problems
    assert problem.rule == "route-var-empty"
    assert problem.fix == "give `admin_domain` a literal hostname: a route's host is not a secret"


def test_catalog_show_names_each_var_and_the_container_variable_it_fills() -> None:
    script = pathlib.Path(sys.executable).with_name("reconcile")
    proc = subprocess.run(
        [str(script), "catalog", "show", "vaultwarden"],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "versions: 1.32.0, 1.33.2" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "admin_password" in line)
    assert "ADMIN_TOKEN" in row


def test_a_json_deployment_file_is_not_shipped_with_its_bundle(make_repo: RepoFactory) -> None:
    """Editing only ``domain`` in ``blog/deployment.json`` leaves the app's files alone,
    as it does for ``deployment.yaml`` (the route moves, the app keeps running)."""
    body = (
        '{"name": "blog", "domain": "%s", "compose": "compose.yaml",'
        ' "routes": [{"upstream": "{deployment_id}-app:80"}]}'
    )
    root = make_repo(
        {
            "deployments/blog/deployment.json": body % "a.example.com",
            "deployments/blog/compose.yaml": ROUTED_COMPOSE,
        }
    )
    (before,) = load_repository(root).deployments
    (root / "deployments/blog/deployment.json").write_text(body % "b.example.com")
    (after,) = load_repository(root).deployments
    assert before.bundle == after.bundle == "deployments/blog"
    assert before.bundle_digest != after.bundle_digest
    assert before.shipped_digest == after.shipped_digest


CATALOG_TWO_ROUTES = """\
name: wiki
version: "1.0.0"
description: a wiki with an admin hostname
vars:
  - name: admin_domain
    env: ADMIN_HOST
    description: hostname of the admin UI
runtime:
  type: docker-compose
  compose_yaml: |
    services:
      app:
        image: busybox:1.36
        container_name: ${DEPLOYMENT_ID}-app
        environment: {ADMIN_HOST: "${ADMIN_HOST}"}
        healthcheck: {test: ["CMD", "true"]}
        networks: [default, impreza-proxy]
    networks:
      impreza-proxy: {external: true}
network:
  reverse_proxy:
    routes:
      - {upstream: "{deployment_id}-app:80", match_var: domain}
      - {upstream: "{deployment_id}-app:81", match_var: admin_domain}
"""


def test_a_catalog_route_answers_on_a_var_mapped_to_another_env_name(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "catalog" / "wiki").mkdir(parents=True)
    (tmp_path / "catalog" / "wiki" / "1.0.0.yaml").write_text(CATALOG_TWO_ROUTES)
    root = make_repo(
        {
            "deployments/wiki.json": '{"app_name": "wiki", "domain": "w.example.com",'
            ' "vars": {"admin_domain": "admin.w.example.com"}}'
        }
    )
    state = load_repository(root, Catalog(tmp_path / "catalog"))
    assert state.problems == ()
    (want,) = render_all(state)
    assert want.env["ADMIN_HOST"] == "admin.w.example.com"
    assert [(r.domain, r.upstream.rsplit(":", 1)[1]) for r in want.routes] == [
        ("w.example.com", "80"),
        ("admin.w.example.com", "81"),
    ]


def test_a_deploy_key_body_with_an_scp_url_builds_from_ssh(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/site.json": '{"name": "site", "mode": "dockerfile",'
            ' "git_url": "git@github.com:owner/repo.git", "git_auth_method": "deploy_key",'
            ' "git_ref": "v1.2.0"}'
        }
    )
    state = load_repository(root)
    assert state.problems == ()
    (want,) = render_all(state)
    assert want.build is not None
    assert (want.build.kind, want.build.url) == ("git", "ssh://git@github.com/owner/repo.git")


def test_a_token_in_git_pat_is_refused_at_its_line(make_repo: RepoFactory) -> None:
    root = make_repo(
        {
            "deployments/site.json": '{\n  "name": "site",\n  "git_url": "https://e.com/r.git",\n'
            '  "git_auth_method": "pat",\n  "git_pat": "github_pat_x"\n}\n'
        }
    )
    (problem,) = load_repository(root).errors
    assert (problem.rule, problem.line, problem.col) == ("git-pat", 5, 3)
    assert problem.fix is not None and "deploy key" in problem.fix
