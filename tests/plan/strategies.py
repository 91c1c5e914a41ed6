"""Desired and actual states for planner tests, built in memory (no files).

A deployment is described by a small :class:`Spec` (what a user would write, plus what
the loader would have found: a build context's digest, a resolved git sha), turned into
a ``LoadedDeployment`` exactly as the loader shapes one, then rendered with the real
``render``.  Hypothesis strategies combine these into a :class:`Scenario`: a desired
state, an actual state made of older renders (updates), tombstones, failures, drift,
moved deployments, removed ones and deployments of another namespace.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from reconciler.load.repo import LoadedDeployment
from reconciler.load.yamlsafe import Document, load_yaml
from reconciler.model.deployment import RepoConfig, parse_deployment
from reconciler.model.manifest import Manifest
from reconciler.model.state import ActualState, AgentState, DeployedApp
from reconciler.render import RenderContext, RenderedDeployment, render
from tests.plan.fakehost import deployed_app

EDGE_ID = "agt_00000000000000e1"
BARE_ID = "agt_00000000000000b2"
# Agents as a deployment file names them, and as rendering resolves them.
AGENT_NAMES = ("local", "edge", BARE_ID)
AGENT_IDS = ("local", EDGE_ID, BARE_ID)
CONFIG_AGENTS = {"edge": EDGE_ID}
NAMESPACES = ("default", "team-a")
OTHER_NAMESPACE = "other"
VAR_KEYS = ("K1", "K2", "K3", "K4", "K5")
SECRET_PREFIX = "SECRET-"

# --------------------------------------------------------------- fixed catalog app


def _compose_text(image: str) -> str:
    return f"""\
services:
  app:
    image: {image}
    container_name: ${{DEPLOYMENT_ID}}-app
    restart: unless-stopped
    environment:
      K1: ${{K1}}
      K2: ${{K2}}
    networks: [default, impreza-proxy]
  migrate:
    image: {image}
    restart: "no"
    command: ["true"]
networks:
  impreza-proxy:
    external: true
"""


CATALOG_IMAGES = {"1.0.0": "busybox:1.36", "1.1.0": "busybox:1.37"}
COMPOSE_DOCS: dict[str, Document] = {
    version: load_yaml(_compose_text(image), f"catalog/demo/{version}.yaml")
    for version, image in CATALOG_IMAGES.items()
}


def _manifest(name: str, version: str, compose: str = "1.0.0") -> Manifest:
    return Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "vars": [
                {"name": "K1", "secret": True},
                {"name": "K2", "secret": True},
                {"name": "K3"},
                {"name": "K4"},
                {"name": "K5"},
                {"name": "GEN", "generate": "hex:32"},
                {"name": "MODE", "default": "prod"},
            ],
            "runtime": {
                "type": "docker-compose",
                "compose_yaml": COMPOSE_DOCS[compose].source or "",
            },
            "network": {
                "reverse_proxy": {
                    "enabled": True,
                    "routes": [{"upstream": "{deployment_id}-app:80", "match_var": "domain"}],
                }
            },
        }
    )


MANIFESTS = {version: _manifest("demo", version, version) for version in CATALOG_IMAGES}

# ------------------------------------------------------------------- one deployment


@dataclass(frozen=True)
class Spec:
    """One deployment file's content plus what loading it would have resolved."""

    name: str
    kind: str  # image | dockerfile | git | catalog | manifest
    agent: str = "local"  # as written: local, an alias or an agt_ id
    body: Mapping[str, Any] = field(default_factory=dict)  # the kind's own keys
    vars: Mapping[str, str] = field(default_factory=dict)
    domain: str | None = None
    onion: bool = False
    bundle_digest: str | None = None  # dockerfile / manifest: the shipped directory
    git_sha: str | None = None  # git: the ref resolved at plan time

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "agent": self.agent, **self.body}
        if self.vars:
            doc["vars"] = dict(self.vars)
        if self.domain is not None:
            doc["domain"] = self.domain
        if self.onion:
            doc["onion"] = True
        return doc


def config_for(namespace: str = "default", **kw: Any) -> RepoConfig:
    return RepoConfig(namespace=namespace, agents=CONFIG_AGENTS, **kw)


