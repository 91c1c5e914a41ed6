"""Benchmark: ``reconcile apply`` on one Docker host, against Compose floors and a peer.

Run (one command, every size): ``.venv/bin/python benchmarks/apply.py [--sizes 20,100,200]
[--runs 5] [--own-dockerd /var/tmp/bench-dockerd | --docker-host URL] [--parallel N]``;
``--sizes 20`` is the quick run, ``--only noop`` the no-op of 20 against the peer alone.

Needs the Docker Engine (``bash scripts/setup.sh --docker``) with ``busybox:1.36`` and
``caddy:2`` present locally; traffic goes to 127.0.0.1 only.  Everything it makes lives in
a temp dir (repositories, ``--state-dir``, git repos) or carries the namespace ``bench``,
and is removed at the end.  Prints, measured in the same run, each figure next to its
floor or peer (medians after one warm-up):

Size 20 (``--apps``), with docker-harbormaster 0.5.0 in the same run:

1. install of one busybox compose app with ``reconcile apply --yes`` until the FIRST 200
   through the proxy (polled from the start of the command, 20 ms steps), and until the
   command exits (settle gate included), against a bare ``docker compose -p X up -d`` of
   an equivalent file with a published port, to its first 200 (polled once ``up`` returned,
   as the peer bench's floor A2; and polled from invocation, floor A).
   Goal: overhead <= 1.5 s.
2. first deploy of the 20 apps (default gate), then their no-op: ``reconcile apply --yes``
   as a process and ``reconcile_once`` in process, with a ``docker`` shim first on PATH
   that logs every CLI call.  Goal: <= 0.3 s and zero ``docker compose`` subprocesses.
3. the same apps under docker-harbormaster 0.5.0 (a Python peer tool with no health gate,
   installed from PyPI into its own venv under ``~/.cache``, apps in ``file://`` git
   repos, ``pull_policy: missing``): its first deploy, no-op runs and one-app changes
   (a new env value in one app's compose file, committed), paired with ours.  Goals: first
   deploy and one-app change at most harbormaster's time (then half of it), no-op >= 10x
   faster.  App 0 has a healthcheck (the gate's other path): its one-app change is
   reported too, and where a one-app change's time goes, step by step (3b).
4. drift repair under ``reconcile apply --watch``: ``docker rm -f`` of one app container
   until the app serves 200 again through the proxy.  Goal: <= 5 s.
5. resident memory of the idle ``--watch`` process (VmRSS, children included), max over
   ~5 s after its first pass.  Goal: <= 60 MB.

Sizes 100 and 200 (after the 20 are purged; 200 grows from the 100):

6. first deploy, no-op and one-app change, as time and as the ratio to the 20-app
   figures.  Goal: the no-op grows less than linearly.
7. all 200 answer 200 through the proxy; idle RSS of ``apply --watch`` and of
   ``reconcile-agent`` (connected to a real local ``reconcile serve`` whose source is an
   empty repository, so it plans and prunes nothing) on the same state dir.  Goal: each
   <= 80 MB.

Docker's default address pools hold ~30 networks.  ``--own-dockerd DIR`` starts a second
dockerd (socket, data-root, exec-root, pidfile under DIR; ``--address-pool``, default
``base=10.201.0.0/16,size=28``; no iptables or bridge of its own), copies the images into
it, creates the proxy network with a /20 (every app joins it: a /28 holds 13), accepts
its subnets' traffic with one rule in ``DOCKER-USER`` (removed at the end), runs
everything against it and stops it.  Every ``apply`` runs the parallel executor with
``--parallel N`` (default: the pool ``apply`` itself defaults to; the header names it).
The first deploy of the 20 is timed step by step (its plain progress lines), and the
proxy's ``POST /load`` are counted from Caddy's admin log.

The measured install app joins ``default`` and the proxy network, as the floor's file has
its own ``default`` network; the 20 apps join only the proxy network, because 20 more
bridge networks next to the peer's 20 exhaust Docker's default address pools (~31).

The proxy container's name is fixed (``reconciler-proxy``): on the host's own daemon, do
not run this while other Docker tests run (it waits up to ``--wait`` s for ``pytest``,
another ``reconcile apply`` or harbormaster to end, then warns and goes on); a second
dockerd (``--own-dockerd``) has no such neighbours.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACE = "bench"
IMAGE = "busybox:1.36"
# RECONCILE_PROXY_CONTAINER (which `reconcile` reads too) names a proxy of this run's own
# on a shared daemon, where tests of others run the default one.
PROXY_CONTAINER = os.environ.get("RECONCILE_PROXY_CONTAINER") or "reconciler-proxy"
PROXY_NETWORK = "impreza-proxy"
HM_VERSION = "0.5.0"
HM_VENV = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    / "compose-reconciler-bench"
    / "venv-hm"
)
RECONCILE = str(pathlib.Path(sys.executable).with_name("reconcile"))
OWN_SUBNETS = "10.200.0.0/14"  # --own-dockerd: its pool and proxy network live in here
OWN_BRIDGE = "benchbr0"  # --own-dockerd: its default bridge (never --bridge none)
OWN_BRIDGE_ADDRESS = "10.203.255.1/24"  # inside OWN_SUBNETS
PROXY_SUBNET = "10.202.0.0/20"  # --own-dockerd: the proxy network, room for 4,000 apps
POLL_STEP = 0.02
STALL = 0.5  # one request this slow waited for a SYN retransmit (1 s RTO): see the report
MAX_REQUESTS = 20_000  # across the whole run: a runaway poller stops here
mono = time.monotonic

# The app: busybox httpd behind the proxy (the routing contract of compose deployments).
HTTPD = (
    '["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"]'
)
APP_COMPOSE = f"""\
services:
  app:
    image: {IMAGE}
    init: true
    container_name: ${{DEPLOYMENT_ID}}-app
    command: {HTTPD}
    networks: [{{networks}}]
{{extra}}networks:
  {PROXY_NETWORK}:
    external: true
"""
# The one-app change: a new environment value, so `up` recreates the container.
CHANGE = """\
    environment:
      REV: "{rev}"
"""
# busybox's own wget as the healthcheck of the variant that has one (--settle is then
# not waited out: the gate settles it once healthy).
HEALTHCHECK = """\
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
      interval: 500ms
"""
# The floor: the same service, reached on a published port instead of through the proxy.
FLOOR_COMPOSE = """\
services:
  app:
    image: {image}
    init: true
    command: {httpd}
    labels:
      io.reconciler.namespace: {ns}
    ports:
      - "127.0.0.1:{port}:80"
"""
# The peer's apps: the same service, no proxy (harbormaster has none).
HM_COMPOSE = f"""\
services:
  app:
    image: {IMAGE}
    init: true
    pull_policy: missing
    command: {HTTPD}
