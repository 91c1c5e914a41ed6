"""Benchmark: signed GitHub push deliveries against a real server process, beside a floor.

Run: ``.venv/bin/python benchmarks/webhooks.py [--deliveries 3000] [--seconds 20]
[--concurrency 8] [--runs 3] [--target auto|serve|standin]``

Loopback only.  Each run sends ``--deliveries`` (at most ``--seconds``) push events to
``POST /hooks/github``, each with its own ``X-GitHub-Delivery`` and a valid
``X-Hub-Signature-256`` (signed before the clock starts), after 100 warm-up deliveries.
The load comes from ``wrk`` (Debian's ``wrk``; ``scripts/setup.sh --dev`` installs it)
with ``--concurrency`` connections on one thread, for ``--seconds``, each request with a
fresh delivery id (a Lua counter) over one signed body; a C client leaves the second
core to the server.  ``--client httpx`` (or no ``wrk`` on PATH) drives ``--deliveries``
from asyncio workers sharing one httpx pool instead: on two cores that Python client
costs about as much CPU as the server, so its figures are the client's as much as the
server's.  Targets:

* ``standin`` (always, to attribute the cost): uvicorn serving only ``webhook_router``
  with an SQLite stand-in of the store (same pragmas: WAL, ``synchronous=FULL`` unless
  ``--standin-synchronous``; one commit per delivery id and one per event) and a
  coalescing worker thread whose "reconcile" sleeps 50 ms;
* ``serve`` (when ``reconcile serve`` exists): ``python -m reconciler serve`` on a temp
  data dir, a local directory as the source, ``RECONCILE_WEBHOOK_SECRET`` in its env:
  the store (SQLite, WAL, ``synchronous=FULL``) remembers every delivery id and records
  every event, the worker coalesces the triggers and runs real reconciles of an empty
  repository.

Floor, measured in the same run with the same client and bodies: uvicorn serving one
endpoint that reads the body and answers 202 with no verification, no store, no worker.
Prints req/s and p50/p95/p99 latency per target (medians over ``--runs``), the ratios
to the floor, the server process's CPU per delivery (from ``/proc``, all threads, the
worker's reconciles included: it holds up on a busy machine where wall-clock rates do
not) and the rate one idle core would sustain at that cost, and how many reconciles
the deliveries coalesced into (``/metrics``).
Goal (issue 6): >= 500 req/s with p99 < 50 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import pathlib
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "bench-webhook-secret"
WARMUP = 100

# -- the two apps uvicorn serves (``--app-dir benchmarks webhooks:…``) ---------------------


def floor_app() -> Any:
    """The floor: read the body, answer 202.  What any receiver costs at the least."""
    app = FastAPI()

    @app.post("/hooks/github")
    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"result": "accepted"}, status_code=202)

    return app


class _SqliteStandin:
    """The store's webhook-facing half, as the real one does it: WAL, FULL, a commit each."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (provider TEXT, id TEXT, time REAL,"
            " PRIMARY KEY (provider, id))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, time REAL, kind TEXT,"
            " fields TEXT)"
        )

    def remember_delivery(self, provider: str, delivery_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)",
                (provider, delivery_id, time.time()),
            )
            return cur.rowcount == 1

    def check_deploy_hook(self, token: str) -> str | None:
        return None

    def record_event(self, kind: str, fields: dict[str, object]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (time, kind, fields) VALUES (?, ?, ?)",
                (time.time(), kind, json.dumps(fields)),
            )


class _CoalescingWorker:
    """Single flight, one queued slot: a burst of triggers costs at most two runs."""

    def __init__(self, run_seconds: float) -> None:
        self.runs = 0
        self._pending = False
        self._cond = threading.Condition()
        self._run_seconds = run_seconds
        threading.Thread(target=self._loop, daemon=True).start()

    def trigger(self, reason: str) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._pending = False
            time.sleep(self._run_seconds)
            self.runs += 1


