"""Benchmark: the store's hot calls on SQLite and on PostgreSQL, without HTTP.

Run: ``.venv/bin/python benchmarks/store.py [--agents 200] [--ops 2000] [--threads 8]
[--deployments 5] [--backend sqlite|postgresql|both] [--replicas 2]``

What the control plane does per agent request, straight on :class:`Store`: ``create``
(``create_command``: supersede the pending one, insert; a reconcile's dispatch), ``pending``
(``pending_commands`` for one agent; every long poll), ``heartbeat`` (``record_report``
with a state of ``--deployments`` deployments; every agent, every 10 s) and ``delivery``
(``remember_delivery``; every webhook).  Each phase runs ``--ops`` calls spread over
``--threads`` threads (uvicorn runs sync handlers in a thread pool the same way) and
prints calls/s and p50/p99 latency.  PostgreSQL also runs with ``--replicas`` Store objects
on one database (threads split between them), as several ``reconcile serve`` would.

SQLite: a file in a temp dir, WAL, ``synchronous=FULL`` (the server's settings).
PostgreSQL: a fresh schema in ``RECONCILE_TEST_POSTGRES`` (default: the test cluster that
``scripts/setup.sh --dev`` starts on 127.0.0.1:55432, fsync on), dropped afterwards.
The benchmark process and the database share this machine's cores: the figures are for
comparing the two backends here, not a server's capacity (``benchmarks/fleet.py`` is).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from reconciler.server.store import Store

DEFAULT_DSN = "postgresql://reconciler:reconciler@127.0.0.1:55432/reconciler_test"


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    import psycopg

    dsn = os.environ.get("RECONCILE_TEST_POSTGRES") or DEFAULT_DSN
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.urlencode([("options", f"-csearch_path={schema}")])
    try:
        yield urllib.parse.urlunsplit(parts._replace(query=query))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run_phase(
    name: str, stores: list[Store], ops: int, threads: int, call: Callable[[Store, int], None]
) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        store = stores[t % len(stores)]
        mine: list[float] = []
        for i in range(t, ops, threads):
            start = time.perf_counter()
            call(store, i)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"rate": ops / wall, "p50": q[49] * 1000, "p99": q[98] * 1000}


def bench(label: str, stores: list[Store], args: argparse.Namespace) -> None:
    agents = []
    for n in range(args.agents):
        made = stores[0].bootstrap_agent(stores[0].create_bootstrap_token(), f"host-{n}")
        assert made is not None
        agents.append(made[0])
    state = {
        "deployments": {
            f"dpl_{d:016x}": {"spec_hash": "a" * 64, "status": "running", "services": {}}
            for d in range(args.deployments)
        }
    }
    now = time.time()
    phases: dict[str, Callable[[Store, int], None]] = {
        "create": lambda s, i: (
            s.create_command(
                command_id=f"cmd_{i}",
                agent=agents[i % len(agents)],
                deployment=f"dpl_{i % (len(agents) * 3):016x}",
                kind="install",
                spec_hash="b" * 64,
                payload={"id": f"cmd_{i}", "action": {"action": "install"}},
                created=now + i * 1e-6,
                deadline=now + 900,
            ),
            None,
        )[1],
        "pending": lambda s, i: (s.pending_commands(agents[i % len(agents)]), None)[1],
        "heartbeat": lambda s, i: (s.record_report(agents[i % len(agents)], state), None)[1],
        "delivery": lambda s, i: (s.remember_delivery("github", f"{label}-{i}"), None)[1],
    }
    for name, call in phases.items():
        r = run_phase(name, stores, args.ops, args.threads, call)
        print(
            f"{label:<22} {name:<10} {r['rate']:>9.0f}/s   p50 {r['p50']:>7.2f} ms"
            f"   p99 {r['p99']:>7.2f} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    print(
        f"{args.ops} calls per phase, {args.threads} threads, {args.agents} agents, "
        f"{args.deployments} deployments per heartbeat; {os.cpu_count()} cores",
        flush=True,
    )
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(os.path.join(tmp, "reconcile.db"))
            bench("sqlite (FULL)", [store], args)
            store.close()
    if args.backend in ("postgresql", "both"):
        with postgres_schema() as url:
            store = Store(url)
            bench("postgresql, 1 replica", [store], args)
            store.close()
        with postgres_schema() as url:
            stores = [Store(url) for _ in range(args.replicas)]
            bench(f"postgresql, {args.replicas} replicas", stores, args)
            for store in stores:
                store.close()


if __name__ == "__main__":
    main()
