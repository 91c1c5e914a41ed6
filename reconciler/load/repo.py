"""Loading a desired-state repository into validated deployments, collecting every problem.

Layout::

    reconcile.yaml                 optional
    deployments/<name>.yaml        one deployment per file (or .yml, or .json: a REST body)
    deployments/<dir>/deployment.yaml   with its build context / compose file beside it

Paths inside a deployment file are relative to that file's directory, as in Compose.
A file without ``name`` (Impreza's catalog body has none) is named after the file:
``deployments/vault.yaml`` is ``vault``, ``deployments/site/deployment.yaml`` is ``site``.
Nothing here raises for a mistake in the repository: every file is checked and every
problem is returned, so a user fixes them all in one round.  The one exception to "every
file" is a repository that runs out of its :class:`~reconciler.load.budget.Budget`
(bytes, nodes or time): loading stops there, with that problem placed in the file that
crossed the limit, since every later file would only fail the same way.
"""

from __future__ import annotations

import difflib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from urllib.parse import urlsplit

from reconciler.load.budget import Budget, BudgetExceeded
from reconciler.load.buildcontext import context_size
from reconciler.load.catalog import Catalog
from reconciler.load.files import (
    PathEscape,
    inside,
    load_once,
    read_limited,
    resolve_inside,
    tree_digest,
    tree_digests,
)
from reconciler.load.manifests import (
    CheckedManifest,
    check_compose,
    check_manifest,
    check_match_vars,
)
from reconciler.load.rules.compose_policy import check_compose_policy
from reconciler.load.rules.interpolate import InterpolationTooLarge, interpolate
from reconciler.load.schema import checked_model
from reconciler.load.yamlsafe import Document, load_yaml
from reconciler.model.deployment import (
    CATALOG_SYNONYMS,
    NAME_PATTERN,
    CatalogDeployment,
    Deployment,
    DeploymentKind,
    DockerfileDeployment,
    FromEnv,
    GitDeployment,
    ImageDeployment,
    ManifestDeployment,
    RepoConfig,
    deployment_kind,
    parse_deployment,
)
from reconciler.model.errors import InvalidSpec, Problem, Severity
from reconciler.model.ids import AGENT_ID_RE, LOCAL_AGENT
from reconciler.model.manifest import Manifest

__all__ = [
    "MAX_BUILD_CONTEXT_BYTES",
    "DesiredState",
    "LoadedDeployment",
    "find_deployment_files",
    "load_repository",
]

MAX_BUILD_CONTEXT_BYTES = 100 * 1024 * 1024
CONFIG_NAMES = ("reconcile.yaml", "reconcile.yml")
DEPLOYMENTS_DIR = "deployments"
DEPLOYMENT_SUFFIXES = (".yaml", ".yml", ".json")
DEPLOYMENT_FILE_NAMES = tuple(f"deployment{suffix}" for suffix in DEPLOYMENT_SUFFIXES)


@dataclass(frozen=True)
class LoadedDeployment:
    """One valid deployment with everything rendering will need."""

    file: str  # repo-relative, posix
    directory: pathlib.Path  # on disk; relative paths in the file resolve against it
    doc: Document
    spec: Deployment
    manifest: Manifest | None = None  # catalog and manifest kinds
    compose: Document | None = None  # the compose document of a manifest
    # Files shipped with the deployment: a build context, or the directory a compose
    # file's relative paths resolve against; copied to the host, hashed into the spec.
    bundle: str | None = None  # repo-relative, posix
    bundle_digest: str | None = None
    # The same without the deployment file: whether the files the app sees changed.
    shipped_digest: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> DeploymentKind:
        return self.spec.kind


@dataclass(frozen=True)
class DesiredState:
    root: pathlib.Path
    config: RepoConfig
    deployments: tuple[LoadedDeployment, ...]
    problems: tuple[Problem, ...]
    files: tuple[str, ...] = ()  # every deployment file seen, valid or not

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def require_valid(self, strict: bool = False) -> DesiredState:
        failing = self.problems if strict else tuple(self.errors)
        if failing:
            raise InvalidSpec(list(failing))
        return self


