"""Benchmark: git push + signed webhook -> the new content served, against a bare compose up.

Run: ``.venv/bin/python benchmarks/push_to_serving.py [--runs 5]``

Needs the Docker Engine with ``busybox:1.36`` and ``caddy:2`` (``bash scripts/setup.sh
--docker``); traffic goes to 127.0.0.1 only.  Starts a real control plane
(``reconcile serve`` on a local bare git repository, no timer) and a real agent
(``reconcile-agent``), deploys the catalog ``hello`` app once, then per run:

- **ours**: change the app's ``GREETING`` in the repository, commit, push, send the
  signed GitHub push webhook, and poll the proxy (20 ms steps, from the moment ``git
  commit`` starts) until the page shows the new greeting;
- **floor**: the same change made by hand to an equivalent compose file (same image,
  command, healthcheck; a published port instead of the proxy) and ``docker compose up
  -d``, polled the same way from the moment ``up`` starts.

Between runs it waits until the agent has finished the previous deploy (settle gate,
health hook, probe) and reported it, so each push lands on an idle host: pushes come
minutes apart, and an agent runs one command at a time.

Prints the medians, the overhead (ours - floor; goal <= 2 s) and the ratio; also the
server-side split (webhook answer time).  Everything it makes carries the namespace
``bench-push`` or lives in a temp dir, and is removed at the end.  The proxy container's
name is fixed (``reconciler-proxy``): do not run this beside other Docker tests.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.e2e.cluster import Cluster, free_port, wait_for  # noqa: E402

FLOOR_COMPOSE = """\
services:
  app:
    image: busybox:1.36
    init: true
    restart: unless-stopped
    environment:
      GREETING: ${GREETING}
    command:
      - sh
      - -c
      - |
        mkdir -p /www
        printf '<h1>%s</h1>\\n' "$$GREETING" > /www/index.html
        echo ok > /www/healthz
        exec busybox httpd -f -p 80 -h /www
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/healthz"]
      interval: 2s
      timeout: 3s
      retries: 3
      start_period: 5s
    ports:
      - "127.0.0.1:${PORT}:80"
"""


def poll(url: str, text: str, host: str | None = None, timeout: float = 120) -> float:
    """Seconds until ``url`` answers 200 with ``text`` in the body (20 ms steps)."""
    start = time.monotonic()
    headers = {"Host": host} if host else {}
    with httpx.Client(timeout=2) as client:
        while time.monotonic() - start < timeout:
            try:
                r = client.get(url, headers=headers)
                if r.status_code == 200 and text in r.text:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {text!r} at {url}")


def settled(cluster: Cluster) -> None:
    """Each push is measured on an idle host, as pushes minutes apart are: without this
    the next push queues behind the previous command's settle window."""
    cluster.settled()
    time.sleep(1.0)


def ours(cluster: Cluster, runs: int) -> tuple[list[float], list[float]]:
    totals: list[float] = []
    hook_ms: list[float] = []
    for i in range(runs):
        greeting = f"push-{i}-{time.monotonic_ns()}"
        start = time.monotonic()
        cluster.hello_repo(greeting)
        sha = cluster.commit_and_push(f"bench {i}")
        t0 = time.monotonic()
        r = cluster.github_push(sha)
        hook_ms.append((time.monotonic() - t0) * 1000)
        assert r.status_code == 202, r.text
        poll(f"http://127.0.0.1:{cluster.proxy_port}/", greeting, host=cluster.domain)
        totals.append(time.monotonic() - start)
        settled(cluster)
    return totals, hook_ms


def floor(base: pathlib.Path, runs: int) -> list[float]:
    project = base / "floor"
    project.mkdir()
    (project / "compose.yaml").write_text(FLOOR_COMPOSE)
    port = free_port()
    name = "bench-push-floor"

    def up(greeting: str) -> None:
        (project / ".env").write_text(f"GREETING={greeting}\nPORT={port}\n")
        subprocess.run(
            ["docker", "compose", "-p", name, "up", "-d", "--quiet-pull"],
            cwd=project,
            check=True,
            capture_output=True,
        )

    up("warm-up")
    poll(f"http://127.0.0.1:{port}/", "warm-up")
    times = []
    try:
        for i in range(runs):
            greeting = f"floor-{i}-{time.monotonic_ns()}"
            start = time.monotonic()
            up(greeting)
            poll(f"http://127.0.0.1:{port}/", greeting)
            times.append(time.monotonic() - start)
    finally:
        subprocess.run(
            ["docker", "compose", "-p", name, "down", "-t", "1"],
            cwd=project,
            capture_output=True,
        )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-push-"))
    cluster = Cluster(base, namespace="bench-push")
    try:
        cluster.start_server()
        cluster.start_agent(token=cluster.agent_token())
        cluster.hello_repo("warm-up")
        sha = cluster.commit_and_push("warm-up")
        cluster.github_push(sha)
        wait_for(lambda: cluster.serves("warm-up"), 120, "the first deploy")
        settled(cluster)
        mine, hook_ms = ours(cluster, args.runs)
        bare = floor(base, args.runs)
    except BaseException:
        print(cluster.dump_logs(), file=sys.stderr)
        raise
    finally:
        cluster.teardown()
        shutil.rmtree(base, ignore_errors=True)
    m, f = statistics.median(mine), statistics.median(bare)

    def spread(xs: list[float]) -> str:
        return f"(min {min(xs):.2f}, max {max(xs):.2f})"

    print(f"push -> new content served   ours  median {m:.2f} s  {spread(mine)}")
    print(f"bare docker compose up -d    floor median {f:.2f} s  {spread(bare)}")
    print(f"webhook answered in          median {statistics.median(hook_ms):.1f} ms")
    print(f"overhead {m - f:+.2f} s (goal <= 2 s), ratio {m / f:.2f}x")


if __name__ == "__main__":
    main()