"""


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(cmd: list[str], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"FAILED {' '.join(cmd)} (rc={r.returncode})\n{r.stdout}\n{r.stderr}")
    return r


def timed(cmd: list[str], **kw: Any) -> float:
    t0 = mono()
    sh(cmd, **kw)
    return mono() - t0


_requests = 0


def http_status(port: int, host: str, timeout: float = 3.0) -> int:
    """Status of GET / on 127.0.0.1:port with this Host header; 0 on a connection error."""
    global _requests
    _requests += 1
    if _requests > MAX_REQUESTS:
        raise SystemExit(f"more than {MAX_REQUESTS} HTTP requests: a poller ran away")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


class Poller:
    """Polls in a background thread (20 ms steps) from ``start()`` until the first 200."""

    def __init__(self, port: int, host: str, t0: float, limit: float = 30.0) -> None:
        self.port, self.host, self.t0, self.limit = port, host, t0, limit
        self.first_200: float | None = None
        self.slowest = 0.0  # the longest single request: ~1 s means a dropped SYN
        self.attempts = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while mono() - self.t0 < self.limit:
            self.attempts += 1
            start = mono()
            status = http_status(self.port, self.host)
            self.slowest = max(self.slowest, mono() - start)
            if status == 200:
                self.first_200 = mono() - self.t0
                return
            time.sleep(POLL_STEP)

    def wait(self) -> float:
        self._thread.join()
        if self.first_200 is None:
            raise SystemExit(f"no 200 from {self.host} on :{self.port} within {self.limit:g} s")
        return self.first_200


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(x: float) -> str:
    return f"{x * 1000:8.0f} ms"


def rss_kb(pid: int) -> int:
    """VmRSS of pid and all its descendants, in kB (0 once gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in pathlib.Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(FileNotFoundError):
            for task in pathlib.Path(f"/proc/{p}/task").iterdir():
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def busy_elsewhere() -> list[str]:
    """Other processes that drive Docker through this project (they share the proxy)."""
    me = {os.getpid(), os.getppid()}
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if "pytest" in text or ("reconcile" in text and " apply" in text) or "harbormaster" in text:
            found.append(f"{entry.name}: {text[:120]}")
    return found


# ----------------------------------------------------------------------------- the host


@dataclass
class Bench:
    tmp: pathlib.Path
    state: pathlib.Path
    port: int  # the proxy's published port
    docker: Any
    shim_log: pathlib.Path
    shim_dir: pathlib.Path
    proxy_existed: bool
    network_existed: bool
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    apply_extra: list[str] = field(default_factory=list)  # e.g. --parallel N, when supported

    def argv(self, *args: str) -> list[str]:
        """``reconcile ARGS``, with the apply options of this run after ``apply``."""
        if args and args[0] == "apply":
            return [RECONCILE, "apply", *self.apply_extra, *args[1:]]
        return [RECONCILE, *args]

    def reconcile(
        self, *args: str, path_env: bool = False, check: bool = True
    ) -> tuple[float, dict[str, Any]]:
        env = dict(self.env)
        if path_env:
            env["PATH"] = f"{self.shim_dir}:{env['PATH']}"
        t0 = mono()
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env, check=False)
        dt = mono() - t0
        if check and r.returncode != 0:
            raise SystemExit(
                f"reconcile {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
            )
        return dt, json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}

    def proxy_id(self) -> str | None:
        import docker.errors

        try:
            return str(self.docker.containers.get(PROXY_CONTAINER).id)
        except docker.errors.NotFound:
            return None

    def shim_calls(self) -> list[str]:
        return self.shim_log.read_text().splitlines() if self.shim_log.exists() else []


def app_compose(networks: str = PROXY_NETWORK, rev: int | None = None, health: bool = False) -> str:
    extra = (CHANGE.format(rev=rev) if rev is not None else "") + (HEALTHCHECK if health else "")
    return APP_COMPOSE.replace("{networks}", networks).replace("{extra}", extra)


def write_repo(
    root: pathlib.Path,
    port: int,
    names: list[str],
    networks: str = PROXY_NETWORK,
    healthy: frozenset[str] = frozenset(),
) -> None:
    """The repository of ``names``; those in ``healthy`` carry a healthcheck."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "deployments").mkdir(parents=True)
    (root / "reconcile.yaml").write_text(
        f"namespace: {NAMESPACE}\nbase_domain: localhost\nproxy:\n  http_port: {port}\n  tls: off\n"
    )
    for name in names:
        d = root / "deployments" / name
        d.mkdir()
        (d / "compose.yaml").write_text(app_compose(networks, health=name in healthy))
        (d / "deployment.yaml").write_text(
            f"name: {name}\ncompose: ./compose.yaml\ndomain: {domain(name)}\n"
            "routes:\n  - upstream: '{deployment_id}-app:80'\n"
        )


def change_app(repo: pathlib.Path, name: str, rev: int, healthy: bool = False) -> None:
    """The one-app change: a new env value in one app's compose file."""
    (repo / "deployments" / name / "compose.yaml").write_text(app_compose(rev=rev, health=healthy))


def domain(name: str) -> str:
    return f"{name}.{NAMESPACE}.localhost"


def actions(doc: dict[str, Any]) -> dict[str, str]:
    return {a["deployment"]: a["action"] for a in doc.get("plan", {}).get("actions", [])}


def ids(doc: dict[str, Any]) -> dict[str, str]:
    return {a["deployment"]: a["id"] for a in doc.get("plan", {}).get("actions", [])}


def retried(what: str, bench: Bench, fn: Callable[[], Any], tries: int = 3) -> Any:
    """Run a measurement again when the shared proxy container changed under it."""
    for attempt in range(tries):
        before = bench.proxy_id()
        value = fn()
        if bench.proxy_id() == before:
            return value
        bench.notes.append(f"{what}: the proxy container changed during run {attempt + 1}; retried")
    raise SystemExit(f"{what}: another process keeps replacing {PROXY_CONTAINER}; run it alone")


# ----------------------------------------------------------------------------- 1. install


