"""Benchmark: planning 1,000 deployments on 100 agents against a snapshot, against floors.

Run: ``.venv/bin/python benchmarks/plan.py [--files 1000] [--agents 100] [--runs 7]``

Builds, in a temp dir, a repository of ``--files`` deployments of mixed kinds spread over
``--agents`` agents (``agents:`` aliases in reconcile.yaml), and an ``ActualState``
snapshot of the same deployments, every agent online, in which 10% were rendered from a
mutated variant (another image tag, var or domain), so the plan holds real ``update``
actions with their changes.  Then prints, measured in the same run:

* ``reconcile --dry-run REPO --against snapshot:FILE -f json`` end to end as a process
  (interpreter start-up included);
* its stages in process: ``load_repository``, ``render_all``, ``ActualState`` from the
  snapshot JSON, and the planning core ``plan(rendered, actual, namespace=...)`` alone;
* the fixed cost of that command: the same ``reconcile --dry-run`` on a 10-deployment
  repository (interpreter start-up, imports, first use of the models, output);
* the floor: a bare ``python -c`` process that ``yaml.safe_load``-s every YAML file of
  the repository (deployment and compose files), plus, for reference, ``python -c pass``;

and the ratios.  Medians of ``--runs`` runs after one warm-up.  Processes run with their
bytecode cached in a temp ``PYTHONPYCACHEPREFIX`` (written by the warm-up, as ``pip
install`` would have), so an inherited ``PYTHONDONTWRITEBYTECODE=1`` does not add the
compiling of every source file to each run, and nothing is written into the checkout.
The plan's summary is checked (90% noop, 10% update, each update explained by the
expected change) before any figure is printed.  Goals (issue 4): planning core <= 50 ms;
end to end <= 1.5 s and <= 3x the floor, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import COMPOSE  # noqa: E402

from reconciler.load.catalog import Catalog  # noqa: E402
from reconciler.load.repo import DesiredState, load_repository  # noqa: E402
from reconciler.model.state import (  # noqa: E402
    ActualState,
    AgentState,
    ContainerState,
    DeployedApp,
)
from reconciler.plan import plan  # noqa: E402
from reconciler.render import RenderContext, RenderedDeployment, render_all, spec_record  # noqa: E402

NAMESPACE = "bench"
KINDS = 5


FLOOR = """\
import pathlib, sys, yaml
for f in sorted(pathlib.Path(sys.argv[1]).rglob("*.yaml")):
    yaml.safe_load(f.read_bytes())
