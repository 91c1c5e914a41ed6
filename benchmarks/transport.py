"""Benchmark: server CPU per request of ``reconcile serve``'s guarded HTTP protocol, against
plain uvicorn httptools as the floor, in the same run.

Run: ``.venv/bin/python benchmarks/transport.py [--requests 2000] [--rate 1000]
[--connections 200] [--runs 3] [--h11] [--json]`` (``--quick``: a smoke run of a second).

Loopback only.  Each target is a uvicorn process (uvloop when installed, as ``reconcile
serve`` runs) serving one trivial raw ASGI app on a socket this script bound and passed
down, so both targets differ only in their protocol class:

* ``floor``: uvicorn's own ``HttpToolsProtocol`` (``http="httptools"``);
* ``guarded``: what ``reconcile serve`` runs, ``uvicorn_options(TransportLimits())`` from
  ``reconciler/server/transport.py`` (head size, head/body deadlines, connection cap);
* ``h11`` (with ``--h11``, for reference): uvicorn's pure-Python h11 protocol, which the
  guard used to sit on.

The client (aiohttp, one process) opens ``--connections`` keep-alive connections, then
sends ``--requests`` small JSON POSTs (a heartbeat's size) at a fixed ``--rate``, spread
evenly over the connections.  The server's CPU time (``time.process_time()`` of the server
process, asked for over HTTP before and after the timed load: nanosecond clocks, all
threads) divided by the requests is the figure; it holds up on a busy machine where
wall-clock rates do not.  Medians over ``--runs``; the order of the targets rotates per
run.  Prints us per request per target and the ratio guarded / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("floor", "guarded")
NAMES = {
    "floor": "floor: uvicorn httptools",
    "guarded": "guarded httptools (reconcile serve)",
    "h11": "reference: uvicorn h11",
}
#: A heartbeat's size: what the agents send most.
BODY = json.dumps({"state": {"agent": "agt_" + "0" * 24, "deployments": {}}, "pad": "x" * 200})

# -- the server process (``--serve TARGET --fd N``) ------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body, answers 200; ``GET /cpu`` answers the process's CPU seconds."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = repr(time.process_time()).encode() if scope["path"] == "/cpu" else b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(target: str, fd: int) -> None:
    import uvicorn

    from reconciler.server.transport import TransportLimits, uvicorn_options

    if target == "guarded":
        options = uvicorn_options(TransportLimits())
    else:
        options = {
            "http": "httptools" if target == "floor" else "h11",
            "timeout_keep_alive": TransportLimits().keep_alive,
            "ws": "none",
        }
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, **options)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


# -- the client ------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    requests: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6

    def p99_ms(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@contextlib.contextmanager
def server(target: str) -> Iterator[str]:
    """A server process on a socket bound here (no port race); the listen backlog holds
    the first connections until it accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, __file__, "--serve", target, "--fd", str(sock.fileno())]
    proc = subprocess.Popen(argv, pass_fds=[sock.fileno()], env=env, stderr=subprocess.PIPE)
    sock.close()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if proc.returncode not in (0, -15):
            raise SystemExit(f"{target} server exited {proc.returncode}: {err.decode()[-2000:]}")


async def measure(base: str, run: Run, rate: float, connections: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def cpu() -> float:
            async with session.get(base + "/cpu") as resp:
                return float(await resp.text())

        async def post(record: bool) -> None:
            start = time.perf_counter()
            try:
                async with session.post(base + "/", data=BODY, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    kind = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, kind = False, type(exc).__name__
            if not record:
                return
            if ok:
                run.latencies.append(time.perf_counter() - start)
            else:
                run.errors[kind] = run.errors.get(kind, 0) + 1

        # Warm-up: every connection opened and used twice, not counted.
        for _ in range(2):
            await asyncio.gather(*(post(False) for _ in range(connections)))
        cpu0 = await cpu()
        t0 = time.perf_counter()

        async def worker(first: int) -> None:
            for i in range(first, run.requests, connections):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await post(True)

        await asyncio.gather(*(worker(k) for k in range(connections)))
        run.wall_s = time.perf_counter() - t0
        run.cpu_s = await cpu() - cpu0


def bench(args: argparse.Namespace) -> list[Run]:
    targets = [*TARGETS, "h11"] if args.h11 else list(TARGETS)
    runs: list[Run] = []
    for i in range(args.runs):
        # Rotated, so a neighbour's burst of load does not always hit one target.
        for target in targets[i % len(targets) :] + targets[: i % len(targets)]:
            run = Run(target, args.requests)
            with server(target) as base:
                asyncio.run(measure(base, run, args.rate, args.connections))
            runs.append(run)
    return runs


def summary(runs: list[Run]) -> dict[str, Any]:
    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.target, []).append(run)
    targets = {
        target: {
            "name": NAMES[target],
            "cpu_us_per_request": statistics.median(r.cpu_us for r in rs),
            "p99_ms": statistics.median(r.p99_ms() for r in rs),
            "answered": sum(len(r.latencies) for r in rs),
            "errors": {k: sum(r.errors.get(k, 0) for r in rs) for r in rs for k in r.errors},
            "runs_cpu_us": [round(r.cpu_us, 1) for r in rs],
        }
        for target, rs in by.items()
    }
    floor = targets["floor"]["cpu_us_per_request"]
    ratios = {t: v["cpu_us_per_request"] / floor for t, v in targets.items() if t != "floor"}
    return {"targets": targets, "ratios_to_floor": ratios}


def print_report(report: dict[str, Any], environment: dict[str, Any]) -> None:
    print(
        f"{environment['requests']} keep-alive POSTs at {environment['rate']:g}/s from "
        f"{environment['connections']} connections (aiohttp), median of {environment['runs']} "
        f"runs; loopback, {environment['cpus']} CPUs, load average {environment['load']:.1f}"
    )
    print()
    print("| target | server CPU per request | p99 latency | errors |")
    print("|---|---|---|---|")
    for target in report["targets"].values():
        errors = ", ".join(f"{k}: {v}" for k, v in target["errors"].items()) or "none"
        print(
            f"| {target['name']} | {target['cpu_us_per_request']:.0f} us | "
            f"{target['p99_ms']:.1f} ms | {errors} |"
        )
    print()
    for target, ratio in report["ratios_to_floor"].items():
        print(f"ratio {target} / floor (server CPU per request): {ratio:.2f}x")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per run")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests a second")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--h11", action="store_true", help="also plain uvicorn h11")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a second")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--serve", choices=[*TARGETS, "h11"], help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rate, args.connections, args.runs = 100, 400.0, 4, 1
    for name in ("requests", "rate", "connections", "runs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def main() -> None:
    args = parse()
    if args.serve:
        serve(args.serve, args.fd)
        return
    runs = bench(args)
    report = summary(runs)
    environment = {
        "requests": args.requests,
        "rate": args.rate,
        "connections": args.connections,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    if args.json:
        out = {**report, "environment": environment, "runs": [asdict(r) for r in runs]}
        for r in out["runs"]:
            r.pop("latencies")
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print_report(report, environment)


if __name__ == "__main__":
    main()
