"""Benchmark: validating 1,000 deployment files of mixed kinds, against parsing floors.

Run: ``.venv/bin/python benchmarks/validate.py [--files 1000] [--runs 5]``

Prints, measured in the same run on the same files:

* validate (in process): ``load_repository`` -- YAML, JSON Schema, models, every rule;
* floor A: ``yaml.safe_load`` of each file (what the issue names as the floor);
* floor B: ``yaml.load(..., Loader=yaml.CSafeLoader)`` -- libyaml, the fastest parse there is;
* ``reconcile validate DIR`` end to end as a process (interpreter start-up included);

and the ratios validate/floor.  Medians of ``--runs`` runs after one warm-up.
Goal (issue 3): validate <= 1.0 s and <= 3x floor A on a 2-core machine.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import COMPOSE  # noqa: E402

from reconciler.load.catalog import Catalog  # noqa: E402
from reconciler.load.repo import load_repository  # noqa: E402


def write_repo(root: pathlib.Path, n: int, catalog_app: str | None) -> None:
    deployments = root / "deployments"
    deployments.mkdir(parents=True)
    (root / "reconcile.yaml").write_text("namespace: bench\nbase_domain: example.test\n")
    for i in range(n):
        kind = i % 5
        name = f"app-{i:04d}"
        if kind == 0 and catalog_app:
            text = f"name: {name}\napp: {catalog_app}\ndomain: {name}.example.test\n"
        elif kind in (0, 1):
            text = (
                f"name: {name}\nimage: busybox:1.36\ntarget_port: 80\ncpus: 0.5\n"
                f"memory_mb: 128\nvars:\n  GREETING: hello {i}\n  TOKEN: {{from_env: TOKEN}}\n"
            )
        elif kind == 2:
            d = deployments / name
            d.mkdir()
            (d / "Dockerfile").write_text("FROM busybox:1.36\nCOPY index.html /www/\n")
            (d / "index.html").write_text(f"<h1>{i}</h1>\n")
            text = f"name: {name}\nbuild: {{context: ., dockerfile: Dockerfile}}\n"
            (d / "deployment.yaml").write_text(text)
            continue
        elif kind == 3:
            text = (
                f"name: {name}\ngit_url: https://git.example.test/team/{name}.git\n"
                f"git_ref: v1.{i}\ntarget_port: 8080\n"
            )
        else:
            d = deployments / name
            d.mkdir()
            (d / "compose.yaml").write_text(COMPOSE.format(i=i))
            text = (
                f"name: {name}\ncompose: ./compose.yaml\nroutes:\n"
                "  - upstream: '{deployment_id}-app:80'\n"
            )
            (d / "deployment.yaml").write_text(text)
            continue
        (deployments / f"{name}.yaml").write_text(text)


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def yaml_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    catalog = Catalog.builtin()
    app = "hello" if "hello" in catalog.index else (catalog.apps() or [None])[0]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-validate-"))
    try:
        repo = tmp / "repo"
        write_repo(repo, args.files, app)
        files = yaml_files(repo)
        state = load_repository(repo, Catalog.builtin())
        assert state.ok, state.problems[:3]
        assert len(state.deployments) == args.files, len(state.deployments)

        def validate() -> None:
            load_repository(repo, Catalog.builtin())  # fresh catalog: no cache carried over

        def floor_safe_load() -> None:
            for f in files:
                yaml.safe_load(f.read_bytes())

        def floor_libyaml() -> None:
            for f in files:
                yaml.load(f.read_bytes(), Loader=yaml.CSafeLoader)

        exe = pathlib.Path(sys.executable).with_name("reconcile")

        def end_to_end() -> None:
            subprocess.run(
                [str(exe), "validate", str(repo), "-f", "json"], check=True, capture_output=True
            )

        results = {
            "validate (in process)": timed(validate, args.runs),
            "floor A: yaml.safe_load": timed(floor_safe_load, args.runs),
            "floor B: libyaml CSafeLoader": timed(floor_libyaml, args.runs),
            "reconcile validate (process)": timed(end_to_end, args.runs),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    kinds = sorted({d.kind.value for d in state.deployments})
    print(
        f"{args.files} deployment files ({len(files)} YAML files incl. compose), "
        f"kinds: {', '.join(kinds)}; median of {args.runs} runs"
    )
    print(f"{'measurement':34} {'median':>9} {'min':>9} {'max':>9}")
    for label, values in results.items():
        print(
            f"{label:34} {statistics.median(values):8.3f}s {min(values):8.3f}s {max(values):8.3f}s"
        )
    v = statistics.median(results["validate (in process)"])
    a = statistics.median(results["floor A: yaml.safe_load"])
    b = statistics.median(results["floor B: libyaml CSafeLoader"])
    e = statistics.median(results["reconcile validate (process)"])
    print(f"ratio validate / floor A (safe_load):   {v / a:5.2f}x   (goal <= 3x)")
    print(f"ratio validate / floor B (libyaml):     {v / b:5.2f}x")
    print(f"validate in process: {v:.3f}s (goal <= 1.0 s); end to end: {e:.3f}s")


if __name__ == "__main__":
    main()