@dataclass
class _Run:
    root: pathlib.Path
    catalog: Catalog
    config: RepoConfig = field(default_factory=RepoConfig)
    problems: list[Problem] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)

    def rel(self, path: pathlib.Path) -> str:
        return path.relative_to(self.root).as_posix()


def find_deployment_files(root: pathlib.Path) -> list[pathlib.Path]:
    """``deployments/*.{yaml,yml,json}`` and ``deployments/*/deployment.{yaml,yml,json}``."""
    base = root / DEPLOYMENTS_DIR
    found: list[pathlib.Path] = []
    if not base.is_dir():
        return found
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.suffix in DEPLOYMENT_SUFFIXES and not entry.is_dir():
            found.append(entry)
        elif entry.is_dir():
            for name in DEPLOYMENT_FILE_NAMES:
                candidate = entry / name
                if candidate.exists() or candidate.is_symlink():
                    found.append(candidate)
    return found


def load_repository(
    path: str | os.PathLike[str],
    catalog: Catalog | None = None,
    *,
    budget: Budget | None = None,
) -> DesiredState:
    """Load and check the repository at ``path`` within ``budget`` (default limits)."""
    root = pathlib.Path(path).resolve()
    run = _Run(root=root, catalog=catalog or Catalog.builtin(), budget=budget or Budget())
    if not root.is_dir():
        # No file: the message names the path, and a file relative to a root that does not
        # exist would be shown joined to it ("missing/missing").
        problem = Problem("", 0, 0, "repo-layout", f"{path} is not a directory")
        return DesiredState(root, run.config, (), (problem,))
    _load_config(run)
    files = find_deployment_files(root)
    if not (root / DEPLOYMENTS_DIR).is_dir():
        run.problems.append(
            Problem(
                DEPLOYMENTS_DIR,
                0,
                0,
                "repo-layout",
                f"no {DEPLOYMENTS_DIR}/ directory in {path}",
                f"put one YAML file per deployment under {DEPLOYMENTS_DIR}/",
            )
        )
    loaded: list[LoadedDeployment] = []
    for i, f in enumerate(files):
        if run.budget.exhausted is not None:
            _not_checked(run, files[i:], run.budget.exhausted)
            break
        errors_before = _error_count(run)
        run.budget.start_file()
        try:
            run.budget.tick()
            item = _load_deployment(run, f)
        except BudgetExceeded as exc:  # crossed between two placed checks: at the file
            run.problems.append(Problem(run.rel(f), 1, 1, exc.rule, exc.message, exc.fix))
            continue
        if item is not None and _error_count(run) == errors_before:
            loaded.append(item)
    duplicates = _check_unique(run, loaded)
    loaded = [d for d in loaded if d.file not in duplicates]
    loaded.sort(key=lambda d: d.name)
    problems = sorted(set(run.problems), key=lambda p: (p.file, p.line, p.col, p.rule, p.message))
    return DesiredState(
        root, run.config, tuple(loaded), tuple(problems), tuple(run.rel(f) for f in files)
    )


def _not_checked(run: _Run, files: list[pathlib.Path], exc: BudgetExceeded) -> None:
    """One problem for the files left when the budget ran out (not one per file)."""
    more = f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""
    run.problems.append(
        Problem(
            run.rel(files[0]),
            1,
            1,
            exc.rule,
            f"not checked{more}: the repository ran out of its budget before ({exc.message})",
            exc.fix,
        )
    )


def _error_count(run: _Run) -> int:
    return sum(1 for p in run.problems if p.is_error)


def _load_config(run: _Run) -> None:
    for name in CONFIG_NAMES:
        path = run.root / name
        if not path.is_file():
            continue
        try:
            doc = load_yaml(read_limited(path), name, run.budget)
        except InvalidSpec as exc:
            run.problems.extend(exc.problems)
            return
        if doc.data is None:
            return
        config, problems = checked_model(
            doc, "reconcile", partial(RepoConfig.model_validate, doc.data)
        )
        run.problems.extend(problems)
        if config is not None:
            run.config = config
        return


