"""``reconcile mcp`` driven by the SDK's own client over stdio (no Docker needed).

Real: the ``reconcile mcp`` process, the MCP SDK on both ends, git, the loader and the
planner.  Each change tool is checked for what it commits and for what it leaves alone:
the clone's checkout is never written, and a refused change leaves no branch behind.
"""

from __future__ import annotations

import json
import pathlib
import tomllib
from typing import Any

import pytest

from tests.mcp.mcp_helpers import RECONCILE, Session, git, make_clone, run_mcp

REPO_FILES = {
    "reconcile.yaml": "namespace: mcptest\n",
    "deployments/site.yaml": (
        "# the team's static site: keep this comment\n"
        "name: site\nagent: local\napp: hello\ndomain: site.example.com\n"
    ),
}

EXPECTED_TOOLS = {
    "list_agents",
    "list_apps",
    "show_app",
    "list_deployments",
    "show_deployment",
    "get_logs",
    "get_events",
    "get_plan",
    "validate",
    "plan",
    "deploy_catalog_app",
    "deploy_custom",
    "change_domain",
    "add_onion",
    "uninstall_deployment",
    "restart_deployment",
    "rollback_deployment",
}


@pytest.fixture
def clone(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_clone(tmp_path, REPO_FILES)


def _untouched(clone: pathlib.Path, head: str) -> None:
    assert git(clone, "rev-parse", "HEAD").strip() == head
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(clone, "worktree", "list").count("\n") == 1


def _file_at(clone: pathlib.Path, ref: str, rel: str) -> str:
    return git(clone, "show", f"{ref}:{rel}")


def test_every_tool_is_listed_with_a_description_and_described_arguments(
    clone: pathlib.Path,
) -> None:
    async def body(s: Session) -> Any:
        return (await s.client.list_tools()).tools

    tools = run_mcp(clone, body)
    assert {t.name for t in tools} == EXPECTED_TOOLS
    for tool in tools:
        assert tool.description and len(tool.description) > 40, tool.name
        for arg, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), (tool.name, arg)
    by_name = {t.name: t for t in tools}
    assert by_name["list_apps"].annotations is not None
    assert by_name["list_apps"].annotations.read_only_hint is True
    assert by_name["uninstall_deployment"].annotations.destructive_hint is True  # type: ignore[union-attr]
    name_schema = by_name["deploy_catalog_app"].input_schema["properties"]["name"]
    assert name_schema["pattern"].startswith("^[a-z0-9]")


def test_read_tools_answer_from_the_clone_and_the_catalog(clone: pathlib.Path) -> None:
    async def body(s: Session) -> dict[str, Any]:
        return {
            "apps": await s.call("list_apps"),
            "passwords": await s.call("list_apps", {"search": "PASSWORD"}),
            "app": await s.call("show_app", {"app": "vaultwarden"}),
            "deployments": await s.call("list_deployments"),
            "one": await s.call("show_deployment", {"deployment": "site"}),
            "agents": await s.call("list_agents"),
            "missing": await s.fail("show_app", {"app": "vaultwardn"}),
            "events": await s.fail("get_events"),
            "plan": await s.call("get_plan"),
        }

    out = run_mcp(clone, body)
    apps = {a["app"]: a for a in out["apps"]["apps"]}
    assert {"hello", "vaultwarden", "gitea"} <= set(apps)
    found = {a["app"] for a in out["passwords"]["apps"]}
    assert "vaultwarden" in found and "hello" not in found
    assert out["app"]["app"] == "vaultwarden"
    assert any(v["secret"] for v in out["app"]["vars"])
    assert "app: vaultwarden" in out["app"]["example"]
    [site] = out["deployments"]["deployments"]
    assert (site["name"], site["file"], site["domain"]) == (
        "site",
        "deployments/site.yaml",
        "site.example.com",
    )
    assert site["id"].startswith("dpl_")
    assert out["one"]["yaml"].startswith("# the team's static site")
    assert out["agents"]["agents"][0]["id"] == "local"
    assert out["missing"]["error"] == "not_found"
    assert "vaultwarden" in out["missing"]["hint"]
    assert out["events"]["error"] == "not_supported"
    assert "RECONCILE_SERVER" in out["events"]["hint"]
    assert out["plan"]["plan"]["summary"]["install"] == 1