def bench_install(b: Bench, runs: int) -> dict[str, Any]:
    floor_dir = b.tmp / "floor"
    floor_dir.mkdir()
    fport = free_port()
    (floor_dir / "compose.yaml").write_text(
        FLOOR_COMPOSE.format(image=IMAGE, httpd=HTTPD, ns=NAMESPACE, port=fport)
    )
    project = ["docker", "compose", "-p", f"{NAMESPACE}-floor"]

    def floor_once(early: bool) -> tuple[float, float, float]:
        t0 = mono()
        proc = subprocess.Popen(
            [*project, "up", "-d"], cwd=floor_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        poller = Poller(fport, "localhost", t0)
        if early:
            poller.start()
        proc.wait()
        returned = mono() - t0
        if proc.returncode != 0:
            raise SystemExit(f"compose up failed: {proc.stderr.read() if proc.stderr else ''}")
        if not early:
            poller.start()
        first = poller.wait()
        sh([*project, "down", "-t", "0"], cwd=floor_dir)
        return first, returned, poller.slowest

    out: dict[str, Any] = {}
    for label, early in (("A2", False), ("A", True)):
        floor_once(early)  # warm-up
        got = [floor_once(early) for _ in range(runs)]
        out[f"floor_{label}"] = [g[0] for g in got]
        out[f"floor_{label}_up_returned"] = [g[1] for g in got]
        out[f"floor_{label}_stalls"] = sum(g[2] > STALL for g in got)

    repo = b.tmp / "repo-one"
    name = "install"
    host = domain(name)

    def ours_once() -> tuple[float, float, dict[str, Any], float]:
        write_repo(repo, b.port, [name], networks=f"default, {PROXY_NETWORK}")
        t0 = mono()
        poller = Poller(b.port, host, t0, limit=60).start()
        proc = subprocess.Popen(
            b.argv("apply", str(repo), "--yes", "-f", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=b.env,
        )
        stdout, stderr = proc.communicate()
        done = mono() - t0
        if proc.returncode != 0:
            raise SystemExit(f"install failed ({proc.returncode}):\n{stdout}\n{stderr}")
        first = poller.wait()
        doc = json.loads(stdout)
        if actions(doc) != {name: "install"} or not all(r["ok"] for r in doc["results"]):
            raise SystemExit(f"unexpected install result: {doc['results']}")
        # Uninstall (the product's own path) so the next run installs afresh.
        write_repo(repo, b.port, [])
        b.reconcile("apply", str(repo), "--yes", "--purge", "--allow-mass-prune", "-f", "json")
        return first, done, doc, poller.slowest

    cold = ours_once()  # warm-up; creates the proxy when none runs
    out["cold_first_200"], out["cold_exit"] = cold[0], cold[1]
    out["proxy_created"] = not b.proxy_existed
    got = [retried("install", b, ours_once) for _ in range(runs)]
    out["ours_first_200"] = [g[0] for g in got]
    out["ours_exit"] = [g[1] for g in got]
    out["ours_inner_seconds"] = [g[2]["seconds"] for g in got]
    out["ours_stalls"] = sum(g[3] > STALL for g in got)
    return out


# ----------------------------------------------------------------------------- 2. no-op


def bench_noop(b: Bench, repo: pathlib.Path, names: list[str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # The first deploy of all of them, with the default gate: figure A of the ratios.
    loads = proxy_loads(b)
    t, steps = first_deploy(b, repo, names)
    out["setup_install_all"] = t
    out["first_deploy_steps"] = steps
    out["first_deploy_loads"] = proxy_loads(b) - loads
    print(
        f"(first deploy of {len(names)}: {t:.1f} s, {out['first_deploy_loads']} POST /load; "
        f"load average {os.getloadavg()[0]:.2f})",
        flush=True,
    )
    _t, doc = b.reconcile("apply", str(repo), "--yes", "-f", "json")
    if set(actions(doc).values()) != {"noop"}:
        raise SystemExit(f"the apply after the first deploy was not a no-op: {actions(doc)}")
    out["ids"] = ids(doc)
    for n in names:
        if http_status(b.port, domain(n)) != 200:
            raise SystemExit(f"{n} does not answer 200 through the proxy after the install")

    def noop_process() -> float:
        dt, d = b.reconcile("apply", str(repo), "--yes", "-f", "json", path_env=True)
        if d.get("results") != [] or set(actions(d).values()) != {"noop"}:
            raise SystemExit(f"the no-op apply did something: {d.get('results')}")
        return dt

    b.shim_log.unlink(missing_ok=True)
    noop_process()  # warm-up (page cache, .pyc)
    out["process"] = [retried("no-op", b, noop_process) for _ in range(runs)]
    out["process_calls"] = b.shim_calls()

    # In process: reconcile_once with the same options the CLI builds.
    from reconciler.cli.apply import ApplyFormat, _Options, reconcile_once

    opts = _Options(
        path=str(repo),
        ref=None,
        subpath=None,
        yes=True,
        prune=None,
        purge=False,
        allow_mass_prune=False,
        settle=2.0,
        parallel=int(b.apply_extra[1]) if b.apply_extra else None,
        state_dir=b.state,
        fmt=ApplyFormat.json,
        catalog=None,
    )
    saved_path = os.environ["PATH"]
    os.environ["PATH"] = f"{b.shim_dir}:{saved_path}"
    b.shim_log.unlink(missing_ok=True)
    try:

        def once() -> float:
            buf = io.StringIO()
            t0 = mono()
            with contextlib.redirect_stdout(buf):
                ok = reconcile_once(opts, interactive=False)
            dt = mono() - t0
            d = json.loads(buf.getvalue())
            if not ok or d["results"] != []:
                raise SystemExit(f"in-process no-op did something: {d['results']}")
            return dt

        out["first_in_process"] = once()  # includes the lazy imports
        out["in_process"] = [retried("no-op in process", b, once) for _ in range(runs)]
    finally:
        os.environ["PATH"] = saved_path
    out["in_process_calls"] = b.shim_calls()

    # Floors, same host, same moment.
    py = [sys.executable, "-c", "pass"]
    sh(py)
    out["floor_python"] = [timed(py) for _ in range(runs)]
    probe = (
        "import docker; c = docker.from_env(); "
        "c.api.containers(all=True, filters={'label': 'io.reconciler.deployment'}); c.close()"
    )
    sh([sys.executable, "-c", probe])
    out["floor_python_sdk_list"] = [timed([sys.executable, "-c", probe]) for _ in range(runs)]
    validate = [RECONCILE, "validate", str(repo), "-f", "json"]
    sh(validate, check=False)  # warnings (no healthcheck) exit non-zero
    out["floor_validate"] = [timed(validate, check=False) for _ in range(runs)]
    api = b.docker.api
    api.containers(all=True, filters={"label": "io.reconciler.deployment"})
    lists = []
    for _ in range(runs * 4):
        t0 = mono()
        api.containers(all=True, filters={"label": "io.reconciler.deployment"})
        lists.append(mono() - t0)
    out["floor_sdk_list"] = lists
    dpl = list(out["ids"].values())
    rounds = []
    for _ in range(2):
        t0 = mono()
        for i in dpl:
            sh(["docker", "compose", "-p", i, "ps", "-q"])
        rounds.append(mono() - t0)
    out["floor_compose_ps_all"] = rounds
    return out


def proxy_loads(b: Bench) -> int:
    """How many ``POST /load`` the proxy's admin API has received (Caddy logs each
    admin request): the route pushes, counted on the real proxy."""
    r = sh(["docker", "logs", PROXY_CONTAINER], check=False)
    text = r.stdout + r.stderr
    return sum('"uri":"/load"' in line and '"POST"' in line for line in text.splitlines())


def first_deploy(b: Bench, repo: pathlib.Path, names: list[str]) -> tuple[float, dict[str, Any]]:
    """The first deploy of ``names`` as a process with text output (plain lines: not a
    TTY), each step line timed as it arrives: where the time goes with the pool.  Per
    step: the seconds from its line to the app's next line, summed over the apps, and
    the most apps that were in that step at once."""
    env = {**b.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    t0 = mono()
    proc = subprocess.Popen(
        b.argv("apply", str(repo), "--yes"), stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    marks: dict[str, list[tuple[str, float]]] = {}
    for line in proc.stdout:
        m = STEP_LINE.match(line)
        if m and m["name"] in names:
            marks.setdefault(m["name"], []).append((m["step"], mono() - t0))
    proc.wait()
    total = mono() - t0
    if proc.returncode != 0:
        raise SystemExit(f"installing {len(names)} apps failed: rc {proc.returncode}")
    spans: dict[str, list[tuple[float, float]]] = {}
    for seq in marks.values():
        for (step, t), (_nxt, t2) in itertools.pairwise(seq):
            spans.setdefault(step, []).append((t, t2))
    steps: dict[str, Any] = {}
    for step, xs in spans.items():
        edges = sorted([(a, 1) for a, _ in xs] + [(z, -1) for _, z in xs])
        most = high = 0
        for _t, d in edges:
            high += d
            most = max(most, high)
        steps[step] = {"sum": sum(z - a for a, z in xs), "max": max(z - a for a, z in xs)}
        steps[step]["concurrent"] = most
    firsts = [seq[0][1] for seq in marks.values() if seq]
    lasts = [seq[-1][1] for seq in marks.values() if seq]
    steps["_first_step_at"] = min(firsts, default=0.0)
    steps["_last_done_at"] = max(lasts, default=0.0)
    return total, steps


# ----------------------------------------------------------------------------- 3. peer


def hm_setup(b: Bench, n: int) -> tuple[list[str], list[str], pathlib.Path]:
    hm = HM_VENV / "bin" / "harbormaster"
    if not hm.exists():
        t0 = mono()
        shutil.rmtree(HM_VENV, ignore_errors=True)
        sh([sys.executable, "-m", "venv", str(HM_VENV)])
        sh([str(HM_VENV / "bin" / "pip"), "install", "-q", f"docker-harbormaster=={HM_VERSION}"])
        b.notes.append(
            f"installed docker-harbormaster {HM_VERSION} into {HM_VENV} in {mono() - t0:.1f} s"
        )
    base = b.tmp / "hm"
    apps = [f"{NAMESPACE}-hm-{i:02d}" for i in range(n)]
    genv = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    for a in apps:
        d = base / "src" / a
        d.mkdir(parents=True)
        sh(["git", "init", "-q", "-b", "main"], cwd=d)
        (d / "compose.yaml").write_text(HM_COMPOSE)
        sh(["git", "add", "."], cwd=d)
        sh(["git", "commit", "-q", "-m", "init"], cwd=d, env=genv)
    cfg_src = base / "config-src"
    cfg_src.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=cfg_src)
    lines = ["apps:"]
    for a in apps:
        lines += [f"  {a}:", f"    url: file://{base / 'src' / a}", "    branch: main"]
    (cfg_src / "harbormaster.yml").write_text("\n".join(lines) + "\n")
    sh(["git", "add", "."], cwd=cfg_src)
    sh(["git", "commit", "-q", "-m", "config"], cwd=cfg_src, env=genv)
    sh(["git", "clone", "-q", f"file://{cfg_src}", str(base / "config")])
    (base / "workdir").mkdir()
    cmd = [
        str(hm),
        "run",
        "-c",
        str(base / "config" / "harbormaster.yml"),
        "-d",
        str(base / "workdir"),
    ]
    return apps, cmd, base


def bench_peer(
    b: Bench, repo: pathlib.Path, names: list[str], runs: int, changes: bool = True
) -> dict[str, Any]:
    """Harbormaster's first deploy, then no-ops and (``changes``) one-app changes paired
    with ours."""
    n = len(names)
    out: dict[str, Any] = {}
    apps, cmd, base = hm_setup(b, n)
    out["version"] = sh([cmd[0], "--version"]).stdout.strip()
    t0 = mono()
    r = sh(cmd)
    out["first_deploy"] = mono() - t0
    running = b.docker.api.containers(filters={"label": "com.docker.compose.project"})
    mine = [c for c in running if c["Labels"]["com.docker.compose.project"] in apps]
    if len(mine) != n:
        raise SystemExit(f"harbormaster started {len(mine)} of {n} apps:\n{r.stdout[-2000:]}")

    def hm_noop() -> float:
        t0 = mono()
        r = sh(cmd)
        dt = mono() - t0
        if r.stdout.count("App does not need to be started.") != n:
            raise SystemExit(f"unexpected harbormaster no-op output:\n{r.stdout[-2000:]}")
        return dt

    def ours() -> float:
        dt, d = b.reconcile("apply", str(repo), "--yes", "-f", "json")
        if d.get("results") != []:
            raise SystemExit(f"our no-op did something: {d.get('results')}")
        return dt

    hm_noop()
    ours()
    pairs = [(retried("no-op (paired)", b, ours), hm_noop()) for _ in range(runs)]
    out["ours"] = [p[0] for p in pairs]
    out["theirs"] = [p[1] for p in pairs]
    if not changes:
        return out

    genv = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
    genv |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}

    def hm_change(i: int) -> float:
        d = base / "src" / apps[(i * 7 + 1) % n]
        (d / "compose.yaml").write_text(HM_COMPOSE + CHANGE.format(rev=i))
        sh(["git", "commit", "-qam", f"rev {i}"], cwd=d, env=genv)
        t0 = mono()
        sh(cmd)
        return mono() - t0

    changes: list[tuple[float, float]] = []
    for i in range(runs):

        def change(i: int = i) -> float:
            return ours_change(b, repo, names, i)

        changes.append((retried("change (paired)", b, change), hm_change(i)))
    out["change_ours"] = [c[0] for c in changes]
    out["change_theirs"] = [c[1] for c in changes]
    return out


def ours_change(
    b: Bench, repo: pathlib.Path, names: list[str], i: int, healthy: bool = False
) -> float:
    """One-app change among ``names`` (an app chosen by ``i``; ``healthy``: app 0, the one
    with a healthcheck), as a process until it exits; checked: one update, ok."""
    name = names[0] if healthy else names[(i * 7 + 1) % (len(names) - 1) + 1]
    change_app(repo, name, rev=1000 + i, healthy=healthy)
    dt, d = b.reconcile("apply", str(repo), "--yes", "-f", "json")
    got = [(r["deployment"], r["action"], r["ok"]) for r in d.get("results", [])]
    if got != [(name, "update", True)]:
        raise SystemExit(f"the one-app change did not update {name} alone: {d.get('results')}")
    return dt


STEP_LINE = re.compile(r"^\s+(?P<name>[a-z0-9-]+): (?P<step>[a-z ]+?) ")


def change_breakdown(
    b: Bench, repo: pathlib.Path, name: str, rev: int, healthy: bool
) -> dict[str, float]:
    """Where a one-app change's time goes: each step line of the text output, timed as it
    arrives (unbuffered), from the moment the process is started."""
    change_app(repo, name, rev=rev, healthy=healthy)
    env = {**b.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    t0 = mono()
    proc = subprocess.Popen(
        b.argv("apply", str(repo), "--yes"), stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    marks: list[tuple[str, float]] = []
    for line in proc.stdout:
        m = STEP_LINE.match(line)
        if m and m["name"] == name:
            marks.append((m["step"], mono() - t0))
    proc.wait()
    total = mono() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the one-app change (text) failed: rc {proc.returncode}")
    at = dict(marks)
    phases: dict[str, float] = {}
    order = [("start", 0.0), *marks, ("exit", total)]
    for (step, t), (_nxt, t2) in itertools.pairwise(order):
        phases[step] = phases.get(step, 0.0) + (t2 - t)
    phases["total"] = total
    phases["settled_at"] = at.get("settled", 0.0) - at.get("settle", 0.0)
    return phases


# ----------------------------------------------------------------------------- 4 + 5. watch


class Watch:
    """``reconcile apply --watch``; counts finished passes from its JSON summaries."""

    def __init__(self, b: Bench, repo: pathlib.Path) -> None:
        self.proc = subprocess.Popen(
            b.argv("apply", str(repo), "--watch", "--yes", "-f", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=b.env,
            start_new_session=True,
        )
        self.passes: list[tuple[float, dict[str, Any]]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf: list[str] = []
        for line in self.proc.stdout:
            buf.append(line)
            if line.rstrip("\n") == "}":
                with contextlib.suppress(json.JSONDecodeError):
                    self.passes.append((mono(), json.loads("".join(buf))))
                buf = []

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_passes(self, count: int, timeout: float) -> None:
        deadline = mono() + timeout
        while len(self.passes) < count:
            if mono() > deadline or self.proc.poll() is not None:
                raise SystemExit(
                    f"--watch: {len(self.passes)} passes, wanted {count}; stderr:\n"
                    + "".join(self.stderr[-20:])
                )
            time.sleep(0.05)

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until no pass has ended for ``quiet`` seconds (and one ended since the call)."""
        start, seen = mono(), len(self.passes)
        while mono() - start < timeout:
            last = self.passes[-1][0] if self.passes else 0
            if len(self.passes) > seen and mono() - last >= quiet:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sample_rss(pid: int, seconds: float) -> tuple[int, list[int]]:
    samples = []
    end = mono() + seconds
    while mono() < end:
        samples.append(rss_kb(pid))
        time.sleep(0.1)
    return max(samples), descendants(pid)


def bench_watch(
    b: Bench, repo: pathlib.Path, names: list[str], dpl_ids: dict[str, str], drift_runs: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Floor: the same removal repaired by hand at once: `docker compose up -d` on the floor
    # project, polled after `up` returns.
    floor_dir = b.tmp / "floor"
    project = ["docker", "compose", "-p", f"{NAMESPACE}-floor"]
    sh([*project, "up", "-d"], cwd=floor_dir)
    fport = int((floor_dir / "compose.yaml").read_text().split('"127.0.0.1:')[1].split(":")[0])
    Poller(fport, "localhost", mono()).start().wait()
    floor = []
    for i in range(drift_runs + 1):
        cid = sh([*project, "ps", "-q"], cwd=floor_dir).stdout.strip()
        t0 = mono()
        sh(["docker", "rm", "-f", cid])
        sh([*project, "up", "-d"], cwd=floor_dir)
        first = Poller(fport, "localhost", t0).start().wait()
        if i:
            floor.append(first)
    out["floor_manual"] = floor
    sh([*project, "down", "-t", "0"], cwd=floor_dir)

    w = Watch(b, repo)
    try:
        t0 = mono()
        w.wait_passes(1, 60)
        out["first_pass"] = w.passes[0][0] - t0
        if w.passes[0][1].get("results") != []:
            raise SystemExit(f"--watch first pass did something: {w.passes[0][1]['results']}")
        time.sleep(0.5)
        out["rss_idle_kb"], out["children"] = sample_rss(w.proc.pid, 5.0)

        times, rm_times, repairs, stalls = [], [], [], 0
        for i in range(drift_runs):
            name = names[(i * 7 + 3) % len(names)]
            container = f"{dpl_ids[name]}-app"
            seen = len(w.passes)
            t0 = mono()
            sh(["docker", "rm", "-f", container])
            rm_times.append(mono() - t0)
            if http_status(b.port, domain(name)) == 200:
                b.notes.append(f"drift {i}: {name} still answered 200 right after rm -f")
            poller = Poller(b.port, domain(name), t0, limit=30).start()
            times.append(poller.wait())
            stalls += poller.slowest > STALL
            w.wait_passes(seen + 1, 60)
            w.wait_quiet(1.0, 20)
            done = [d for _, d in w.passes[seen:]]
            repairs.append(
                [(r["deployment"], r["action"], r["ok"]) for d in done for r in d["results"]]
            )
        out["drift"] = times
        out["rm"] = rm_times
        out["repairs"] = repairs
        out["stalls"] = stalls
        out["rss_after_kb"], _ = sample_rss(w.proc.pid, 2.0)
    finally:
        w.stop()
    return out


# ----------------------------------------------------------------------------- 6 + 7. many apps


def purge_all(b: Bench, repo: pathlib.Path) -> float:
    """Uninstall every bench deployment through the product (``--purge``): the next size
    starts from an empty host.  Returns the seconds it took."""
    write_repo(repo, b.port, [])
    dt, d = b.reconcile("apply", str(repo), "--yes", "--purge", "--allow-mass-prune", "-f", "json")
    if not all(r["ok"] for r in d.get("results", [])):
        raise SystemExit(f"purging the bench deployments failed: {d.get('results')}")
    return dt


def hm_down(b: Bench) -> None:
    """Stop harbormaster's apps (they are plain compose projects): the big sizes are ours."""
    api = b.docker.api
    for c in api.containers(all=True, filters={"label": "com.docker.compose.project"}):
        project = str(c["Labels"].get("com.docker.compose.project", ""))
        if project.startswith(f"{NAMESPACE}-hm-"):
            sh(["docker", "compose", "-p", project, "down", "-t", "0"], check=False)


def serving(b: Bench, names: list[str]) -> list[str]:
    """The names that do NOT answer 200 through the proxy."""
    return [n for n in names if http_status(b.port, domain(n)) != 200]


def bench_many(b: Bench, repo: pathlib.Path, names: list[str], runs: int) -> dict[str, Any]:
    """First deploy of ``names`` (from the apps already running in ``repo``, if any), then
    no-op and one-app change as processes, medians of ``runs``."""
    before = sorted(p.name for p in (repo / "deployments").iterdir()) if repo.exists() else []
    write_repo(repo, b.port, names)
    t, doc = b.reconcile("apply", str(repo), "--yes", "-f", "json", check=False)
    bad = [r for r in doc.get("results", []) if not r["ok"]]
    out: dict[str, Any] = {"first_deploy": t, "grown_from": len(before), "failed": bad[:5]}
    out["installed"] = sum(r["action"] == "install" for r in doc.get("results", []))
    out["not_serving"] = serving(b, names)
    if bad or out["not_serving"]:
        b.notes.append(
            f"{len(names)} apps: {len(bad)} failed ({bad[:2]}), "
            f"{len(out['not_serving'])} not serving ({out['not_serving'][:5]})"
        )

    def noop() -> float:
        dt, d = b.reconcile("apply", str(repo), "--yes", "-f", "json")
        if d.get("results") != []:
            raise SystemExit(f"the {len(names)}-app no-op did something: {d.get('results')}")
        return dt

    noop()
    out["noop"] = [noop() for _ in range(runs)]
    out["change"] = [ours_change(b, repo, names, 100 + i) for i in range(runs)]
    return out


def idle_agent_rss(b: Bench, seconds: float = 5.0) -> dict[str, Any]:
    """``reconcile-agent`` on the bench's state dir (all apps), connected to a real local
    control plane whose source is an empty repository (it plans nothing, prunes nothing):
    its resident memory once it has reported the host's state a few times."""
    from tests.e2e.cluster import Cluster, wait_for

    cluster = Cluster(b.tmp / "agent-cluster", namespace=f"{NAMESPACE}-agent")
    cluster.state_dir = b.state
    out: dict[str, Any] = {}
    try:
        cluster.start_server()
        cluster.start_agent(token=cluster.agent_token(), settle=2.0, repair_interval=30.0)
        agent = cluster.agent
        assert agent is not None
        log = cluster.logs / "agent.log"
        wait_for(lambda: agent.poll() is None and log.exists(), 30, "the agent")
        time.sleep(3 * cluster.heartbeat + 1)  # a few heartbeats with the full state
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited: {log.read_text()[-2000:]}")
        out["rss_kb"], out["children"] = sample_rss(agent.pid, seconds)
    finally:
        if cluster.agent is not None:
            cluster._stop(cluster.agent, signal.SIGTERM)
        cluster.stop_server()
        cluster.http.close()
    return out


def bench_200(b: Bench, repo: pathlib.Path, names: list[str], runs: int) -> dict[str, Any]:
    out = bench_many(b, repo, names, runs)
    w = Watch(b, repo)
    try:
        t0 = mono()
        w.wait_passes(1, 600)
        out["watch_first_pass"] = w.passes[0][0] - t0
        time.sleep(0.5)
        out["watch_rss_kb"], out["watch_children"] = sample_rss(w.proc.pid, 5.0)
    finally:
        w.stop()
    out["agent"] = idle_agent_rss(b)
    return out


def stale_bridges() -> list[str]:
    """Bridges with an address in ``OWN_SUBNETS`` and no port attached, other than
    ``OWN_BRIDGE``: left by a second dockerd that was killed (this range is the bench's
    alone, and none of its daemons runs yet when this is called)."""
    import ipaddress

    own = ipaddress.ip_network(OWN_SUBNETS)
    out = sh(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        name, addr = parts[1], parts[3]
        if name == OWN_BRIDGE or ipaddress.ip_interface(addr).ip not in own:
            continue
        brif = pathlib.Path(f"/sys/class/net/{name}/brif")
        if brif.is_dir() and not any(brif.iterdir()):
            found.append(name)
    return found


@contextlib.contextmanager
def own_dockerd(root: pathlib.Path, pool: str) -> Iterator[str]:
    """A second dockerd of our own (socket, data-root, exec-root and pidfile under ``root``,
    small address pools, no iptables, a default bridge of its own, so it cannot clash with
    the host's daemon), with the images copied in from the host's daemon; killed at the end.
    Yields its ``DOCKER_HOST``.  (Never ``--bridge none``: dockerd then deletes the host's
    ``docker0``, and the host daemon's default network with it.)

    With ``--iptables=false`` nothing lets traffic between its containers (the proxy to an
    app) through the host's FORWARD chain, whose policy the host's dockerd set to DROP
    (bridged packets pass iptables under ``br_netfilter``).  One rule in ``DOCKER-USER``,
    the chain Docker leaves to users, accepts exactly the pool's own traffic; it is
    deleted at the end."""
    root.mkdir(parents=True, exist_ok=True)
    rule = ["-s", OWN_SUBNETS, "-d", OWN_SUBNETS, "-j", "ACCEPT"]
    chain = (
        "DOCKER-USER"
        if sh(["iptables", "-S", "DOCKER-USER"], check=False).returncode == 0
        else "FORWARD"
    )
    sh(["iptables", "-I", chain, *rule])
    for stale in stale_bridges():
        print(f"(removed {stale}: a bridge a killed run left in {OWN_SUBNETS}, routes clash)")
        sh(["ip", "link", "delete", stale], check=False)
    for cmd in (
        ["ip", "link", "add", OWN_BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", OWN_BRIDGE_ADDRESS, "dev", OWN_BRIDGE],
        ["ip", "link", "set", OWN_BRIDGE, "up"],
    ):
        sh(cmd, check=False)  # left by a killed run: then already there
    sock = root / "docker.sock"
    host_url = f"unix://{sock}"
    # A config file of its own: the host's /etc/docker/daemon.json (where
    # scripts/setup.sh puts its address pools) would clash with --default-address-pool.
    config = root / "daemon.json"
    config.write_text("{}\n")
    log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        [
            "dockerd",
            "--config-file",
            str(config),
            "--host",
            host_url,
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "--bridge",
            OWN_BRIDGE,
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--default-address-pool",
            pool,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        env = {**os.environ, "DOCKER_HOST": host_url}
        deadline = mono() + 60
        while sh(["docker", "info"], check=False, env=env).returncode != 0:
            if proc.poll() is not None or mono() > deadline:
                raise SystemExit(f"the second dockerd did not start; see {root / 'dockerd.log'}")
            time.sleep(0.2)
        for image in (IMAGE, "caddy:2"):
            if sh(["docker", "image", "inspect", image], check=False, env=env).returncode:
                save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
                subprocess.run(
                    ["docker", "load", "-q"], stdin=save.stdout, env=env, check=True,
                    capture_output=True,
                )  # fmt: skip
                save.wait()
        # Every app joins the proxy network: one pool-sized subnet (/28: 13 addresses)
        # would stop the 14th app.  Made beforehand with room for all of them.
        # (This daemon is ours alone: a proxy network a past run left behind goes.)
        sh(["docker", "network", "rm", PROXY_NETWORK], check=False, env=env)
        sh(["docker", "network", "create", "--subnet", PROXY_SUBNET, PROXY_NETWORK], env=env)
        yield host_url
    finally:
        # dockerd leaves its networks' bridges behind when it stops: remove them first, or
        # the next run's proxy network (same subnet) is routed to a dead bridge.
        env = {**os.environ, "DOCKER_HOST": host_url}
        for c in sh(["docker", "ps", "-aq"], check=False, env=env).stdout.split():
            sh(["docker", "rm", "-f", c], check=False, env=env)
        sh(["docker", "network", "prune", "-f"], check=False, env=env)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sh(["iptables", "-D", chain, *rule], check=False)
        sh(["ip", "link", "delete", OWN_BRIDGE], check=False)


# ----------------------------------------------------------------------------- set-up/clean


@contextlib.contextmanager
def host() -> Iterator[Bench]:
    import docker
    import docker.errors

    client = docker.from_env(timeout=60)
    try:
        client.ping()
    except Exception as exc:
        raise SystemExit(
            f"no Docker Engine answers ({exc}); run `bash scripts/setup.sh --docker`"
        ) from exc
    for image in (IMAGE, "caddy:2"):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SystemExit(
                f"image {image} missing; run `bash scripts/setup.sh --docker`"
            ) from None
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-apply-"))
    shim_dir = tmp / "bin"
    shim_dir.mkdir()
    shim_log = tmp / "docker-calls.log"
    real = shutil.which("docker")
    if real is None:
        raise SystemExit("no docker CLI on PATH")
    (shim_dir / "docker").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shim_log}\nexec {real} "$@"\n'
    )
    (shim_dir / "docker").chmod(0o755)
    try:
        client.networks.get(PROXY_NETWORK)
        network_existed = True
    except docker.errors.NotFound:
        network_existed = False
    b = Bench(
        tmp=tmp,
        state=tmp / "state",
        port=free_port(),
        docker=client,
        shim_log=shim_log,
        shim_dir=shim_dir,
        proxy_existed=False,
        network_existed=network_existed,
        env={**os.environ, "RECONCILE_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1"},
    )
    b.proxy_existed = b.proxy_id() is not None
    try:
        yield b
    finally:
        cleanup(b)


def cleanup(b: Bench) -> None:
    import docker.errors

    api = b.docker.api
    gone = 0
    projects: set[str] = set()
    for c in api.containers(all=True, filters={"label": f"io.reconciler.namespace={NAMESPACE}"}):
        projects.add(c["Labels"].get("com.docker.compose.project", ""))
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(c["Id"], force=True, v=True)
            gone += 1
    for c in api.containers(all=True, filters={"label": "com.docker.compose.project"}):
        if str(c["Labels"].get("com.docker.compose.project.working_dir", "")).startswith(
            str(b.tmp)
        ):
            projects.add(c["Labels"]["com.docker.compose.project"])
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(c["Id"], force=True, v=True)
                gone += 1
    for net in api.networks(filters={"label": "com.docker.compose.project"}):
        if net["Labels"].get("com.docker.compose.project") in projects - {""}:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(net["Id"])
    try:
        proxy = b.docker.containers.get(PROXY_CONTAINER)
        ours = any(
            str(m.get("Source", "")).startswith(str(b.tmp)) for m in proxy.attrs.get("Mounts", [])
        )
        if ours:
            proxy.remove(force=True)
            gone += 1
    except docker.errors.NotFound:
        pass
    if not b.network_existed:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            b.docker.networks.get(PROXY_NETWORK).remove()
    shutil.rmtree(b.tmp, ignore_errors=True)
    print(f"cleanup: removed {gone} containers, {len(projects - {''})} compose projects, {b.tmp}")


# ----------------------------------------------------------------------------- report


def row(label: str, xs: list[float] | float) -> str:
    vals = xs if isinstance(xs, list) else [xs]
    spread = f"(min {min(vals) * 1000:.0f}, max {max(vals) * 1000:.0f})" if len(vals) > 1 else ""
    return f"  {label:58} {ms(med(vals))}  {spread}".rstrip()


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report_install(inst: dict[str, Any]) -> None:
    a2, a = med(inst["floor_A2"]), med(inst["floor_A"])
    first = med(inst["ours_first_200"])
    cold = "created" if inst["proxy_created"] else "already up"
    print("\n1. install of one busybox compose app to the first 200")
    print(row("reconcile apply --yes: first 200 through the proxy", inst["ours_first_200"]))
    print(row(f"  (the first, cold run: proxy container {cold})", inst["cold_first_200"]))
    print(row("floor A2: compose up -d, 200 polled after up returned", inst["floor_A2"]))
    print(row("  (compose up -d returned)", inst["floor_A2_up_returned"]))
    print(row("floor A: compose up -d, 200 polled from invocation", inst["floor_A"]))
    print(row("reconcile apply --yes: until it exits (settle gate incl.)", inst["ours_exit"]))
    print(row("  (its own 'seconds' in the JSON summary)", inst["ours_inner_seconds"]))
    print(
        f"  overhead to the first 200 vs floor A2: {first - a2:+.3f} s "
        f"(goal <= 1.5 s: {verdict(first - a2 <= 1.5)}); ratio {first / a2:.2f}x; "
        f"vs floor A: {first - a:+.3f} s"
    )
    print(
        f"  runs whose first 200 waited on a stalled request (> {STALL:g} s, a SYN dropped while "
        f"the new container's port was not yet forwarding): ours {inst['ours_stalls']}/"
        f"{len(inst['ours_first_200'])}, floor A {inst['floor_A_stalls']}/{len(inst['floor_A'])}, "
        f"floor A2 {inst['floor_A2_stalls']}/{len(inst['floor_A2'])}"
    )


def report_noop(noop: dict[str, Any], apps: int, runs: int) -> None:
    p, ip = med(noop["process"]), med(noop["in_process"])
    compose_p = [c for c in noop["process_calls"] if c.startswith("compose")]
    compose_ip = [c for c in noop["in_process_calls"] if c.startswith("compose")]
    print(f"\n2. no-op reconcile of {apps} running deployments")
    print(
        f"  (set-up: the first apply of the {apps} apps, default gate: "
        f"{noop['setup_install_all']:.1f} s)"
    )
    print(row("reconcile apply --yes (process, end to end)", noop["process"]))
    print(row("reconcile_once (in process)", noop["in_process"]))
    print(row("  (the first in-process call, lazy imports incl.)", noop["first_in_process"]))
    print(row("floor: python -c pass (interpreter start)", noop["floor_python"]))
    print(row("floor: python process, docker SDK, one sparse list", noop["floor_python_sdk_list"]))
    print(
        row(
            "floor: reconcile validate (CLI start + load, no Docker)",
            noop["floor_validate"],
        )
    )
    print(row("floor: one sparse label-filtered list (in process)", noop["floor_sdk_list"]))
    print(
        row(
            f"floor: docker compose -p ID ps -q x{apps} (the compose way)",
            noop["floor_compose_ps_all"],
        )
    )
    print(
        f"  docker CLI calls in {runs + 1} process no-ops: {len(noop['process_calls'])} "
        f"({len(compose_p)} compose); in {runs + 1} in-process no-ops: "
        f"{len(noop['in_process_calls'])} ({len(compose_ip)} compose)"
    )
    print(
        f"  goal <= 0.3 s and 0 compose subprocesses: process {p:.3f} s -> "
        f"{verdict(p <= 0.3 and not compose_p)}; in process {ip:.3f} s -> "
        f"{verdict(ip <= 0.3 and not compose_ip)}"
    )


def report_peer(peer: dict[str, Any], noop: dict[str, Any], apps: int) -> None:
    ours, theirs, ip = med(peer["ours"]), med(peer["theirs"]), med(noop["in_process"])
    print(
        f"\n3. the same {apps} apps under docker-harbormaster ({peer['version']}), "
        "same run, runs paired"
    )
    first, hm_first = noop["setup_install_all"], peer["first_deploy"]
    print(row(f"first deploy of {apps}: reconcile apply --yes (default gate)", first))
    print(row(f"first deploy of {apps}: harbormaster run", hm_first))
    steps = noop["first_deploy_steps"]
    print(
        f"  ours: first step line at {steps['_first_step_at']:.2f} s, last app done at "
        f"{steps['_last_done_at']:.2f} s; {noop['first_deploy_loads']} POST /load"
    )
    print("  ours, per step (s summed over the apps / longest / most at once):")
    for step, v in steps.items():
        if not step.startswith("_"):
            print(f"    {step:12} {v['sum']:7.2f} {v['max']:6.2f} {v['concurrent']:3d}")
    print(
        f"  ours / harbormaster: {first / hm_first:.2f}x (goal <= 1: {verdict(first <= hm_first)})"
    )
    if "change_ours" in peer:
        c, hc = med(peer["change_ours"]), med(peer["change_theirs"])
        print(row("one-app change: reconcile apply --yes (process)", peer["change_ours"]))
        print(row("one-app change: harbormaster run (process, no gate)", peer["change_theirs"]))
        print(
            f"  ours / harbormaster: {c / hc:.2f}x (goal <= 1: {verdict(c <= hc)}; "
            f"then <= 0.5: {verdict(c <= hc / 2)})"
        )
    print(row("no-op: reconcile apply --yes (process)", peer["ours"]))
    print(row("no-op: harbormaster run (process)", peer["theirs"]))
    print(row("  (ours in process, from 2.)", noop["in_process"]))
    print(
        f"  harbormaster / ours: process {theirs / ours:.1f}x "
        f"(goal >= 10x: {verdict(theirs / ours >= 10)}); in process {theirs / ip:.1f}x "
        f"({verdict(theirs / ip >= 10)})"
    )


def report_breakdown(parts: dict[str, dict[str, float]]) -> None:
    print("\n3b. where a one-app change's time goes (one run each, text output timed per line)")
    for label, ph in parts.items():
        steps = ", ".join(
            f"{k} {v * 1000:.0f}" for k, v in ph.items() if k not in ("total", "settled_at")
        )
        print(
            f"  {label}: total {ph['total'] * 1000:.0f} ms; gate {ph['settled_at'] * 1000:.0f} ms"
        )
        print(f"    ms from each step's line to the next: {steps}")


def report_many(size: int, many: dict[str, Any], base: dict[str, float] | None) -> None:
    grown = f" (grown from {many['grown_from']})" if many["grown_from"] else ""
    print(f"\n6. {size} apps on one host{grown}")
    figures = {
        "first_deploy": many["first_deploy"],
        "noop": med(many["noop"]),
        "change": med(many["change"]),
    }
    labels = {
        "first_deploy": f"first deploy ({many['installed']} installs)",
        "noop": "no-op (process)",
        "change": "one-app change (process)",
    }
    for key, value in figures.items():
        ratio = ""
        if base is not None:
            ratio = f"  x{value / base[key]:.2f} the 20-app figure"
        print(f"  {labels[key]:58} {ms(value)}{ratio}")
    if base is not None:
        grow = figures["noop"] / base["noop"]
        print(
            f"  no-op grows x{grow:.2f} for x{size / 20:g} the apps "
            f"(goal: less than linear: {verdict(grow < size / 20)})"
        )
    print(f"  not serving through the proxy: {len(many['not_serving'])}; failed: {many['failed']}")


def report_200(big: dict[str, Any], size: int) -> None:
    w, a = big["watch_rss_kb"] / 1024, big["agent"]["rss_kb"] / 1024
    ok = not big["not_serving"] and not big["failed"]
    print(f"\n7. {size} deployments on one host, all serving through the proxy: {verdict(ok)}")
    print(f"  reconcile apply --watch: first pass {big['watch_first_pass']:.2f} s")
    print(f"  idle RSS, max over 5 s: apply --watch {w:5.1f} MB ({verdict(w <= 80)} <= 80 MB)")
    print(f"  idle RSS, max over 5 s: reconcile-agent {a:5.1f} MB ({verdict(a <= 80)} <= 80 MB)")


def report_watch(watch: dict[str, Any], drift_runs: int) -> None:
    d = med(watch["drift"])
    print(
        f"\n4. drift repair under --watch: docker rm -f of one app container -> 200 again "
        f"({drift_runs} runs)"
    )
    print(row("reconcile apply --watch: rm -f -> 200 through the proxy", watch["drift"]))
    print(row("  (docker rm -f itself)", watch["rm"]))
    print(row("floor: rm -f, then compose up -d by hand at once -> 200", watch["floor_manual"]))
    print(f"  repairs seen: {watch['repairs']}; runs with a stalled request: {watch['stalls']}")
    print(f"  goal <= 5 s: {verdict(d <= 5)}; {d / med(watch['floor_manual']):.1f}x the floor")
    idle, after = watch["rss_idle_kb"] / 1024, watch["rss_after_kb"] / 1024
    print("\n5. resident memory of reconcile apply --watch")
    print(f"  first pass took {watch['first_pass']:.2f} s; children: {watch['children'] or 'none'}")
    print(
        f"  idle after the first pass, max VmRSS over 5 s: {idle:5.1f} MB "
        f"(goal <= 60 MB: {verdict(idle <= 60)})"
    )
    print(
        f"  idle after the drift repairs, max over 2 s:    {after:5.1f} MB ({verdict(after <= 60)})"
    )


def parallel_supported() -> bool:
    """Whether this ``reconcile apply`` takes ``--parallel N`` (the parallel executor)."""
    r = sh([RECONCILE, "apply", "--help"], check=False, env={**os.environ, "COLUMNS": "300"})
    return "--parallel" in r.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--apps", type=int, default=20, help="the base size, against the peer")
    parser.add_argument(
        "--sizes",
        default="20,100,200",
        help="which sizes to run, comma-separated, of 20 (the base, with the peer), 100 and "
        "200; e.g. --sizes 20 for a quick run",
    )
    parser.add_argument("--drift-runs", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["noop"],
        default=None,
        help="noop: only the 20 apps' first deploy and the no-op, ours and harbormaster's "
        "(2. and 3. without the one-app changes; --sizes is ignored)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="the pool of apply's parallel executor (default: apply's own default)",
    )
    parser.add_argument(
        "--docker-host", default=None, help="DOCKER_HOST for everything this run starts"
    )
    parser.add_argument(
        "--own-dockerd",
        type=pathlib.Path,
        default=None,
        metavar="DIR",
        help="start a second dockerd of our own under DIR (small address pools), load the "
        "images into it, run everything against it, and kill it at the end",
    )
    parser.add_argument(
        "--address-pool",
        default="base=10.201.0.0/16,size=28",
        help="the second dockerd's default-address-pools (inside 10.200.0.0/14)",
    )
    parser.add_argument(
        "--wait", type=float, default=60, help="seconds to wait for other pytest runs to end"
    )
    args = parser.parse_args()
    sizes = {20} if args.only == "noop" else {int(x) for x in args.sizes.split(",") if x.strip()}
    if not sizes <= {20, 100, 200}:
        parser.error(f"--sizes takes 20, 100 and 200, not {sorted(sizes - {20, 100, 200})}")
    started = mono()
    with contextlib.ExitStack() as stack:
        if args.own_dockerd is not None:
            os.environ["DOCKER_HOST"] = stack.enter_context(
                own_dockerd(args.own_dockerd, args.address_pool)
            )
        elif args.docker_host:
            os.environ["DOCKER_HOST"] = args.docker_host
        else:
            others = busy_elsewhere()
            while others and mono() - started < args.wait:
                time.sleep(2)
                others = busy_elsewhere()
            if others:
                print(f"WARNING: after waiting {args.wait:g} s, other processes may still drive")
                print("Docker and the shared proxy (and load the CPUs):")
                for o in others[:5]:
                    print("   ", o)
            elif mono() - started > 1:
                print(f"(waited {mono() - started:.0f} s for other Docker/pytest processes to end)")
        run(args, sizes, started)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"HTTP requests sent: {_requests}; total {mono() - started:.0f} s; load average {load}")


def run(args: argparse.Namespace, sizes: set[int], started: float) -> None:
    names = [f"app-{i:02d}" for i in range(args.apps)]
    with host() as b:
        fmt = "{{.Client.Version}} / engine {{.Server.Version}}"
        dv = sh(["docker", "version", "--format", fmt]).stdout.strip()
        cv = sh(["docker", "compose", "version", "--short"]).stdout.strip()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if parallel_supported():
            # The parallel executor is the default path: its pool as given, else the
            # apply's own default, named in the header.
            from agent.executor import default_parallel

            b.apply_extra = ["--parallel", str(args.parallel or default_parallel())]
        elif args.parallel is not None:
            b.notes.append(f"--parallel {args.parallel}: this apply has no --parallel; ignored")
        print(
            f"docker {dv} ({os.environ.get('DOCKER_HOST') or 'the default socket'}), "
            f"compose {cv}, python {sys.version.split()[0]}, {os.cpu_count()} cpus,"
            f" load average {load}; medians of {args.runs} runs after a warm-up; "
            f"apply {' '.join(b.apply_extra) or '(sequential)'}"
        )
        print(
            f"proxy {PROXY_CONTAINER} on 127.0.0.1:{b.port}: "
            f"{'already ran' if b.proxy_existed else 'created by this run'}"
        )
        base: dict[str, float] | None = None
        repo = b.tmp / "repo"
        if args.only == "noop":
            write_repo(repo, b.port, names, healthy=frozenset(names[:1]))
            noop = bench_noop(b, repo, names, args.runs)
            peer = bench_peer(b, repo, names, args.runs, changes=False)
            report_noop(noop, args.apps, args.runs)
            report_peer(peer, noop, args.apps)
            hm_down(b)
            sizes = set()
        if 20 in sizes:
            inst = bench_install(b, args.runs)
            healthy = frozenset(names[:1])  # app 0 has a healthcheck: the gate's other path
            write_repo(repo, b.port, names, healthy=healthy)
            noop = bench_noop(b, repo, names, args.runs)
            peer = bench_peer(b, repo, names, args.runs)
            parts = {
                "no healthcheck (settled by the window)": change_breakdown(
                    b, repo, names[3], 1, healthy=False
                ),
                "with a healthcheck (settled once healthy)": change_breakdown(
                    b, repo, names[0], 2, healthy=True
                ),
            }
            healthy_change = [ours_change(b, repo, names, 10 + i, True) for i in range(args.runs)]
            watch = bench_watch(b, repo, names, noop["ids"], args.drift_runs)
            report_install(inst)
            report_noop(noop, args.apps, args.runs)
            report_peer(peer, noop, args.apps)
            print(row("one-app change, the app with a healthcheck (process)", healthy_change))
            report_breakdown(parts)
            report_watch(watch, args.drift_runs)
            base = {
                "first_deploy": noop["setup_install_all"],
                "noop": med(peer["ours"]),
                "change": med(peer["change_ours"]),
            }
            hm_down(b)
            if sizes & {100, 200}:
                print(f"  (purged the {args.apps} apps in {purge_all(b, repo):.1f} s)")
        if 100 in sizes:
            many = bench_many(b, repo, [f"app-{i:03d}" for i in range(100)], args.runs)
            report_many(100, many, base)
        if 200 in sizes:
            big = bench_200(b, repo, [f"app-{i:03d}" for i in range(200)], args.runs)
            report_many(200, big, base)
            report_200(big, 200)
        for n in b.notes:
            print("note:", n)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