def loaded(spec: Spec) -> LoadedDeployment:
    """The LoadedDeployment the loader would produce for ``spec``."""
    data = spec.document()
    parsed = parse_deployment(data)
    directory = pathlib.Path("/repo/deployments") / spec.name
    doc = Document(f"deployments/{spec.name}/deployment.yaml", data)
    if spec.kind == "catalog":
        version = str(spec.body.get("version", "1.0.0"))
        return LoadedDeployment(
            doc.name, directory, doc, parsed, MANIFESTS[version], COMPOSE_DOCS[version]
        )
    if spec.kind == "manifest":
        manifest = _manifest(spec.name, "compose")
        return LoadedDeployment(
            doc.name,
            directory,
            doc,
            parsed,
            manifest,
            COMPOSE_DOCS["1.0.0"],
            bundle=f"deployments/{spec.name}",
            bundle_digest=spec.bundle_digest,
        )
    if spec.kind == "dockerfile":
        return LoadedDeployment(
            doc.name,
            directory,
            doc,
            parsed,
            bundle=f"deployments/{spec.name}/site",
            bundle_digest=spec.bundle_digest,
        )
    return LoadedDeployment(doc.name, directory, doc, parsed)


_RENDERED: dict[tuple[str, str], RenderedDeployment] = {}


def rendered(spec: Spec, config: RepoConfig | None = None) -> RenderedDeployment:
    """``render`` of ``spec``; memoised, since shrinking renders the same specs again."""
    cfg = config or config_for()
    key = (repr(spec), cfg.model_dump_json())
    if key not in _RENDERED:
        revisions = {spec.name: spec.git_sha} if spec.git_sha else {}
        _RENDERED[key] = render(loaded(spec), RenderContext(config=cfg, git_revisions=revisions))
    return _RENDERED[key]


def image_spec(name: str, image: str = "busybox:1.36", **kw: Any) -> Spec:
    body = {"image": image, **kw.pop("body", {})}
    return Spec(name=name, kind="image", body=body, **kw)


# --------------------------------------------------------------------- strategies

names = st.from_regex(r"[a-z][a-z0-9-]{1,8}[a-z0-9]", fullmatch=True)
hex_digests = st.integers(0, 2**256 - 1).map(lambda n: f"{n:064x}")
shas = st.integers(0, 2**160 - 1).map(lambda n: f"{n:040x}")
_words = st.sampled_from(["", "pw=", "token ", "a b", "x|y", "`q`", "<b>", "ü", "\\n", "'\""])
secret_values = st.builds(
    lambda pre, marker, post: f"{pre}{SECRET_PREFIX}{marker:012x}{post}",
    _words,
    st.integers(0, 2**48 - 1),
    _words,
)
var_maps = st.dictionaries(st.sampled_from(VAR_KEYS), secret_values, max_size=4)


@st.composite
def specs(draw: st.DrawFn, name: str) -> Spec:
    kind = draw(st.sampled_from(["image", "dockerfile", "git", "catalog", "manifest"]))
    sized = {
        "cpus": draw(st.sampled_from([0.25, 0.5, 1.0])),
        "memory_mb": draw(st.sampled_from([64, 512])),
        "target_port": draw(st.sampled_from([80, 8080])),
    }
    body: dict[str, Any]
    digest = sha = None
    if kind == "image":
        body = {"image": draw(st.sampled_from(["busybox:1.36", "caddy:2", "ghcr.io/a/b:1.0"]))}
        body.update(sized)
    elif kind == "dockerfile":
        body = {"build": {"context": "./site"}, **sized}
        digest = draw(hex_digests)
    elif kind == "git":
        body = {"git_url": f"file:///srv/git/{name}.git", "git_ref": "main", **sized}
        sha = draw(shas)
    elif kind == "catalog":
        body = {"app": "demo", "version": draw(st.sampled_from(sorted(CATALOG_IMAGES)))}
    else:
        body = {"compose": "./compose.yaml", "routes": [{"upstream": "{deployment_id}-app:80"}]}
        digest = draw(hex_digests)
    onion = draw(st.booleans())
    has_domain = draw(st.booleans())
    return Spec(
        name=name,
        kind=kind,
        agent=draw(st.sampled_from(AGENT_NAMES)),
        body=body,
        vars=draw(var_maps),
        domain=f"{name}.example.com" if has_domain else None,
        onion=onion,
        bundle_digest=digest,
        git_sha=sha,
    )


MUTATIONS = ("var_value", "var_add", "var_remove", "image", "domain", "onion", "resources", "rev")