def _load_deployment(run: _Run, path: pathlib.Path) -> LoadedDeployment | None:
    display = path.relative_to(run.root).as_posix() if inside(path, run.root) else str(path)
    if _through_symlink(run.root, path) and not inside(path.resolve(), run.root):
        run.problems.append(
            Problem(
                display,
                1,
                1,
                "path-escape",
                "deployment file is a symlink that leads outside the repository",
                "replace the symlink with the file itself",
            )
        )
        return None
    try:  # found by listing a directory: no other path reaches it, no cache needed
        doc = load_yaml(read_limited(path), display, run.budget)
    except InvalidSpec as exc:
        run.problems.extend(exc.problems)
        return None
    if not isinstance(doc.data, Mapping):
        what = "empty" if doc.data is None else f"a {type(doc.data).__name__}"
        run.problems.append(
            doc.problem(
                (),
                "deployment-invalid",
                f"a deployment file must be a mapping, this one is {what}",
                "start with `name: <deployment name>`",
            )
        )
        return None
    if path.suffix == ".json":
        doc = _as_json(doc)
    refused = _impreza_only(doc, path)
    if refused is not None:
        run.problems.append(refused)
        return None
    kind = deployment_kind(doc.data)
    if kind is None:
        named = [
            k
            for k in ("app", "app_name", "image", "build", "git_url", "manifest", "compose")
            if k in doc.data
        ]
        message = (
            "a deployment names no kind"
            if not named
            else "a deployment names several kinds: " + ", ".join(f"`{k}`" for k in named)
        )
        run.problems.append(
            doc.problem(
                tuple(named[1:2]),
                "deployment-kind",
                message,
                "give exactly one of `app` (catalog; Impreza: `app_name`), `image`, "
                "`build` (Dockerfile), `git_url`, or `manifest`/`compose`",
            )
        )
        return None
    data: Mapping[str, object] = doc.data
    if "name" not in data:
        derived = name_from_file(path)
        if not re.match(NAME_PATTERN, derived):
            run.problems.append(
                Problem(
                    display,
                    1,
                    1,
                    "name-from-file",
                    f"no `name`: the name comes from the file name, and {derived!r} breaks "
                    "the name rule (lowercase letters, digits, '-' and '_', 3 to 100 "
                    "characters, starting and ending with a letter or digit)",
                    f"add `name: {_suggest_name(derived)}`, or rename the file",
                )
            )
            return None
        data = {"name": derived, **data}
    spec, problems = checked_model(
        doc,
        "deployment",
        lambda: parse_deployment(data),
        fragment=f"/$defs/{kind.value}",
        data=data,
    )
    if spec is None:
        run.problems.extend(problems)
        return None
    directory = path.parent
    _check_agent(run, doc, spec)
    if isinstance(spec, CatalogDeployment):
        return _catalog(run, doc, spec, directory)
    if isinstance(spec, ImageDeployment):
        _check_image(run, doc, spec)
    elif isinstance(spec, DockerfileDeployment):
        usable = _check_build(run, doc, spec, directory)
        if usable is not None:
            context, sent = usable
            return LoadedDeployment(
                display,
                directory,
                doc,
                spec,
                bundle=run.rel(context),
                # what the build sends: an edit to an ignored file is no update
                bundle_digest=tree_digest(context, only=frozenset(sent)),
            )
    elif isinstance(spec, GitDeployment):
        _check_git(run, doc, spec)
    elif isinstance(spec, ManifestDeployment):
        return _manifest(run, doc, spec, directory)
    return LoadedDeployment(display, directory, doc, spec)


def name_from_file(path: pathlib.Path) -> str:
    """The name of a deployment file without ``name``: the file's stem, or for
    ``<dir>/deployment.yaml`` the directory's name (every such file is called
    ``deployment``; the directory is what tells them apart)."""
    if path.name in DEPLOYMENT_FILE_NAMES:
        return path.parent.name
    return path.stem