def standin_app() -> Any:
    """Only ``webhook_router``, over the SQLite stand-in and a coalescing worker."""
    from reconciler.server.hooks import HookDeps, HookSettings, webhook_router

    store = _SqliteStandin(os.environ["BENCH_DB"], os.environ.get("BENCH_SYNCHRONOUS", "FULL"))
    worker = _CoalescingWorker(0.05)
    counts: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def observe(provider: str, result: str) -> None:
        with lock:
            counts[provider, result] = counts.get((provider, result), 0) + 1

    app = FastAPI()
    deps = HookDeps(
        settings=HookSettings(webhook_secret=os.environ["RECONCILE_WEBHOOK_SECRET"].encode()),
        deliveries=store,
        deploy_hooks=store,
        trigger=worker.trigger,
        record_event=store.record_event,
        observe=observe,
    )
    app.include_router(webhook_router(deps))

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        lines = [f'reconcile_runs_total{{trigger="webhook"}} {worker.runs}']
        lines += [
            f'reconcile_webhook_deliveries_total{{provider="{p}",result="{r}"}} {n}'
            for (p, r), n in counts.items()
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    return app


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server(
    argv: list[str], port: int, env: dict[str, str], ready: str
) -> Iterator[tuple[str, int]]:
    import httpx

    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        argv,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + ready, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"server exited ({proc.returncode}): {err[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("server did not come up in 60 s")
            time.sleep(0.05)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads): robust to a busy machine."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uvicorn_argv(factory: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--app-dir",
        str(ROOT / "benchmarks"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def serve_argv(source: pathlib.Path, data: pathlib.Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reconciler",
        "serve",
        "--source",
        str(source),
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--poll-interval",
        "0",
        "--log-level",
        "warning",
    ]


# -- load --------------------------------------------------------------------------------


def push_body(i: int) -> bytes:
    sha = hashlib.sha1(str(i).encode()).hexdigest()  # a fake commit id
    payload = {
        "ref": "refs/heads/main",
        "before": "0" * 39 + "1",
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {"id": 1, "full_name": "bench/ops", "default_branch": "main"},
        "pusher": {"name": "bench", "email": "bench@example.test"},
        "commits": [
            {
                "id": sha,
                "message": f"deployments: change {i}",
                "timestamp": "2026-01-01T12:00:00+00:00",
                "author": {"name": "Bench", "email": "bench@example.test"},
                "added": [],
                "removed": [],
                "modified": ["deployments/api.yaml"],
            }
        ],
        "head_commit": {"id": sha, "message": f"deployments: change {i}"},
    }
    return json.dumps(payload).encode()


def signed_requests(start: int, n: int, tag: str) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i in range(start, start + n):
        body = push_body(i)
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        out.append(
            (
                body,
                {
                    "content-type": "application/json",
                    "x-github-event": "push",
                    "x-github-delivery": f"{tag}-{i:06d}",
                    "x-hub-signature-256": f"sha256={sig}",
                },
            )
        )
    return out


@dataclass
class Load:
    sent: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    cpu: float = 0.0  # the server process's CPU seconds during the timed load
    pcts: dict[float, float] | None = None  # from wrk, which keeps no per-request list

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def pct(self, q: float) -> float:
        if self.pcts is not None:
            return self.pcts[q]
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(
    base: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int, seconds: float
) -> Load:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(requests) and time.perf_counter() < deadline:
                body, headers = requests[next_index]
                next_index += 1
                t0 = time.perf_counter()
                r = await client.post("/hooks/github", content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Load(len(latencies), elapsed, latencies, statuses)


def drive(base: str, requests: list[tuple[bytes, dict[str, str]]], c: int, s: float) -> Load:
    return asyncio.run(_drive(base, requests, c, s))


WRK_SCRIPT = """
local body = %(body)s
local sig = %(sig)s
local tag = %(tag)s
local counter = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) codes = {} end
function request()
  counter = counter + 1
  return wrk.format("POST", "/hooks/github", {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = tag .. "-" .. counter,
    ["X-Hub-Signature-256"] = sig,
  }, body)
end
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %%d %%f %%f %%f %%f\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1e6, latency:percentile(95) / 1e6,
    latency:percentile(99) / 1e6))
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do io.write(string.format("CODE %%d %%d\\n", k, v)) end
  end
end
"""


def _lua(text: str) -> str:
    return "[==[" + text + "]==]"


def drive_wrk(base: str, body: bytes, tag: str, concurrency: int, seconds: float) -> Load:
    """One ``wrk`` run; its Lua ``done`` prints the totals, percentiles and status codes."""
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % {"body": _lua(body.decode()), "sig": _lua(sig), "tag": _lua(tag)})
        script = fh.name
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script, base],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(script)
    statuses: dict[int, int] = {}
    load: Load | None = None
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["RESULT"]:
            n, secs, p50, p95, p99 = int(parts[1]), *map(float, parts[2:])
            load = Load(n, secs, [], statuses, pcts={0.50: p50, 0.95: p95, 0.99: p99})
        elif parts[:1] == ["CODE"]:
            statuses[int(parts[1])] = int(parts[2])
    if load is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    return load