@st.composite
def mutated(draw: st.DrawFn, spec: Spec) -> Spec:
    """An older version of ``spec``: what the host ran before this commit."""
    what = draw(st.sampled_from(MUTATIONS))
    new_vars = dict(spec.vars)
    if what == "var_value" and new_vars:
        key = draw(st.sampled_from(sorted(new_vars)))
        new_vars[key] = draw(secret_values)
        return replace(spec, vars=new_vars)
    if what == "var_remove" and new_vars:
        del new_vars[draw(st.sampled_from(sorted(new_vars)))]
        return replace(spec, vars=new_vars)
    if what == "image" and spec.kind == "image":
        return replace(spec, body={**spec.body, "image": "busybox:1.35"})
    if what == "image" and spec.kind == "catalog":
        other = "1.0.0" if spec.body["version"] == "1.1.0" else "1.1.0"
        return replace(spec, body={**spec.body, "version": other})
    if what == "domain":
        return replace(spec, domain=None if spec.domain else f"{spec.name}.old.example.org")
    if what == "onion":
        return replace(spec, onion=not spec.onion)
    if what == "resources" and "cpus" in spec.body:
        return replace(spec, body={**spec.body, "cpus": float(spec.body["cpus"]) * 2})
    if what == "rev" and spec.git_sha:
        return replace(spec, git_sha=draw(shas))
    if what == "rev" and spec.bundle_digest:
        return replace(spec, bundle_digest=draw(hex_digests))
    # var_add, or a mutation that does not apply to this kind: an extra var then.
    free = [k for k in VAR_KEYS if k not in new_vars]
    if free:
        new_vars[draw(st.sampled_from(free))] = draw(secret_values)
    else:
        new_vars.pop(VAR_KEYS[0])
    return replace(spec, vars=new_vars)


DRIFTS = (
    "none",
    "none",
    "exited",
    "missing",
    "unhealthy",
    "restarting",
    "created",
    "one_shot_failed",
    "one_shot_missing",
    "scaled_one_exited",
    "scaled_one_exited",
)


def drifted(app: DeployedApp, how: str) -> DeployedApp:
    """``app`` with its containers drifted ``how`` (see DRIFTS)."""
    containers = list(app.containers)
    main = next(i for i, c in enumerate(containers) if not c.one_shot)
    shot = next((i for i, c in enumerate(containers) if c.one_shot), None)
    c = containers[main]
    if how == "exited":
        containers[main] = c.model_copy(update={"status": "exited", "exit_code": 137})
    elif how == "missing":
        del containers[main]
    elif how == "unhealthy":
        containers[main] = c.model_copy(update={"health": "unhealthy"})
    elif how == "restarting":
        containers[main] = c.model_copy(update={"status": "restarting", "restarts": 7})
    elif how == "created":
        containers[main] = c.model_copy(update={"status": "created"})
    elif how == "one_shot_failed" and shot is not None:
        containers[shot] = containers[shot].model_copy(update={"exit_code": 1})
    elif how == "one_shot_missing" and shot is not None:
        del containers[shot]
    elif how == "scaled_one_exited":
        containers.insert(
            main + 1,
            c.model_copy(update={"name": c.name[:-2] + "-2", "status": "exited", "exit_code": 2}),
        )
        containers.insert(
            main, c.model_copy(update={"name": c.name[:-2] + "-0", "status": "restarting"})
        )
    return app.model_copy(update={"containers": containers})


@dataclass(frozen=True)
class Scenario:
    namespace: str
    config: RepoConfig
    specs: tuple[Spec, ...]
    desired: tuple[RenderedDeployment, ...]
    actual: ActualState
    secrets: frozenset[str]  # every var value used, desired and older
    foreign: frozenset[tuple[str, str]]  # (agent, id) of other namespaces' deployments
    modes: Mapping[str, str] = field(default_factory=dict)  # name -> how it stands


ACTUAL_MODES = (
    "absent",
    "same",
    "same",
    "mutated",
    "mutated",
    "tombstone",
    "failed",
    "labels_only",
    "moved",
    "moved",
)