def _suggest_name(derived: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", derived.lower()).strip("-_")[:100]
    return name if re.match(NAME_PATTERN, name) else "<name>"


def _as_json(doc: Document) -> Document:
    """A ``.json`` file read as JSON: YAML 1.1 reads ``5e-1`` as a string, JSON as 0.5.

    The YAML loader has already refused duplicate keys and oversized or deep documents,
    and recorded positions; the shapes agree, so those positions stay valid.
    """
    try:
        data = json.loads(doc.source or "")
    except ValueError:
        return doc  # valid YAML but not JSON (a comment, a trailing comma): keep YAML's view
    return replace(doc, data=data)


def _impreza_only(doc: Document, path: pathlib.Path) -> Problem | None:
    """A body field that can only work on Impreza's side: an upload held by Impreza's
    server (``context_id``), or a token the body hands over (``git_pat``), which a
    repository would publish to everyone who can read it."""
    if "context_id" in doc.data:
        return _upload_mode(doc, path)
    if "git_pat" in doc.data:
        return doc.problem(
            ("git_pat",),
            "git-pat",
            "`git_pat` puts an access token in the repository, readable by everyone "
            "who can read the repository and kept in its history",
            "remove it and let the host authenticate: an ssh deploy key "
            "(`git_auth_method: deploy_key` with an ssh:// or git@host:path URL) or "
            "a git credential helper for https",
        )
    return None


def _upload_mode(doc: Document, path: pathlib.Path) -> Problem:
    """Impreza's upload mode names a tarball on Impreza's server: nothing here has it."""
    context = "." if path.name in DEPLOYMENT_FILE_NAMES else f"./{path.stem}"
    dockerfile = doc.data.get("dockerfile_path")
    build = f"context: {context}" + (
        f", dockerfile: {dockerfile}" if isinstance(dockerfile, str) else ""
    )
    return doc.problem(
        ("context_id",),
        "upload-mode",
        f"`context_id` {doc.data['context_id']!r} names a build context uploaded to "
        "Impreza; a deployment applied from git cannot use an upload",
        f"commit the project directory to the repository and write `build: {{{build}}}` "
        "instead of `context_id:` (the path is relative to this file)",
    )


def _through_symlink(root: pathlib.Path, path: pathlib.Path) -> bool:
    """Whether any component below ``root`` is a symlink: a few lstat calls, not a realpath."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def _check_agent(run: _Run, doc: Document, spec: Deployment) -> None:
    agent = spec.agent
    if agent == LOCAL_AGENT or AGENT_ID_RE.match(agent) or agent in run.config.agents:
        return
    key = "agent_id" if "agent_id" in doc.data else "agent"
    close = difflib.get_close_matches(agent, list(run.config.agents), n=1)
    fix = (
        f"did you mean {close[0]!r}?"
        if close
        else f"add `agents: {{{agent}: agt_<16 hex>}}` to reconcile.yaml, or use `local`"
    )
    run.problems.append(doc.problem((key,), "agent-unknown", f"unknown agent {agent!r}", fix))


def _catalog(
    run: _Run, doc: Document, spec: CatalogDeployment, directory: pathlib.Path
) -> LoadedDeployment | None:
    catalog = run.catalog
    app_key = _written_key(doc, "app")
    version_key_ = _written_key(doc, "version")
    if spec.app not in catalog.index:
        close = catalog.suggest_app(spec.app)
        fix = (
            f"did you mean {', '.join(repr(c) for c in close)}?"
            if close
            else "see `reconcile catalog list`"
        )
        run.problems.append(
            doc.problem(
                (app_key,), "catalog-app-unknown", f"no app {spec.app!r} in the catalog", fix
            )
        )
        return None
    entry = catalog.entry(spec.app, spec.version)
    if entry is None:
        versions = catalog.versions(spec.app)
        close = difflib.get_close_matches(str(spec.version), versions, n=1, cutoff=0.3)
        fix = f"did you mean {close[0]!r}? " if close else ""
        fix += f"available: {', '.join(versions)}"
        run.problems.append(
            doc.problem(
                (version_key_,),
                "catalog-version-unknown",
                f"{spec.app} has no version {spec.version!r} in the catalog",
                fix,
            )
        )
        return None
    checked = catalog.check(entry)
    if not checked.ok or checked.manifest is None:
        run.problems.extend(checked.problems)
        run.problems.append(
            doc.problem(
                (app_key,),
                "catalog-invalid",
                f"catalog manifest {entry.display} is invalid",
                "see the errors above",
            )
        )
        return None
    manifest = checked.manifest
    _check_catalog_vars(run, doc, spec, manifest)
    _check_route_values(run, doc, spec, manifest, None)
    if checked.compose is not None:
        _check_interpolated(run, doc, spec, manifest, checked.compose, None)
    return LoadedDeployment(doc.name, directory, doc, spec, manifest, checked.compose)


def _written_key(doc: Document, key: str) -> str:
    """``app``/``version`` as this file spells it (Impreza's body: ``app_name``/...)."""
    theirs = CATALOG_SYNONYMS.get(key)
    return theirs if theirs is not None and theirs in doc.data else key


def _check_catalog_vars(
    run: _Run, doc: Document, spec: CatalogDeployment, manifest: Manifest
) -> None:
    declared = [v.name for v in manifest.vars]
    for key in spec.vars:
        if manifest.var(key) is None:
            right = next((v for v in manifest.vars if v.name.lower() == key.lower()), None)
            if right is not None:
                run.problems.append(
                    doc.problem(
                        ("vars", key),
                        "var-case",
                        f"{manifest.name}'s var is {right.name!r}, not {key!r}",
                        f"write `{right.name}:` (var names are case-sensitive; the catalog "
                        "uses Impreza's names)",
                    )
                )
                continue
            fills = next((v for v in manifest.vars if (v.env or "").lower() == key.lower()), None)
            if fills is not None:
                run.problems.append(
                    doc.problem(
                        ("vars", key),
                        "var-unknown",
                        f"{manifest.name} has no var {key!r}",
                        f"did you mean {fills.name!r}? (it fills the container's {fills.env})",
                    )
                )
                continue
            close = difflib.get_close_matches(key, declared, n=1)
            fix = (
                f"did you mean {close[0]!r}?"
                if close
                else (
                    f"{manifest.name} takes: {', '.join(declared)}"
                    if declared
                    else f"{manifest.name} takes no vars"
                )
            )
            run.problems.append(
                doc.problem(
                    ("vars", key), "var-unknown", f"{manifest.name} has no var {key!r}", fix
                )
            )
    for var in manifest.vars:
        if (
            var.required
            and var.default is None
            and var.generate is None
            and var.name not in spec.vars
        ):
            hint = f" ({var.description})" if var.description else ""
            run.problems.append(
                doc.problem(
                    ("vars",) if "vars" in doc.data else (_written_key(doc, "app"),),
                    "var-required",
                    f"{manifest.name} needs var {var.name!r}{hint}",
                    f"add `{var.name}: <value>` under `vars:`"
                    + (" (or `{from_env: NAME}` for a secret)" if var.secret else ""),
                )
            )


def _check_route_values(
    run: _Run,
    doc: Document,
    spec: CatalogDeployment | ManifestDeployment,
    manifest: Manifest,
    routes_at: tuple[str, ...] | None,
) -> None:
    """A route on a var answers on that var's value; with no value it cannot be served.

    Only a warning: the var may be optional on purpose (an admin hostname some installs
    leave out).  ``routes_at``: where the routes stand in this file, if they are in it.
    """
    for i, route in enumerate(manifest.routes):
        name = route.match_var
        var = manifest.var(name)
        if name == "domain" or (var is None and name not in spec.vars):
            continue  # `domain`, or a var route-match-var already reported
        value = spec.vars.get(name, var.default if var is not None else None)
        if isinstance(value, FromEnv):
            fix = f"give `{name}` a literal hostname: a route's host is not a secret"
        elif value is None or value == "":
            fix = f"set `{name}: <hostname>` under `vars:` to serve it"
        else:
            continue
        where: tuple[str | int, ...]
        if routes_at:
            where = (*routes_at, i, "match_var")
        elif name in spec.vars:
            where = ("vars", name)
        else:
            where = ("vars",) if "vars" in doc.data else (_written_key(doc, "app"),)
        run.problems.append(
            doc.problem(
                where,
                "route-var-empty",
                f"route {i + 1} answers on var {name!r}, which has no hostname here: "
                "the proxy will not serve it",
                fix,
                key=routes_at is None,
                severity=Severity.WARNING,
            )
        )


def _check_interpolated(
    run: _Run,
    doc: Document,
    spec: CatalogDeployment | ManifestDeployment,
    manifest: Manifest,
    compose: Document,
    base_dir: pathlib.Path | None,
) -> bool:
    """The compose policy again, on the file with this deployment's vars filled in."""
    values: dict[str, str] = {
        "DEPLOYMENT_ID": "dpl_0000000000000000",
        "DOMAIN": spec.domain or "example.invalid",
        "DOMAIN_URL": f"https://{spec.domain or 'example.invalid'}",
    }
    for var in manifest.vars:
        if var.default is not None and not var.generate:
            values[var.env or var.name] = (
                str(var.default).lower() if isinstance(var.default, bool) else (str(var.default))
            )
    for key, value in spec.vars.items():
        if not isinstance(value, FromEnv):
            values[manifest.env_name(key)] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    try:
        data = interpolate(compose.data, values, run.budget)
    except InterpolationTooLarge as exc:
        # a catalog file is not the repository's: the deployment's vars are what grew
        where = compose.problem(exc.path, "", "") if base_dir is not None else None
        placed = where or doc.problem(("vars",) if "vars" in doc.data else (), "", "")
        run.problems.append(
            replace(
                placed,
                rule=exc.exceeded.rule,
                message=exc.exceeded.message + " (with this deployment's vars filled in)",
                fix=exc.exceeded.fix,
            )
        )
        return False
    if data == compose.data:
        return True
    filled = Document(compose.name, data, compose.positions, compose.key_positions, compose.source)
    seen = {(p.file, p.line, p.col, p.rule) for p in run.problems}
    new = [
        replace(p, message=p.message + " (with this deployment's vars filled in)")
        for p in check_compose_policy(
            filled,
            base_dir=base_dir,
            allow_host_ports=spec.name in run.config.policy.allow_host_ports,
            budget=run.budget,
        )
        if p.is_error and (p.file, p.line, p.col, p.rule) not in seen
    ]
    run.problems.extend(new)
    return not new


def _check_image(run: _Run, doc: Document, spec: ImageDeployment) -> None:
    if _unpinned(spec.image):
        run.problems.append(
            doc.problem(
                ("image",),
                "compose-image-unpinned",
                f"image {spec.image!r} is not pinned to a version",
                "use an explicit tag such as `name:1.2.3`, or a digest",
                severity=Severity.WARNING,
            )
        )


def _unpinned(image: str) -> bool:
    if "@sha256:" in image or "${" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.endswith(":latest")


def _check_build(
    run: _Run, doc: Document, spec: DockerfileDeployment, directory: pathlib.Path
) -> tuple[pathlib.Path, tuple[str, ...]] | None:
    """The build context, when it is usable, and the entries a build sends from it."""
    try:
        context = resolve_inside(directory, spec.build.context, run.root)
    except PathEscape as exc:
        run.problems.append(
            doc.problem(
                ("build", "context"),
                "path-escape",
                f"build context {exc}",
                "keep the build context inside the repository",
                key=False,
            )
        )
        return None
    if not context.is_dir():
        run.problems.append(
            doc.problem(
                ("build", "context"),
                "path-missing",
                f"build context {spec.build.context!r} is not a directory in the repository",
                f"create {run.rel(context) if inside(context, run.root) else context}/ "
                "with a Dockerfile",
                key=False,
            )
        )
        return None
    dockerfile = spec.dockerfile_path or spec.build.dockerfile
    try:
        df = resolve_inside(context, dockerfile, context, "the build context")
    except PathEscape as exc:
        run.problems.append(
            doc.problem(
                ("build",),
                "path-escape",
                f"dockerfile {exc}",
                "keep the Dockerfile inside the build context",
            )
        )
        return None
    if not df.is_file():
        run.problems.append(
            doc.problem(
                ("build",),
                "path-missing",
                f"no Dockerfile at {run.rel(df)}",
                "add it, or set `build.dockerfile` to its path inside the context",
            )
        )
    size = context_size(context, dockerfile, stop_above=MAX_BUILD_CONTEXT_BYTES)
    for link in size.escapes:
        run.problems.append(
            doc.problem(
                ("build", "context"),
                "path-escape",
                f"{run.rel(link)} is a symlink that leads outside the build context",
                "replace it with the file itself",
                key=False,
            )
        )
    if size.total > MAX_BUILD_CONTEXT_BYTES:
        largest = ", ".join(f"{rel} ({n // (1024 * 1024)} MB)" for rel, n in size.largest)
        ignored = f"{size.ignore_file} applied" if size.ignore_file else "no .dockerignore"
        run.problems.append(
            doc.problem(
                ("build", "context"),
                "build-context-size",
                f"build context sends {size.total // (1024 * 1024)} MB, more than 100 MB "
                f"({ignored}; largest: {largest})",
                "list what the build does not need in the context's .dockerignore, "
                "or move large files out of the repository",
                key=False,
            )
        )
        return None
    return (context, size.sent) if df.is_file() and not size.escapes else None


def _check_git(run: _Run, doc: Document, spec: GitDeployment) -> None:
    parts = urlsplit(spec.git_url)
    if parts.password is not None or (parts.scheme == "https" and parts.username):
        run.problems.append(
            doc.problem(
                ("git_url",),
                "git-url-credentials",
                "git_url carries credentials",
                "remove them from the URL; give the "
                "agent a deploy key or credential helper instead",
                key=False,
            )
        )


def _manifest(
    run: _Run, doc: Document, spec: ManifestDeployment, directory: pathlib.Path
) -> LoadedDeployment | None:
    allow_ports = spec.name in run.config.policy.allow_host_ports
    network = run.config.proxy.network
    if isinstance(spec.manifest, dict):
        checked = check_manifest(
            doc,
            at=("manifest",),
            defaults={"name": _app_name(spec.name), "version": "inline"},
            base_dir=directory,
            allow_host_ports=allow_ports,
            proxy_network=network,
            budget=run.budget,
        )
    elif spec.manifest is not None:
        sub = _load_sibling(run, doc, "manifest", spec.manifest, directory)
        if sub is None:
            return None
        checked = check_manifest(
            sub,
            defaults={"name": _app_name(spec.name), "version": "file"},
            base_dir=_parent(run, sub),
            allow_host_ports=allow_ports,
            proxy_network=network,
            budget=run.budget,
        )
    else:
        assert spec.compose is not None
        sub = _load_sibling(run, doc, "compose", spec.compose, directory)
        if sub is None:
            return None
        problems, _routed = check_compose(
            sub,
            spec.routes,
            routes_doc=doc,
            routes_path=("routes",),
            base_dir=_parent(run, sub),
            allow_host_ports=allow_ports,
            proxy_network=network,
            budget=run.budget,
        )
        problems += check_match_vars(
            spec.routes, list(spec.vars), doc, ("routes",), "the deployment's `vars:`"
        )
        checked = CheckedManifest(_compose_manifest(spec, sub), sub, problems)
    run.problems.extend(checked.problems)
    if not checked.ok:
        return None
    if checked.manifest is not None:
        inline = isinstance(spec.manifest, dict)
        routes_at: tuple[str, ...] | None = (
            ("manifest", "network", "reverse_proxy", "routes")
            if inline
            else (("routes",) if spec.compose is not None else None)
        )
        _check_route_values(run, doc, spec, checked.manifest, routes_at)
    if checked.compose is not None and checked.manifest is not None:
        base = directory if isinstance(spec.manifest, dict) else _parent(run, checked.compose)
        if not _check_interpolated(run, doc, spec, checked.manifest, checked.compose, base):
            return None
    bundle = _bundle_dir(run, doc, spec, directory)
    digests = tree_digests(bundle) if bundle else (None, None)
    return LoadedDeployment(
        doc.name,
        directory,
        doc,
        spec,
        checked.manifest,
        checked.compose,
        bundle=run.rel(bundle) if bundle else None,
        bundle_digest=digests[0],
        shipped_digest=digests[1],
    )


def _bundle_dir(
    run: _Run, doc: Document, spec: ManifestDeployment, directory: pathlib.Path
) -> pathlib.Path | None:
    """The directory a manifest's relative paths resolve against, if it is its own.

    ``deployments/blog/`` beside ``compose.yaml`` is shipped with the deployment;
    ``deployments/`` itself never is (it holds every other deployment).
    """
    rel = spec.compose or (spec.manifest if isinstance(spec.manifest, str) else None)
    base = (directory / rel).resolve().parent if rel else directory.resolve()
    if base == (run.root / DEPLOYMENTS_DIR).resolve() or not inside(base, run.root):
        return None
    return base


def _parent(run: _Run, sub: Document) -> pathlib.Path:
    return (run.root / sub.name).parent


def _app_name(name: str) -> str:
    return name[:64].strip("-_") or "app"


def _compose_manifest(spec: ManifestDeployment, compose: Document) -> Manifest:
    """A compose file plus routes is a manifest whose compose_yaml is that file."""
    return Manifest.model_validate(
        {
            "name": _app_name(spec.name),
            "version": "compose",
            "runtime": {"type": "docker-compose", "compose_yaml": compose.source or ""},
            "network": {
                "reverse_proxy": {"enabled": True, "routes": [r.model_dump() for r in spec.routes]}
            },
        }
    )


def _load_sibling(
    run: _Run, doc: Document, key: str, rel: str, directory: pathlib.Path
) -> Document | None:
    try:
        target = resolve_inside(directory, rel, run.root)
    except PathEscape as exc:
        run.problems.append(
            doc.problem(
                (key,),
                "path-escape",
                f"{key} {exc}",
                "keep the file inside the repository, beside the deployment",
                key=False,
            )
        )
        return None
    if not target.is_file():
        run.problems.append(
            doc.problem(
                (key,),
                "path-missing",
                f"{key} file {rel!r} does not exist",
                f"create {run.rel(target)}",
                key=False,
            )
        )
        return None
    try:
        return load_once(target, run.rel(target), run.budget)
    except InvalidSpec as exc:
        run.problems.extend(exc.problems)
        return None


def _check_unique(run: _Run, loaded: list[LoadedDeployment]) -> set[str]:
    """Flag the second user of a name (an error: that file is dropped) or of a domain.

    A shared domain is only a warning: which deployment keeps it depends on what already
    runs (the one deployed first keeps serving), which only the planner knows; it blocks
    the other one, with a reason, until the conflict goes.  Without anything deployed the
    first file by path keeps it, and that is the one this warning leaves alone.
    """
    losers: set[str] = set()
    names: dict[str, LoadedDeployment] = {}
    domains: dict[str, LoadedDeployment] = {}
    for item in sorted(loaded, key=lambda d: d.file):
        if not _claim(
            run,
            names,
            item,
            "name",
            item.name,
            "name-duplicate",
            "deployment name",
            "give each deployment its own name",
        ):
            losers.add(item.file)
            continue
        domain = item.spec.domain
        if domain is not None:
            _claim(
                run,
                domains,
                item,
                "domain",
                domain,
                "domain-duplicate",
                "domain",
                "give each deployment its own domain: the proxy routes a domain to one "
                "deployment only, so the planner blocks this one while the other holds it",
                severity=Severity.WARNING,
            )
    return losers


def _claim(
    run: _Run,
    owners: dict[str, LoadedDeployment],
    item: LoadedDeployment,
    field: str,
    value: str,
    rule: str,
    what: str,
    fix: str,
    *,
    severity: Severity = Severity.ERROR,
) -> bool:
    """Give ``value`` to ``item`` unless an earlier file holds it; then report both places."""
    owner = owners.get(value)
    if owner is None:
        owners[value] = item
        return True
    line = owner.doc.key_pos((field,))[0]
    run.problems.append(
        item.doc.problem(
            (field,),
            rule,
            f"{what} {value!r} is also used by {owner.file}:{line}",
            fix,
            key=False,
            severity=severity,
        )
    )
    return False
