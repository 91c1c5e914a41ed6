"""The MCP tools, each a thin call into the loader, the planner, git or :mod:`.actions`.

Every tool returns a JSON object.  A tool that cannot do what was asked returns an error
result (``isError``) whose structured content is ``{"error": code, "message", "problems":
[{file, line, column, rule, message, fix}], "hint"}`` -- the same problems ``reconcile
validate`` prints -- so the model can fix the input and call again.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Annotated, Any, Literal, ParamSpec

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from reconciler import __version__
from reconciler.load.catalog import Catalog
from reconciler.load.repo import DEPLOYMENTS_DIR, load_repository
from reconciler.mcp import actions
from reconciler.mcp.changes import ChangeContext, deployment_file, dump_deployment, set_key
from reconciler.mcp.checks import (
    Checked,
    declared_name,
    inline_copy,
    load_checked,
    plan_state,
    validation_report,
)
from reconciler.mcp.errors import ToolFailure
from reconciler.mcp.remote import ServerClient
from reconciler.mcp.settings import McpSettings
from reconciler.model.errors import ReconcilerError
from reconciler.model.ids import DEPLOYMENT_ID_RE, deployment_id
from reconciler.model.redact import redact

__all__ = ["build_server"]

P = ParamSpec("P")

INSTRUCTIONS = """\
compose-reconciler: GitOps for Docker Compose hosts. The git repository is the truth:
deployments are YAML files under deployments/ in the clone this server was started on.
Read with list_apps/show_app (the catalog), list_deployments/show_deployment,
list_agents, get_plan, get_events, get_logs. Check a change with validate or plan
(pass {"yaml": "<one deployment file>"} or {"path": "<repository dir>"}); nothing is
written. Change with deploy_catalog_app, deploy_custom, change_domain, add_onion,
uninstall_deployment: each validates, plans, and commits on a new branch (pushed only if
the server allows it), returning the branch, the diff and the plan. A failed call
returns {"error", "message", "problems": [{file, line, fix}], "hint"}: fix and retry.
"""

# Argument types the schemas carry, with descriptions a model can follow.
DeploymentArg = Annotated[
    str,
    Field(description="The deployment's name (as in its file's `name:`) or its id (dpl_<16 hex>)."),
]
NameArg = Annotated[
    str,
    Field(
        description="Name of the new deployment: lower-case letters, digits, '-' or '_', "
        "3-100 characters; also the file name deployments/<name>.yaml.",
        pattern=r"^[a-z0-9][a-z0-9_-]{1,98}[a-z0-9]$",
    ),
]
AgentArg = Annotated[
    str,
    Field(
        description="Where it runs: `local` (the host `reconcile apply` runs on), an alias "
        "from reconcile.yaml's `agents:`, or an agent id agt_<16 hex> (see list_agents)."
    ),
]
DomainArg = Annotated[
    str | None,
    Field(
        description="Domain the app answers on, e.g. vault.example.com. Omit for an "
        "automatic <name>-<hex>.<base_domain>."
    ),
]
OnionArg = Annotated[
    bool | None, Field(description="Also publish a Tor v3 onion address for the app.")
]
VarsArg = Annotated[
    dict[str, str | int | float | bool] | None,
    Field(
        description="App variables (see show_app for each app's). Never put a secret here: "
        "secrets are generated on the host or read from its environment."
    ),
]
YamlArg = Annotated[
    str | None,
    Field(
        description="One deployment file's YAML text, checked inline in place of the file "
        "of the deployment it names (nothing is written). Give this or `path`."
    ),
]
PathArg = Annotated[
    str | None,
    Field(
        description="A desired-state repository directory (absolute, or relative to the "
        "clone). Default: the clone this server was started on."
    ),
]
AgainstArg = Annotated[
    Literal["auto", "empty", "server"],
    Field(
        description="Actual state to plan against: `server` (the control plane's view), "
        "`empty` (nothing runs anywhere: every deployment is an install), or `auto` "
        "(server when RECONCILE_SERVER is set, else empty)."
    ),
]

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
CHANGE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
REMOVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
ACT = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)


def _structured(fn: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
    """Turn a :class:`ToolFailure` (or a typed reconciler error) into an error result.

    The SDK's own ``ToolError`` carries text only; this keeps the problems structured.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolFailure as exc:
            failure = exc
        except ReconcilerError as exc:
            failure = ToolFailure("invalid", str(exc))
        body = failure.as_json()
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(body, indent=2))],
            structured_content=body,
            is_error=True,
        )

    return wrapper