@st.composite
def scenarios(draw: st.DrawFn, max_desired: int = 6, all_online: bool = True) -> Scenario:
    namespace = draw(st.sampled_from(NAMESPACES))
    config = config_for(namespace)
    all_names = draw(st.lists(names, unique=True, max_size=max_desired + 3))
    split = draw(st.integers(0, len(all_names)))
    desired_names, removed_names = all_names[:split], all_names[split:]
    desired_specs = [draw(specs(n)) for n in desired_names]
    desired = [rendered(s, config) for s in desired_specs]
    secrets = {v for s in desired_specs for v in s.vars.values()}
    placed: dict[str, dict[str, DeployedApp]] = {a: {} for a in AGENT_IDS}
    modes: dict[str, str] = {}

    def put(agent: str, app: DeployedApp) -> None:
        placed[agent][app.id] = app

    for spec, want in zip(desired_specs, desired, strict=True):
        mode = draw(st.sampled_from(ACTUAL_MODES))
        modes[spec.name] = mode
        if mode == "absent":
            continue
        old_spec = draw(mutated(spec)) if mode != "same" else spec
        secrets.update(old_spec.vars.values())
        if mode == "moved":
            other = draw(st.sampled_from([a for a in AGENT_NAMES if a != spec.agent]))
            old_spec = replace(old_spec, agent=other)
        old = rendered(old_spec, config)
        app = deployed_app(old)
        if mode == "tombstone":
            app = app.model_copy(update={"status": "uninstalled", "containers": []})
        elif mode == "failed":
            app = app.model_copy(update={"status": "failed"})
        elif mode == "labels_only":
            app = app.model_copy(update={"record": None})
        if mode in ("same", "mutated", "failed", "moved"):
            app = drifted(app, draw(st.sampled_from(DRIFTS)))
        put(old.agent, app)
        assert old.id == want.id

    for name in removed_names:
        spec = draw(specs(name))
        secrets.update(spec.vars.values())
        old = rendered(spec, config)
        status = draw(st.sampled_from(["running", "running", "failed", "uninstalled"]))
        app = deployed_app(old).model_copy(update={"status": status})
        put(old.agent, app)
        modes[name] = f"removed:{status}"

    foreign: set[tuple[str, str]] = set()
    other_config = config_for(OTHER_NAMESPACE)
    # Another repository's deployments, some with the very names this one uses.
    for name in draw(st.lists(st.sampled_from([*all_names, "shared", "their-app"]), unique=True)):
        spec = draw(specs(name))
        secrets.update(spec.vars.values())
        theirs = rendered(spec, other_config)
        app = drifted(deployed_app(theirs), draw(st.sampled_from(DRIFTS)))
        put(theirs.agent, app)
        foreign.add((theirs.agent, theirs.id))

    # Agents: online; or (all_online=False) sometimes offline, or unknown to the actual
    # state altogether (``--against local`` cannot see remote agents).
    seen = dict.fromkeys(AGENT_IDS, "online")
    if not all_online:
        for a in AGENT_IDS:
            seen[a] = draw(st.sampled_from(["online", "online", "offline", "unknown"]))
    actual = ActualState(
        source="test",
        agents={
            a: AgentState(
                agent=a,
                online=seen[a] == "online",
                reason="offline (no heartbeat for 5 minutes)" if seen[a] == "offline" else None,
                deployments=placed[a],
            )
            for a in AGENT_IDS
            if seen[a] != "unknown"
        },
    )
    return Scenario(
        namespace=namespace,
        config=config,
        specs=tuple(desired_specs),
        desired=tuple(desired),
        actual=actual,
        secrets=frozenset(secrets),
        foreign=frozenset((a, i) for a, i in foreign if a in actual.agents),
        modes=modes,
    )


def reordered(actual: ActualState, rnd: random.Random) -> ActualState:
    """The same actual state with every dict (and container list) built in another order."""
    agents = list(actual.agents.items())
    rnd.shuffle(agents)
    out = {}
    for name, agent in agents:
        apps = list(agent.deployments.items())
        rnd.shuffle(apps)
        rebuilt = {}
        for app_id, app in apps:
            containers = list(app.containers)
            rnd.shuffle(containers)
            record = app.record
            if record is not None:
                env = list(record.env.items())
                rnd.shuffle(env)
                images = list(record.images.items())
                rnd.shuffle(images)
                record = record.model_copy(update={"env": dict(env), "images": dict(images)})
            rebuilt[app_id] = app.model_copy(update={"containers": containers, "record": record})
        out[name] = agent.model_copy(update={"deployments": rebuilt})
    return ActualState(source=actual.source, agents=out)


__all__ = [
    "AGENT_IDS",
    "AGENT_NAMES",
    "BARE_ID",
    "EDGE_ID",
    "OTHER_NAMESPACE",
    "SECRET_PREFIX",
    "Scenario",
    "Spec",
    "config_for",
    "drifted",
    "image_spec",
    "loaded",
    "mutated",
    "rendered",
    "reordered",
    "scenarios",
    "specs",
]