def test_validate_and_plan_inline_yaml_write_nothing(clone: pathlib.Path) -> None:
    head = git(clone, "rev-parse", "HEAD").strip()
    bad = "name: broken\nagent: local\napp: hello\nvars:\n  COMPOSE_FILE: x\n"

    async def body(s: Session) -> dict[str, Any]:
        return {
            "bad": await s.call("validate", {"yaml": bad}),
            "bad_plan": await s.fail("plan", {"yaml": bad}),
            "good_plan": await s.call(
                "plan", {"yaml": "name: blog\nagent: local\napp: hello\n", "against": "empty"}
            ),
            "edit": await s.call(
                "plan", {"yaml": REPO_FILES["deployments/site.yaml"].replace("site.ex", "www.ex")}
            ),
            "repo": await s.call("validate", {"path": str(clone)}),
            "both": await s.fail("validate", {"yaml": bad, "path": "."}),
        }

    out = run_mcp(clone, body)
    assert out["bad"]["valid"] is False
    [problem] = [p for p in out["bad"]["problems"] if p["severity"] == "error"]
    assert problem["file"] == "deployments/broken.yaml"
    assert problem["line"] == 5
    assert problem["message"] and "COMPOSE_" in problem["message"]
    assert out["bad_plan"]["error"] == "invalid"
    assert out["bad_plan"]["problems"][0]["line"] == 5
    actions = {a["deployment"]: a["action"] for a in out["good_plan"]["plan"]["actions"]}
    assert actions == {"blog": "install", "site": "install"}
    # an edit of an existing deployment replaces its file: still one deployment named site
    [edited] = out["edit"]["plan"]["actions"]
    assert edited["routes"] == ["www.example.com"]
    assert out["edit"]["inline_file"] == "deployments/site.yaml"
    assert out["repo"]["valid"] is True
    assert out["both"]["error"] == "invalid"
    _untouched(clone, head)


def test_deploy_catalog_app_commits_on_a_branch_and_plans_the_install(
    clone: pathlib.Path,
) -> None:
    head = git(clone, "rev-parse", "HEAD").strip()

    async def body(s: Session) -> dict[str, Any]:
        return await s.call(
            "deploy_catalog_app",
            {
                "name": "vault",
                "app": "vaultwarden",
                "domain": "vault.example.com",
                "vars": {"signups_allowed": False},
            },
        )

    out = run_mcp(clone, body)
    branch = out["branch"]
    assert branch.startswith("mcp/deploy-vault-")
    assert out["pushed"] is False and "without --push" in out["next"]
    assert out["base"] == head
    assert git(clone, "rev-parse", branch).strip() == out["commit"]
    assert git(clone, "log", "-1", "--format=%s", branch).strip() == "Deploy vault (vaultwarden)"
    committed = _file_at(clone, branch, "deployments/vault.yaml")
    assert "app: vaultwarden" in committed and "domain: vault.example.com" in committed
    assert "+app: vaultwarden" in out["diff"]
    actions = {a["deployment"]: a for a in out["plan"]["plan"]["actions"]}
    assert actions["vault"]["action"] == "install"
    assert actions["vault"]["routes"] == ["vault.example.com"]
    _untouched(clone, head)


def test_a_change_that_does_not_validate_is_refused_and_leaves_no_branch(
    clone: pathlib.Path,
) -> None:
    head = git(clone, "rev-parse", "HEAD").strip()

    async def body(s: Session) -> dict[str, Any]:
        return {
            "var": await s.fail(
                "deploy_catalog_app", {"name": "vault", "app": "vaultwarden", "vars": {"nope": 1}}
            ),
            "exists": await s.fail("deploy_catalog_app", {"name": "site", "app": "hello"}),
            "app": await s.fail("deploy_catalog_app", {"name": "x-y", "app": "hellp"}),
            "custom": await s.fail("deploy_custom", {"name": "api"}),
            "renamed": await s.fail(
                "deploy_custom", {"name": "api", "yaml": "name: other\nagent: local\napp: hello\n"}
            ),
            "gone": await s.fail("change_domain", {"deployment": "nosuch", "domain": "a.b"}),
        }

    out = run_mcp(clone, body)
    problem = out["var"]["problems"][0]
    assert out["var"]["error"] == "invalid"
    assert problem["file"] == "deployments/vault.yaml" and problem["line"] > 0
    assert "nope" in problem["message"]
    assert out["exists"]["error"] == "exists"
    assert out["app"]["error"] == "not_found" and "hello" in out["app"]["hint"]
    assert out["custom"]["error"] == "invalid"
    assert out["renamed"]["error"] == "invalid" and "'other'" in out["renamed"]["message"]
    assert out["gone"]["error"] == "not_found"
    assert git(clone, "branch", "--list", "mcp/*") == ""
    _untouched(clone, head)