class Tools:
    """The state the tools share: settings, the catalog, the control-plane client."""

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings
        self.catalog = (
            Catalog.builtin()
            if settings.catalog is None
            else Catalog.at(settings.catalog.resolve(), display_root=str(settings.catalog))
        )
        self.server = (
            ServerClient(settings.server, settings.token) if settings.server is not None else None
        )
        self.changes = ChangeContext(settings, self.catalog, self.server)

    def _root(self, path: str | None) -> pathlib.Path:
        if path is None:
            return self.settings.repo
        candidate = pathlib.Path(path).expanduser()
        root = candidate if candidate.is_absolute() else self.settings.repo / candidate
        if not root.is_dir():
            raise ToolFailure("not_found", f"{path} is not a directory")
        return root

    def _checked(self, yaml_text: str | None, path: str | None) -> Checked:
        if yaml_text is not None and path is not None:
            raise ToolFailure("invalid", "give `yaml` or `path`, not both")
        if yaml_text is None:
            return Checked(load_checked(self._root(path), self.catalog))
        with inline_copy(self.settings.repo, yaml_text, self.catalog) as (root, rel):
            return Checked(load_checked(root, self.catalog), inline_file=rel)

    def _resolve(self, deployment: str) -> tuple[str | None, str]:
        """(name, dpl id) of a deployment named in the clone, or an id given as is."""
        state = load_repository(self.settings.repo, catalog=self.catalog)
        namespace = state.config.namespace
        for d in state.deployments:
            dpl = deployment_id(namespace, d.name)
            if deployment in (d.name, dpl):
                return d.name, dpl
        if DEPLOYMENT_ID_RE.fullmatch(deployment):
            return None, deployment
        if deployment_file(self.settings.repo, deployment, self.catalog) is not None:
            # a file that does not validate yet: still shown and editable, by its file name
            return deployment, deployment_id(namespace, deployment)
        known = ", ".join(d.name for d in state.deployments) or "none"
        raise ToolFailure(
            "not_found",
            f"no deployment {deployment!r} in {self.settings.repo} (known: {known})",
            hint="call list_deployments for the names",
        )

    def _server_only(self, what: str) -> ServerClient:
        if self.server is None:
            raise ToolFailure(
                "not_supported",
                f"{what} needs the control plane",
                hint="start `reconcile mcp` with RECONCILE_SERVER (and RECONCILE_TOKEN) set",
            )
        return self.server

    def list_agents(self) -> dict[str, Any]:
        """List the hosts (agents) deployments can target: online state, last heartbeat,
        what they run. Without a control plane, the agents reconcile.yaml names plus `local`."""
        if self.server is not None:
            data = self.server.get("/v1/agents")
            return {"source": "server", "agents": data.get("agents", [])}
        state = load_repository(self.settings.repo, catalog=self.catalog)
        agents = [{"alias": "local", "id": "local", "note": "the host reconcile apply runs on"}]
        agents += [{"alias": k, "id": v} for k, v in sorted(state.config.agents.items())]
        return {"source": "reconcile.yaml", "agents": agents}

    def list_apps(
        self,
        search: Annotated[
            str | None,
            Field(
                description="Optional case-insensitive filter on the app's name, description, "
                "category and tags (e.g. `password`, `wiki`, `demo`)."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """List the catalog apps that deploy_catalog_app can install, newest version first."""
        apps = []
        needle = (search or "").strip().lower()
        for app in self.catalog.apps():
            versions = self.catalog.versions(app)
            manifest = self._manifest(app, versions[-1])
            words = [app, manifest["description"] or "", manifest["category"] or ""]
            if needle and needle not in " ".join(words + manifest["tags"]).lower():
                continue
            apps.append(
                {
                    "app": app,
                    "latest": versions[-1],
                    "versions": list(reversed(versions)),
                    "description": manifest.get("description"),
                    "category": manifest.get("category"),
                }
            )
        return {"apps": apps}

    def show_app(
        self,
        app: Annotated[str, Field(description="Catalog app name, e.g. vaultwarden (list_apps).")],
        version: Annotated[
            str | None, Field(description="App version; default the newest.")
        ] = None,
    ) -> dict[str, Any]:
        """Show one catalog app: its variables (which are required, which are secrets the
        host generates), its routes, its resource needs, and an example deployment file."""
        entry = self.catalog.entry(app, version)
        if entry is None:
            close = self.catalog.suggest_app(app)
            known = self.catalog.versions(app)
            raise ToolFailure(
                "not_found",
                f"no catalog app {app}" + (f" version {version}" if known else ""),
                hint=(f"versions: {', '.join(known)}" if known else None)
                or (f"did you mean {', '.join(close)}?" if close else "call list_apps"),
            )
        info = self._manifest(entry.app, entry.version)
        info["example"] = dump_deployment(
            {"name": entry.app, "app": entry.app, "version": entry.version, "agent": "local"}
        )
        return info

    def _manifest(self, app: str, version: str) -> dict[str, Any]:
        entry = self.catalog.entry(app, version)
        if entry is None:
            raise ToolFailure("not_found", f"no catalog app {app} {version}")
        checked = self.catalog.check(entry)
        m = checked.manifest
        if m is None:
            raise ToolFailure.invalid(
                f"catalog manifest {app} {version} is invalid", checked.problems
            )
        routes = m.network.reverse_proxy.routes if m.network and m.network.reverse_proxy else []
        return {
            "app": m.name,
            "version": m.version,
            "description": m.description,
            "website": m.website,
            "vars": [
                {
                    "name": v.name,
                    "description": v.description,
                    "required": v.required,
                    "default": v.default,
                    "secret": v.secret,
                    "generated": v.generate is not None,
                }
                for v in m.vars
            ],
            "routes": [{"upstream": r.upstream, "match_var": r.match_var} for r in routes],
            "requirements": m.requirements.model_dump() if m.requirements else None,
            "category": m.category,
            "tags": list(m.tags),
        }

    def list_deployments(self) -> dict[str, Any]:
        """List the deployments: what the clone declares (name, id, kind, agent, file) and,
        with a control plane, each one's live status, health, URLs and last result."""
        state = load_repository(self.settings.repo, catalog=self.catalog)
        namespace = state.config.namespace
        views: dict[str, Any] = {}
        if self.server is not None:
            data = self.server.get("/v1/deployments")
            views = {v["id"]: v for v in data.get("deployments", []) if isinstance(v, dict)}
        out = []
        for d in state.deployments:
            dpl = deployment_id(namespace, d.name)
            item: dict[str, Any] = {
                "name": d.name,
                "id": dpl,
                "kind": str(d.kind),
                "agent": d.spec.agent,
                "file": d.file,
                "domain": d.spec.domain,
                "onion": d.spec.onion,
            }
            if dpl in views:
                view = views.pop(dpl)
                item["status"] = {
                    k: view.get(k)
                    for k in ("status", "in_sync", "urls", "agent_online", "plan_action")
                }
            out.append(item)
        return {
            "namespace": namespace,
            "deployments": out,
            "invalid_files": sorted({p.file for p in state.errors}),
            "only_on_server": list(views.values()),
        }

    def show_deployment(self, deployment: DeploymentArg) -> dict[str, Any]:
        """Show one deployment: its file in the clone (text) and, with a control plane,
        its status, containers, URLs, spec hashes and last command."""
        name, dpl = self._resolve(deployment)
        out: dict[str, Any] = {"name": name, "id": dpl}
        if name is not None:
            rel = deployment_file(self.settings.repo, name, self.catalog)
            if rel is not None:
                out["file"] = rel
                # a `git_url:` line may carry a token: shown with its userinfo masked
                out["yaml"] = redact((self.settings.repo / rel).read_text(encoding="utf-8"))
        if self.server is not None:
            try:
                out["server"] = self.server.get(f"/v1/deployments/{dpl}")
            except ToolFailure as exc:
                if exc.code != "not_found":
                    raise
                out["server"] = None
        return out

    def get_logs(
        self,
        deployment: DeploymentArg,
        tail: Annotated[
            int, Field(ge=1, le=actions.MAX_TAIL, description="How many last lines.")
        ] = 200,
        service: Annotated[
            str | None, Field(description="One compose service; default all of them.")
        ] = None,
    ) -> dict[str, Any]:
        """Read a deployment's container logs (the last lines, timestamped)."""
        _name, dpl = self._resolve(deployment)
        return actions.get_logs(dpl, tail=tail, service=service, server=self.server)

    def get_events(
        self,
        after: Annotated[int, Field(ge=0, description="Only events after this id (paging).")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many.")] = 100,
    ) -> dict[str, Any]:
        """Read the control plane's event log: reconciles, plans, deploy results, failures
        with their hints. Needs RECONCILE_SERVER."""
        server = self._server_only("get_events")
        data = server.get("/v1/events", {"after": after, "limit": limit})
        return data if isinstance(data, dict) else {"events": data}

    def get_plan(self) -> dict[str, Any]:
        """Show the current plan: the control plane's last one (with RECONCILE_SERVER), else
        the plan of the clone's files against an empty host."""
        if self.server is not None:
            return {"source": "server", "plan": self.server.get("/v1/plan")}
        desired = load_checked(self.settings.repo, self.catalog)
        return {"source": "clone", **plan_state(desired, against="empty", server=None)}

    def validate(self, yaml: YamlArg = None, path: PathArg = None) -> dict[str, Any]:
        """Validate deployment files (schema, catalog, routing contract) without writing
        anything. Each problem has file, line, column, message and the fix to apply."""
        return validation_report(self._checked(yaml, path))

    def plan(
        self, yaml: YamlArg = None, path: PathArg = None, against: AgainstArg = "auto"
    ) -> dict[str, Any]:
        """Plan what applying would do (install, update, uninstall, repair, noop, blocked,
        each with its reason), without writing or touching anything."""
        checked = self._checked(yaml, path)
        out = plan_state(checked.desired, against=against, server=self.server)
        if checked.inline_file is not None:
            out["inline_file"] = checked.inline_file
        return out

    def deploy_catalog_app(
        self,
        name: NameArg,
        app: Annotated[str, Field(description="Catalog app name (list_apps).")],
        agent: AgentArg = "local",
        version: Annotated[
            str | None, Field(description="App version; default the newest (show_app).")
        ] = None,
        domain: DomainArg = None,
        onion: OnionArg = None,
        vars: VarsArg = None,
    ) -> dict[str, Any]:
        """Deploy a catalog app: write deployments/<name>.yaml, validate, plan, and commit it
        on a new branch. Returns the branch, the diff and the plan (the install)."""
        if self.catalog.entry(app, version) is None:
            self.show_app(app, version)  # raises not_found with suggestions
        fields = {
            "name": name,
            "app": app,
            "version": version,
            "agent": agent,
            "domain": domain,
            "onion": onion,
            "vars": vars or None,
        }
        return self._new_file("deploy", name, fields)

    def deploy_custom(
        self,
        name: NameArg,
        agent: AgentArg = "local",
        image: Annotated[
            str | None, Field(description="A container image, pinned (e.g. nginx:1.27).")
        ] = None,
        target_port: Annotated[
            int | None, Field(ge=1, le=65535, description="The port the image serves HTTP on.")
        ] = None,
        git_url: Annotated[
            str | None,
            Field(description="https://, ssh:// or file:// repository with a Dockerfile."),
        ] = None,
        git_ref: Annotated[str | None, Field(description="Branch, tag or commit.")] = None,
        cpus: Annotated[float | None, Field(gt=0, description="CPU limit (default 1.0).")] = None,
        memory_mb: Annotated[
            int | None, Field(ge=16, description="Memory limit in MB (default 512).")
        ] = None,
        domain: DomainArg = None,
        onion: OnionArg = None,
        vars: VarsArg = None,
        yaml: Annotated[
            str | None,
            Field(
                description="Instead of the fields above: the whole deployment file (any kind, "
                "e.g. an inline `manifest:`). Its `name` must equal `name`."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Deploy a custom app (an image, a git repository with a Dockerfile, or a full
        deployment file): write it under deployments/, validate, plan, commit on a branch."""
        if yaml is not None:
            declared = declared_name(yaml)
            if declared is not None and declared != name:
                raise ToolFailure(
                    "invalid",
                    f"the YAML names the deployment {declared!r}, the call {name!r}",
                    hint="make `name` and the file's `name:` the same",
                )
            return self._new_file("deploy", name, None, text=yaml)
        if image is None and git_url is None:
            raise ToolFailure(
                "invalid", "give `image` (with target_port), `git_url` (with git_ref), or `yaml`"
            )
        fields = {
            "name": name,
            "agent": agent,
            "image": image,
            "git_url": git_url,
            "git_ref": git_ref,
            "target_port": target_port,
            "cpus": cpus,
            "memory_mb": memory_mb,
            "domain": domain,
            "onion": onion,
            "vars": vars or None,
        }
        return self._new_file("deploy", name, fields)

    def _new_file(
        self, verb: str, name: str, fields: dict[str, Any] | None, *, text: str | None = None
    ) -> dict[str, Any]:
        body = text if text is not None else dump_deployment(fields or {})

        def edit(tree: pathlib.Path) -> str:
            existing = deployment_file(tree, name, self.catalog)
            if existing is not None:
                raise ToolFailure(
                    "exists",
                    f"deployment {name} already exists in {existing}",
                    hint="choose another name, or use change_domain / add_onion / "
                    "uninstall_deployment on it",
                )
            target = tree / DEPLOYMENTS_DIR / f"{name}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
            return f"Deploy {name}" + (f" ({fields['app']})" if fields and "app" in fields else "")

        return self.changes.apply(verb, name, edit)

    def _edit_existing(
        self, verb: str, deployment: str, change: Callable[[pathlib.Path], str]
    ) -> dict[str, Any]:
        name, _dpl = self._resolve(deployment)
        if name is None:
            raise ToolFailure("not_found", f"{deployment} is not declared in the clone")

        def edit(tree: pathlib.Path) -> str:
            rel = deployment_file(tree, name, self.catalog)
            if rel is None:
                raise ToolFailure("not_found", f"no file declares deployment {name}")
            return change(tree / rel)

        return self.changes.apply(verb, name, edit)

    def change_domain(
        self,
        deployment: DeploymentArg,
        domain: Annotated[str, Field(description="The new domain, e.g. app.example.com.")],
    ) -> dict[str, Any]:
        """Move a deployment to another domain: edit `domain:` in its file (keeping the rest
        and its comments), validate, plan (an update of its routes), commit on a branch."""

        def change(path: pathlib.Path) -> str:
            set_key(path, "domain", domain)
            return (
                f"Move {path.stem if path.stem != 'deployment' else path.parent.name} to {domain}"
            )

        return self._edit_existing("domain", deployment, change)

    def add_onion(self, deployment: DeploymentArg) -> dict[str, Any]:
        """Publish a deployment as a Tor v3 onion service too: set `onion: true` in its file,
        validate, plan, commit on a branch."""

        def change(path: pathlib.Path) -> str:
            set_key(path, "onion", True)
            return f"Publish {deployment} as an onion service"

        return self._edit_existing("onion", deployment, change)

    def uninstall_deployment(self, deployment: DeploymentArg) -> dict[str, Any]:
        """Uninstall a deployment: remove its file (or its directory under deployments/),
        validate, plan (an uninstall when the repository prunes), commit on a branch.
        Its data stays on the host until purged."""

        def change(path: pathlib.Path) -> str:
            tree_deployments = path.parent if path.name.startswith("deployment.") else None
            if tree_deployments is not None and tree_deployments.parent.name == DEPLOYMENTS_DIR:
                shutil.rmtree(tree_deployments)
            else:
                path.unlink()
            return f"Uninstall {deployment}"

        result = self._edit_existing("uninstall", deployment, change)
        state = load_repository(self.settings.repo, catalog=self.catalog)
        if not state.config.prune:
            result["note"] = (
                "reconcile.yaml sets prune: false, so removing the file stops nothing; "
                "uninstall it on the host with `reconcile apply --prune`"
            )
        return result

    def restart_deployment(
        self,
        deployment: DeploymentArg,
        service: Annotated[
            str | None, Field(description="One compose service; default all of them.")
        ] = None,
    ) -> dict[str, Any]:
        """Restart a deployment's containers in place (no change to the desired state)."""
        _name, dpl = self._resolve(deployment)
        return actions.restart(dpl, service=service, server=self.server)

    def rollback_deployment(
        self,
        deployment: DeploymentArg,
        to: Annotated[
            str | None,
            Field(
                description="The release to run (a name from the deployment's history, or a "
                "spec hash prefix); default: the one before the running one."
            ),
        ] = None,
        release: Annotated[
            bool,
            Field(
                description="Lift the hold a rollback left instead (git decides again); "
                "takes no `to`."
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Run an earlier release of a deployment on its host and hold it there until its
        file changes in git; or, with release, lift that hold."""
        _name, dpl = self._resolve(deployment)
        return actions.rollback(dpl, to=to, release=release, server=self.server)


TOOLS: tuple[tuple[str, ToolAnnotations], ...] = (
    ("list_agents", READ),
    ("list_apps", READ),
    ("show_app", READ),
    ("list_deployments", READ),
    ("show_deployment", READ),
    ("get_logs", READ),
    ("get_events", READ),
    ("get_plan", READ),
    ("validate", READ),
    ("plan", READ),
    ("deploy_catalog_app", CHANGE),
    ("deploy_custom", CHANGE),
    ("change_domain", CHANGE),
    ("add_onion", CHANGE),
    ("uninstall_deployment", REMOVE),
    ("restart_deployment", ACT),
    ("rollback_deployment", ACT),
)


def build_server(settings: McpSettings) -> MCPServer:
    tools = Tools(settings)
    server: MCPServer = MCPServer(
        name="compose-reconciler", instructions=INSTRUCTIONS, version=__version__
    )
    for name, hints in TOOLS:
        fn = _structured(getattr(tools, name))
        server.add_tool(fn, name=name, annotations=hints, structured_output=True)
    return server