def scrape(base: str) -> tuple[float, float]:
    """(reconcile runs, accepted github deliveries) from ``/metrics``."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    runs = accepted = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+([0-9.e+]+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "reconcile_runs_total":
            runs += value
        elif name == "reconcile_webhook_deliveries_total" and 'result="accepted"' in labels:
            accepted += value
    return runs, accepted


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", choices=["auto", "serve", "standin"], default="auto")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="load generator (auto: wrk when on PATH)",
    )
    parser.add_argument(
        "--standin-synchronous",
        choices=["FULL", "NORMAL", "OFF"],
        default="FULL",
        help="the stand-in store's PRAGMA synchronous (FULL, as the real store)",
    )
    parser.add_argument(
        "--tmpdir",
        default=None,
        help="where the data dir goes (default: the system temp dir; /dev/shm takes fsync "
        "out of the figures)",
    )
    args = parser.parse_args()
    args.deliveries = min(args.deliveries, 20_000)
    args.seconds = min(args.seconds, 60.0)
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    if use_wrk and args.seconds >= 20.0:
        args.seconds = 10.0  # wrk runs for a time, not a count: 10 s is thousands of requests

    has_serve = importlib.util.find_spec("reconciler.server.app") is not None
    if args.target == "auto":
        targets = ["standin", "serve"] if has_serve else ["standin"]
    else:
        targets = [args.target]
    labels = ["floor", *targets]

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-webhooks-", dir=args.tmpdir))
    results: dict[str, list[Load]] = {label: [] for label in labels}
    coalesced: dict[str, list[tuple[float, float, int]]] = {t: [] for t in targets}
    try:
        source = tmp / "repo"
        (source / "deployments").mkdir(parents=True)
        (source / "reconcile.yaml").write_text("namespace: bench\n")
        env = {"RECONCILE_WEBHOOK_SECRET": SECRET, "RECONCILE_ADMIN_TOKEN": "bench-admin"}
        for run in range(args.runs):
            total = WARMUP + args.deliveries
            batch = signed_requests(run * total, total, f"r{run}")
            warm, timed = batch[:WARMUP], batch[WARMUP:]
            # Rotate the order so a neighbour's load burst does not always hit one target.
            for label in labels[run % len(labels) :] + labels[: run % len(labels)]:
                port = free_port()
                if label == "floor":
                    argv, ready, extra = uvicorn_argv("webhooks:floor_app", port), "/docs", {}
                elif label == "serve":
                    argv = serve_argv(source, tmp / f"data{run}", port)
                    ready, extra = "/healthz", env
                else:
                    argv, ready = uvicorn_argv("webhooks:standin_app", port), "/metrics"
                    extra = {
                        **env,
                        "BENCH_DB": str(tmp / f"standin{run}.sqlite"),
                        "BENCH_SYNCHRONOUS": args.standin_synchronous,
                    }
                with server(argv, port, extra, ready) as (base, pid):
                    drive(base, warm, args.concurrency, args.seconds)
                    cpu0 = cpu_seconds(pid)
                    if use_wrk:
                        load = drive_wrk(
                            base, timed[0][0], f"w{run}", args.concurrency, args.seconds
                        )
                    else:
                        load = drive(base, timed, args.concurrency, args.seconds)
                    if label != "floor":
                        time.sleep(0.5)  # let the queued reconcile end before counting runs
                    load.cpu = cpu_seconds(pid) - cpu0
                    results[label].append(load)
                    if label != "floor":
                        runs, accepted = scrape(base)
                        coalesced[label].append((runs, accepted, load.statuses.get(202, 0)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    amount = (
        f"wrk for {args.seconds:.0f} s"
        if use_wrk
        else f"httpx, {args.deliveries} per run (max {args.seconds:.0f} s)"
    )
    print(
        f"signed GitHub push deliveries (unique ids), {amount}, {args.concurrency} connections, "
        f"median of {args.runs} runs; loopback, {os.cpu_count()} CPUs; data dir on "
        f"{tmp.parent}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'target':38} {'req/s':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'CPU/req':>9} "
        f"{'1 core':>6}  statuses"
    )
    names = {
        "floor": "floor: bare 202 (no verification)",
        "standin": f"router + SQLite stand-in ({args.standin_synchronous})",
        "serve": "reconcile serve (store + worker)",
    }
    med: dict[str, dict[str, float]] = {}
    for label, loads in results.items():
        m = {
            "rate": statistics.median(x.rate for x in loads),
            "p50": statistics.median(x.pct(0.50) for x in loads) * 1000,
            "p95": statistics.median(x.pct(0.95) for x in loads) * 1000,
            "p99": statistics.median(x.pct(0.99) for x in loads) * 1000,
            "cpu": statistics.median(x.cpu / x.sent for x in loads) * 1000,
        }
        med[label] = m
        statuses: dict[int, int] = {}
        for x in loads:
            for k, v in x.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        print(
            f"{names[label]:38} {m['rate']:6.0f} {m['p50']:6.1f}ms {m['p95']:6.1f}ms "
            f"{m['p99']:6.1f}ms {m['cpu']:7.2f}ms {1000 / m['cpu']:6.0f}  "
            f"{dict(sorted(statuses.items()))}"
        )
    f = med["floor"]
    for label in targets:
        t = med[label]
        print(
            f"ratio {label} / floor: throughput {t['rate'] / f['rate']:.2f}x, "
            f"p99 {t['p99'] / f['p99']:.2f}x, server CPU per delivery {t['cpu'] / f['cpu']:.2f}x"
        )
    for label in targets:
        for i, (runs, accepted, ok) in enumerate(coalesced[label]):
            print(
                f"{label} run {i + 1}: {ok} deliveries answered 202 ({accepted:.0f} accepted "
                f"incl. warm-up) -> {runs:.0f} reconciles (coalesced)"
            )
    for label in targets:
        t = med[label]
        verdict = "met" if t["rate"] >= 500 and t["p99"] < 50 else "MISSED"
        print(
            f"goal >= 500 req/s with p99 < 50 ms ({label}): {verdict} "
            f"({t['rate']:.0f} req/s, p99 {t['p99']:.1f} ms)"
        )


if __name__ == "__main__":
    main()