def test_edits_keep_the_rest_of_the_file_and_uninstall_removes_it(clone: pathlib.Path) -> None:
    head = git(clone, "rev-parse", "HEAD").strip()

    async def body(s: Session) -> dict[str, Any]:
        return {
            "domain": await s.call(
                "change_domain", {"deployment": "site", "domain": "new.example.com"}
            ),
            "onion": await s.call("add_onion", {"deployment": "site"}),
            "custom": await s.call(
                "deploy_custom",
                {"name": "api", "image": "busybox:1.36", "target_port": 8080, "memory_mb": 64},
            ),
            "gone": await s.call("uninstall_deployment", {"deployment": "site"}),
        }

    out = run_mcp(clone, body)
    moved = _file_at(clone, out["domain"]["branch"], "deployments/site.yaml")
    assert moved == REPO_FILES["deployments/site.yaml"].replace(
        "domain: site.example.com", 'domain: "new.example.com"'
    )
    [update] = out["domain"]["plan"]["plan"]["actions"]
    assert update["routes"] == ["new.example.com"]
    onion = _file_at(clone, out["onion"]["branch"], "deployments/site.yaml")
    assert onion.startswith("# the team's static site") and onion.endswith("onion: true\n")
    api = _file_at(clone, out["custom"]["branch"], "deployments/api.yaml")
    assert "image: busybox:1.36" in api and "target_port: 8080" in api
    removed = git(clone, "ls-tree", "--name-only", "-r", out["gone"]["branch"])
    assert "deployments/site.yaml" not in removed
    assert "-name: site" in out["gone"]["diff"]
    # each change starts from the clone's HEAD, on its own branch
    assert {out[k]["base"] for k in out} == {head}
    _untouched(clone, head)


def test_with_push_the_branch_reaches_the_remote(tmp_path: pathlib.Path) -> None:
    clone = make_clone(tmp_path, REPO_FILES)
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(clone, "remote", "add", "origin", str(bare))
    git(clone, "push", "-q", "origin", "main")

    async def body(s: Session) -> dict[str, Any]:
        return await s.call("deploy_catalog_app", {"name": "memo", "app": "memos"})

    out = run_mcp(clone, body, args=("--push",))
    assert out["pushed"] is True
    assert git(bare, "rev-parse", out["branch"]).strip() == out["commit"]
    assert git(bare, "rev-parse", "main").strip() == out["base"]  # main itself untouched


@pytest.mark.parametrize("tool", ["claude-code", "cursor", "codex"])
def test_config_prints_a_snippet_each_tool_reads(tool: str, tmp_path: pathlib.Path) -> None:
    import subprocess

    proc = subprocess.run(
        [RECONCILE, "mcp", "config", "--tool", tool, "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "RECONCILE_SERVER": "https://cp.example.com"},
    )
    text = proc.stdout
    if tool == "cursor":
        body = json.loads(text.split("\n", 1)[1])
        entry = body["mcpServers"]["reconcile"]
        assert entry["args"] == ["mcp", "--repo", str(tmp_path)]
        assert entry["env"] == {"RECONCILE_SERVER": "https://cp.example.com"}
    elif tool == "codex":
        entry = tomllib.loads(text)["mcp_servers"]["reconcile"]
        assert entry["args"] == ["mcp", "--repo", str(tmp_path)]
        assert entry["env"]["RECONCILE_SERVER"] == "https://cp.example.com"
    else:
        assert "claude mcp add reconcile --env RECONCILE_SERVER=https://cp.example.com --" in text
        assert f"mcp --repo {tmp_path}" in text
    assert "TOKEN=" not in text  # the token is never written into a config


def test_unknown_tool_name_for_config_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    import subprocess

    proc = subprocess.run(
        [RECONCILE, "mcp", "config", "--tool", "vim"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "claude-code, cursor, codex" in proc.stderr


def test_a_token_in_a_git_url_is_masked_in_what_the_tools_return(tmp_path: pathlib.Path) -> None:
    clone = make_clone(
        tmp_path,
        {
            "reconcile.yaml": "namespace: mcptest\n",
            "deployments/bot.yaml": "name: bot\nagent: local\n"
            "git_url: https://someone:s3cr3t-tok@git.example.com/bot.git\ngit_ref: main\n",
        },
    )

    async def body(s: Session) -> dict[str, Any]:
        return {
            "shown": await s.call("show_deployment", {"deployment": "bot"}),
            "checked": await s.call("validate"),
        }

    out = run_mcp(clone, body)
    assert "git.example.com/bot.git" in out["shown"]["yaml"]
    assert "s3cr3t-tok" not in json.dumps(out)
    assert out["checked"]["valid"] is False  # credentials in the URL are refused, placed
    assert out["checked"]["problems"][0]["file"] == "deployments/bot.yaml"


def test_the_server_refuses_to_start_without_a_clone(tmp_path: pathlib.Path) -> None:
    import subprocess

    missing = subprocess.run([RECONCILE, "mcp"], capture_output=True, text=True)
    assert missing.returncode == 2 and "--repo" in missing.stderr
    nowhere = subprocess.run(
        [RECONCILE, "mcp", "--repo", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr
    both = tmp_path / "t"
    both.write_text("x")
    twice = subprocess.run(
        [RECONCILE, "mcp", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RECONCILE_TOKEN": "a", "RECONCILE_TOKEN_FILE": str(both)},
    )
    assert twice.returncode == 1 and "RECONCILE_TOKEN_FILE" in twice.stderr