"""


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def agent_alias(i: int) -> str:
    return f"agent-{i:03d}"


def agent_id(i: int) -> str:
    return f"agt_{_hex(f'agent{i}', 16)}"


def mutated(i: int) -> bool:
    """Exactly one deployment in each block of ten, cycling through the kinds."""
    return i % 10 == (i // 10) % 10


def expected_change(kind: int, catalog_app: str | None) -> str:
    """The change field the plan must show for a mutated deployment of this kind."""
    if kind == 0 and catalog_app:
        return "domain"
    return {0: "image", 1: "image", 2: "env", 3: "env", 4: "domain"}[kind]


def write_repo(
    root: pathlib.Path, n: int, agents: int, catalog_app: str | None, *, old: bool
) -> None:
    """The repository; ``old``: the variant the snapshot was applied from (10% differ)."""
    deployments = root / "deployments"
    deployments.mkdir(parents=True)
    aliases = "".join(f"  {agent_alias(a)}: {agent_id(a)}\n" for a in range(agents))
    (root / "reconcile.yaml").write_text(
        f"namespace: {NAMESPACE}\nbase_domain: example.test\nagents:\n{aliases}"
    )
    for i in range(n):
        kind = i % KINDS
        name = f"app-{i:04d}"
        agent = f"agent: {agent_alias(i % agents)}\n"
        change = old and mutated(i)
        if kind == 0 and catalog_app:
            domain = f"{name}{'-old' if change else ''}.example.test"
            text = f"name: {name}\n{agent}app: {catalog_app}\ndomain: {domain}\n"
        elif kind in (0, 1):
            tag = "1.35" if change else "1.36"
            text = (
                f"name: {name}\n{agent}image: busybox:{tag}\ntarget_port: 80\ncpus: 0.5\n"
                f"memory_mb: 128\nvars:\n  GREETING: hello {i}\n  TOKEN: {{from_env: TOKEN}}\n"
            )
        elif kind == 2:
            d = deployments / name
            d.mkdir()
            (d / "Dockerfile").write_text("FROM busybox:1.36\nCOPY index.html /www/\n")
            (d / "index.html").write_text(f"<h1>{i}</h1>\n")
            greeting = f"hello {i}{' (old)' if change else ''}"
            text = (
                f"name: {name}\n{agent}build: {{context: ., dockerfile: Dockerfile}}\n"
                f"vars:\n  GREETING: {greeting}\n"
            )
            (d / "deployment.yaml").write_text(text)
            continue
        elif kind == 3:
            greeting = f"hello {i}{' (old)' if change else ''}"
            # A full sha: plan resolves branch and tag refs on the remote, a sha is as given.
            text = (
                f"name: {name}\n{agent}git_url: https://git.example.test/team/{name}.git\n"
                f"git_ref: {_hex(f'commit{i}', 40)}\ntarget_port: 8080\n"
                f"vars:\n  GREETING: {greeting}\n"
            )
        else:
            d = deployments / name
            d.mkdir()
            (d / "compose.yaml").write_text(COMPOSE.format(i=i))
            domain = f"domain: {name}-old.example.test\n" if change else ""
            text = (
                f"name: {name}\n{agent}{domain}compose: ./compose.yaml\nroutes:\n"
                "  - upstream: '{deployment_id}-app:80'\n"
            )
            (d / "deployment.yaml").write_text(text)
            continue
        (deployments / f"{name}.yaml").write_text(text)


def snapshot(rendered: list[RenderedDeployment], agents: int) -> ActualState:
    """What the agents report after applying ``rendered``: all online, all running."""
    by_agent: dict[str, dict[str, DeployedApp]] = {agent_id(a): {} for a in range(agents)}
    for r in rendered:
        by_agent[r.agent][r.id] = DeployedApp(
            id=r.id,
            name=r.name,
            namespace=r.namespace,
            spec_hash=r.spec_hash,
            services=list(r.services),
            containers=[
                ContainerState(service=s, name=f"{r.id}-{s}", one_shot=s in r.one_shot)
                for s in r.services
            ],
            record=spec_record(r),
        )
    return ActualState(
        source="snapshot",
        agents={a: AgentState(agent=a, deployments=d) for a, d in by_agent.items()},
    )


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def check_plan(
    result: dict[str, Any], n: int, catalog_app: str | None, rendered: list[RenderedDeployment]
) -> None:
    """90% noop, 10% update, each update on its agent with the expected change."""
    want_updates = sum(1 for i in range(n) if mutated(i))
    summary = {k: v for k, v in result["summary"].items() if v}
    assert summary == {"noop": n - want_updates, "update": want_updates}, summary
    agents = {r.name: r.agent for r in rendered}
    for action in result["actions"]:
        i = int(action["deployment"].removeprefix("app-"))
        assert action["agent"] == agents[action["deployment"]], action
        if action["action"] == "update":
            fields = {c["field"] for c in action["changes"]}
            assert expected_change(i % KINDS, catalog_app) in fields, (action, fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if args.files < 10 or not 1 <= args.agents <= args.files:
        parser.error("need --files >= 10 and 1 <= --agents <= --files")

    catalog = Catalog.builtin()
    app: str | None = "hello" if "hello" in catalog.index else next(iter(catalog.apps()), None)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-plan-"))
    try:
        repo, old, small = tmp / "repo", tmp / "old", tmp / "small"
        write_repo(repo, args.files, args.agents, app, old=False)
        write_repo(old, args.files, args.agents, app, old=True)
        write_repo(small, 10, 1, app, old=False)

        def loaded(root: pathlib.Path) -> DesiredState:
            state = load_repository(root, Catalog.builtin())
            assert state.ok, state.errors[:3]
            assert len(state.deployments) == args.files, len(state.deployments)
            return state

        state = loaded(repo)
        ctx = RenderContext(config=state.config)
        rendered = render_all(state, ctx)
        before = render_all(loaded(old))
        actual = snapshot(before, args.agents)
        snap = tmp / "snapshot.json"
        snap.write_text(actual.model_dump_json())
        actual = ActualState.model_validate_json(snap.read_bytes())  # as the CLI reads it

        small_snap = tmp / "small.json"
        small_snap.write_text(snapshot(render_all(load_repository(small)), 1).model_dump_json())

        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")

        def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, capture_output=True, text=True, env=env)

        exe = pathlib.Path(sys.executable).with_name("reconcile")
        cli = [str(exe), "--dry-run", str(repo), "--against", f"snapshot:{snap}", "-f", "json"]
        small_cli = [*cli[:2], str(small), "--against", f"snapshot:{small_snap}", "-f", "json"]
        done = run(cli)
        assert done.returncode == 0, done.stderr[-2000:]
        check_plan(json.loads(done.stdout), args.files, app, rendered)
        check_plan(
            plan(rendered, actual, namespace=state.config.namespace).model_dump(mode="json"),
            args.files,
            app,
            rendered,
        )
        files = sorted(repo.rglob("*.yaml"))

        def end_to_end() -> None:
            run(cli).check_returncode()

        def fixed_cost() -> None:
            run(small_cli).check_returncode()

        def floor() -> None:
            run([sys.executable, "-c", FLOOR, str(repo)]).check_returncode()

        def bare() -> None:
            run([sys.executable, "-c", "pass"]).check_returncode()

        results = {
            "reconcile --dry-run (process)": timed(end_to_end, args.runs),
            "  same, 10 deployments (fixed cost)": timed(fixed_cost, args.runs),
            "floor: python -c yaml.safe_load": timed(floor, args.runs),
            "  python -c pass (start-up only)": timed(bare, args.runs),
            "load_repository (in process)": timed(
                lambda: load_repository(repo, Catalog.builtin()), args.runs
            ),
            "render_all (in process)": timed(lambda: render_all(state, ctx), args.runs),
            "snapshot -> ActualState (in proc)": timed(
                lambda: ActualState.model_validate_json(snap.read_bytes()), args.runs
            ),
            "plan core (in process)": timed(
                lambda: plan(rendered, actual, namespace=state.config.namespace), args.runs
            ),
        }
        snap_bytes = snap.stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    kinds = sorted({d.kind.value for d in state.deployments})
    updates = sum(1 for i in range(args.files) if mutated(i))
    print(
        f"{args.files} deployments ({len(files)} YAML files incl. compose), kinds: "
        f"{', '.join(kinds)}; {args.agents} agents; snapshot {snap_bytes // 1024} KiB, "
        f"plan: {args.files - updates} noop, {updates} update (checked); "
        f"median of {args.runs} runs"
    )
    print(f"{'measurement':36} {'median':>9} {'min':>9} {'max':>9}")
    for label, values in results.items():
        print(
            f"{label:36} {statistics.median(values):8.3f}s {min(values):8.3f}s {max(values):8.3f}s"
        )
    med = {label: statistics.median(values) for label, values in results.items()}
    e = med["reconcile --dry-run (process)"]
    fixed = med["  same, 10 deployments (fixed cost)"]
    f = med["floor: python -c yaml.safe_load"]
    p = med["plan core (in process)"]
    stages = (
        med["load_repository (in process)"]
        + med["render_all (in process)"]
        + med["snapshot -> ActualState (in proc)"]
        + p
    )
    print(f"ratio end to end / floor:           {e / f:5.2f}x   (goal <= 3x)")
    print(
        f"end to end: {e:.3f}s (goal <= 1.5 s) = fixed cost {fixed:.3f}s (start-up, imports, "
        f"first use) + {e - fixed:.3f}s for {args.files} deployments; "
        f"the in-process stages sum to {stages:.3f}s"
    )
    print(f"planning core: {p * 1000:.1f} ms (goal <= 50 ms)")


if __name__ == "__main__":
    main()
