"""Benchmark: a fleet of simulated agents on one real ``reconcile serve`` (issue 17).

Run: ``.venv/bin/python benchmarks/fleet.py [--agents 100,1000,5000] [--deployments D]
[--heartbeat 10] [--window 30] [--ack-delay 0.5] [--kill] [--idle-only] [--json]
[--database URL] [--set KEY=VALUE ...] [--trace FILE] [--quick]``

Loopback only.  For each fleet size it starts a real control plane (``python -m
reconciler serve`` on 127.0.0.1, its own temp data dir, a local bare git repository as the
source, no timer unless ``--poll-interval``), raises the file-handle limit to the hard
limit (the server inherits it) and writes a ``server.yaml`` whose ``max_connections``
fits four connections per agent.  Then, in this one asyncio process, it bootstraps
``--agents`` agents (an admin-API token each, then ``POST /v1/agent/bootstrap``) and runs
each as the real ``reconcile-agent`` does, with the project's own wire models
(``reconciler.model.agentapi``): its own HTTP connection pool; a heartbeat
(``AgentReport``) every ``--heartbeat`` seconds on the agent's own grid
(``agent.cadence``: a random phase, kept however late the answers), failures retried with
backoff; a long poll
(``GET /v1/agent/commands?wait=S``) that is never repeated within a second; each new
command acknowledged after ``--ack-delay`` seconds: the host's state changed as the
executor would (a ``DeployedApp`` with healthy containers and the spec's record), the
result posted, then a heartbeat with the new state.

The digest protocol is the agent side of the contract: every report carries
``state_digest``; the state is left out while it equals the digest of the server's last
``ReportAck``; a server that acknowledges no digest (every server before issue 17) gets the
full state each time, and one that refuses a report without state (422) gets it at once.

Phases, each with its heartbeat p50/p99, request counts and errors, the server's CPU (% of
one core, its children included) and RSS (from ``/proc``), the simulator's own CPU and its
event-loop lag (how late its timers fire: a loaded loop inflates every latency it
measures):

1. ``idle``: heartbeats with no deployments, for ``--window`` seconds;
2. ``rollout``: ``--deployments`` image deployments (busybox, a var each) spread over the
   agents, committed, pushed, announced with a signed GitHub push webhook; until every
   one has been acknowledged;
3. ``steady``: heartbeats of agents running them, for ``--window`` seconds;
4. ``push``: a commit that changes 10% of the deployments (their var), the signed
   webhook; times from the webhook to the plan stored (the event log shows the commit's
   run finished),
   to every affected agent holding its command, to every result acknowledged; and the
   pickup latency of each command: its ``created`` field (the reconcile's clock) and its
   ``command.created`` event (the insert) to the moment the long poll brought it;
5. ``kill`` (``--kill``): another 10% pushed, ``kill -9`` of the server as soon as the
   first of those commands reaches an agent, the same command line started again: the
   time until ``/readyz`` answers 200, and whether every changed deployment still gets
   its command (none lost).

Across the run, a spec (deployment and spec hash) that reached agents under two command
ids counts as issued twice.  ``--idle-only`` stops after phase 1 (5,000 agents).  The
table compares with the goals of issue 17; ``--json`` prints the same as one object.
Every process, repository and data dir it makes lives in a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402

from agent.cadence import Cadence  # noqa: E402
from agent.client import KEEPALIVE_EXPIRY  # noqa: E402
from reconciler.model.agentapi import (  # noqa: E402
    AgentReport,
    BootstrapRequest,
    BootstrapResponse,
    Command,
    CommandBatch,
    CommandResult,
    ReportAck,
    ResultAck,
    state_digest,
)
from reconciler.model.state import AgentState, ContainerState, DeployedApp  # noqa: E402
from reconciler.render.model import RenderedDeployment, spec_record  # noqa: E402

ADMIN_TOKEN = "fleet-bench-admin"
WEBHOOK_SECRET = "fleet-bench-webhook"
NAMESPACE = "fleet-bench"
VERSION = "fleet-sim"

# As agent/client.py and agent/daemon.py, so the server sees what real agents send.
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
LONG_POLL_SLACK = 15.0
MIN_EMPTY_POLL = 1.0  # seconds: a long poll is never repeated faster than this
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0  # full jitter, as agent.client.Backoff
HOST_MEMORY_MB = 16384  # what each simulated host reports (the planner blocks past it)
FREE_NETWORKS = 500
# Keys left out of the heartbeat's state, as agent.client.AgentClient.report does.
LOCAL_ONLY: dict[str, Any] = {
    "total_memory_mb": True,
    "free_networks": True,
    "deployments": {"__all__": {"last_error"}},
}
EVENTS_PAGE = 1000  # the server's cap on /v1/events?limit
# --trace FILE: every heartbeat as (phase, monotonic start, seconds), to see when a tail
# happened in its phase (a wave of long polls, a collector pause) and not only how long.
TRACE: list[tuple[str, float, float]] | None = None
PLAN_POLL = 0.05  # seconds between reads of the event log while waiting for a push's plan
# Seconds between samples of the server's RSS and the loop's lag: often enough that a
# phase of half a second (a smoke run's rollout) still gets a few.
SAMPLE_EVERY = 0.1


# -- figures -------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank), or None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


@dataclass
class Phase:
    """What one phase measured; the clocks are ``time.monotonic`` unless named wall."""

    name: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    heartbeats: list[float] = field(default_factory=list)  # seconds per report
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lag: list[float] = field(default_factory=list)  # event-loop lag samples, seconds
    rss_mb: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds
    sim_cpu: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)  # the phase's own (push times...)
    pickup_created: list[float] = field(default_factory=list)  # created field -> received
    pickup_insert: list[float] = field(default_factory=list)  # command.created event -> received

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def summary(self) -> dict[str, Any]:
        wall = max(self.seconds, 1e-9)
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 2),
            "heartbeats": len(self.heartbeats),
            "heartbeat_p50_ms": _ms(pct(self.heartbeats, 0.50)),
            "heartbeat_p99_ms": _ms(pct(self.heartbeats, 0.99)),
            "heartbeat_max_ms": _ms(max(self.heartbeats, default=None)),
            "requests": dict(sorted(self.requests.items())),
            "errors": dict(sorted(self.errors.items())),
            "server_cpu_pct": round(100 * self.server_cpu / wall, 1),
            "server_rss_mb": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "sim_cpu_pct": round(100 * self.sim_cpu / wall, 1),
            "loop_lag_p99_ms": _ms(pct(self.lag, 0.99)),
        }
        if self.pickup_created:
            out["pickups"] = len(self.pickup_created)
            out["pickup_created_p50_ms"] = _ms(pct(self.pickup_created, 0.50))
            out["pickup_created_p99_ms"] = _ms(pct(self.pickup_created, 0.99))
        if self.pickup_insert:
            out["pickup_insert_p50_ms"] = _ms(pct(self.pickup_insert, 0.50))
            out["pickup_insert_p99_ms"] = _ms(pct(self.pickup_insert, 0.99))
        out.update(self.figures)
        return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


# -- the server process ----------------------------------------------------------------------


def git(cwd: pathlib.Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "fleet-bench",
        "GIT_AUTHOR_EMAIL": "fleet-bench@example.invalid",
        "GIT_COMMITTER_NAME": "fleet-bench",
        "GIT_COMMITTER_EMAIL": "fleet-bench@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def raise_file_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (the server inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (git), from /proc."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """``python -m reconciler serve`` on a fixed port; restartable on the same data dir."""

    def __init__(
        self,
        base: pathlib.Path,
        source: pathlib.Path,
        *,
        heartbeat: float,
        poll_interval: float,
        settings: dict[str, Any],
        database: str | None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = base / "server-data"
        self.log_path = base / "server.log"
        config = base / "server.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.argv = [
            sys.executable, "-m", "reconciler", "serve",
            "--source", str(source),
            "--branch", "main",
            "--data-dir", str(self.data_dir),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--poll-interval", f"{poll_interval:g}",
            "--heartbeat", f"{heartbeat:g}",
            "--config", str(config),
            "--log-level", "warning",
        ]  # fmt: skip
        if database:
            self.argv += ["--database", database]
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_before = 0.0  # CPU of the processes killed before this one

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RECONCILE_ADMIN_TOKEN": ADMIN_TOKEN,
            "RECONCILE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return self.cpu_before + (proc_cpu(self.pid) if self.proc is not None else 0.0)

    def kill(self) -> None:
        """``kill -9``: no shutdown handler runs."""
        assert self.proc is not None
        self.cpu_before += proc_cpu(self.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def ready(self, timeout: float = 120.0) -> float:
        """Seconds until ``/readyz`` answers 200 (the first reconcile has started)."""
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() - start < timeout:
                if self.proc is not None and self.proc.poll() is not None:
                    raise SystemExit(
                        f"reconcile serve exited ({self.proc.returncode}):\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        return time.monotonic() - start
                await asyncio.sleep(0.05)
        raise SystemExit(f"reconcile serve not ready in {timeout:g} s:\n{self.log_tail()}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


PROFILED = ("idle", "rollout", "steady", "push")  # the phases --py-spy samples
PROFILE_TOP = 12  # functions listed per phase
# Samples a second: py-spy at 50 took a quarter of a core off the 2-core machine with the
# server's 40 threads; at 10 a 30 s phase still gives some 300 samples of a busy server.
PROFILE_RATE = 10
# Leaf frames that are waits (py-spy samples some waiting threads as active).
WAITING = ("Condition.wait (", "Event.wait (", "Runner.run (", "select (", "_worker (")


class Profiler:
    """``py-spy record`` of the server for one phase (non-blocking: the server is not
    paused to sample it; idle threads are not sampled), summarised."""

    def __init__(self, pid: int, out: pathlib.Path) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--nonblocking",
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarise_profile(self.out)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    if not pathlib.Path(found).exists():
        raise SystemExit("--py-spy needs py-spy on PATH (pip install py-spy)")
    return found


def summarise_profile(path: pathlib.Path) -> dict[str, Any]:
    """The server's own functions by the share of samples they are on the stack of
    (inclusive: ``drift_in_report`` counts the SQLite reads under it), and the leaf
    functions by their own share: where a request's CPU goes, and what it is spent on."""
    total = 0
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"file": str(path), "samples": 0, "ours": [], "leaves": []}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(WAITING):
            continue  # a thread or the event loop waiting for work, not doing any
        total += int(count)
        leaf[frames[-1]] += int(count)
        for frame in set(frames):
            if "reconciler/" in frame and not frame.startswith(("<module>", "main (")):
                inclusive[frame] += int(count)

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": frame, "share_pct": round(100 * n / max(total, 1), 1)}
            for frame, n in counter.most_common(PROFILE_TOP)
        ]

    return {"file": str(path), "samples": total, "ours": share(inclusive), "leaves": share(leaf)}


# -- the repository ----------------------------------------------------------------------------


class Repo:
    """A bare origin (the server's source) and a work tree the pushes come from."""

    def __init__(self, base: pathlib.Path) -> None:
        self.origin = base / "origin.git"
        self.work = base / "work"
        git(base, "init", "-q", "--bare", "-b", "main", str(self.origin))
        git(base, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.origin))
        (self.work / "deployments").mkdir()
        (self.work / "reconcile.yaml").write_text(
            f"namespace: {NAMESPACE}\nbase_domain: fleet.localhost\nproxy:\n  tls: off\n"
        )
        (self.work / "deployments" / ".keep").write_text("")
        self.commit("an empty fleet")

    def write(self, name: str, agent: str, version: int) -> None:
        (self.work / "deployments" / f"{name}.yaml").write_text(
            f"name: {name}\nagent: {agent}\nimage: busybox:1.36\ntarget_port: 80\n"
            f"cpus: 0.1\nmemory_mb: 64\nvars:\n  GREETING: {greeting(name, version)}\n"
        )

    def commit(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


def greeting(name: str, version: int) -> str:
    """The var a push changes: which push a command belongs to is read back from it."""
    return f"{name} v{version}"


def signed_push(sha: str) -> tuple[bytes, dict[str, str]]:
    """A GitHub push delivery for ``sha``, signed as GitHub does (HMAC-SHA256, raw body)."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "deleted": False,
            "repository": {"full_name": "bench/fleet", "default_branch": "main"},
            "head_commit": {"id": sha, "message": "fleet-bench"},
        }
    ).encode()
    sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={sig}",
    }


# -- the simulated fleet -----------------------------------------------------------------------


@dataclass
class Received:
    """One command as an agent got it."""

    command: Command
    agent: str
    at: float  # wall clock (time.time) when the long poll brought it
    phase: str
    acked: int = 0  # results the server accepted as new (never more than 1)
    duplicates: int = 0  # results it answered ``duplicate: true``

    @property
    def acknowledged(self) -> bool:
        """The server holds its result: accepted, or (the answer lost to a kill) a
        duplicate of the one it had accepted."""
        return self.acked + self.duplicates > 0


class Fleet:
    """Shared by every simulated agent: the phase being measured and what was received."""

    def __init__(self, server: Server, args: argparse.Namespace) -> None:
        self.server = server
        self.heartbeat = float(args.heartbeat)
        self.poll_wait = float(args.poll_wait)
        self.ack_delay = float(args.ack_delay)
        self.phase = Phase("setup")
        self.phases: list[Phase] = []
        self.stop = asyncio.Event()
        self.received: dict[str, Received] = {}
        self.by_spec: dict[tuple[str, str], set[str]] = {}  # (deployment, spec) -> ids
        self.by_greeting: dict[str, Received] = {}  # the var each push changes -> first command
        self.changed = asyncio.Event()  # set on every receive and every ack
        # One TLS context for every client: httpx builds one per client otherwise (~20 ms).
        self.tls = ssl.create_default_context()
        self.agents: list[SimAgent] = []
        self.digests_acked = 0  # reports whose ack carried our digest
        self.profile_dir: pathlib.Path | None = args.py_spy
        self.profiler: Profiler | None = None

    def begin(self, name: str) -> Phase:
        self.end()
        self.phase = Phase(name)
        self.phase.server_cpu = -self.server.cpu()
        self.phase.sim_cpu = -time.process_time()
        if self.profile_dir is not None and name in PROFILED:
            out = self.profile_dir / f"fleet-{len(self.agents)}-{name}.txt"
            self.profiler = Profiler(self.server.pid, out)
        return self.phase

    def end(self) -> None:
        phase = self.phase
        if phase.name == "setup" or phase.ended is not None:
            return
        phase.ended = time.monotonic()
        rss = proc_rss_mb(self.server.pid) if self.server.proc is not None else None
        if rss is not None:
            phase.rss_mb.append(rss)
        phase.server_cpu += self.server.cpu()
        phase.sim_cpu += time.process_time()
        if self.profiler is not None:
            phase.figures["profile"] = self.profiler.stop()
            self.profiler = None
        self.phases.append(phase)

    def client(self, headers: dict[str, str]) -> AgentWire:
        return AgentWire(self.server.url, self.tls, headers)

    def error(self, kind: str, what: str) -> None:
        self.phase.errors[f"{kind}: {what}"] += 1

    def got(self, agent: str, command: Command) -> Received | None:
        """Record a command's first arrival (None when it came before: listed again)."""
        if command.id in self.received:
            return None
        now = time.time()
        item = Received(command=command, agent=agent, at=now, phase=self.phase.name)
        self.received[command.id] = item
        key = (command.action.id, command.action.spec_hash or command.kind)
        ids = self.by_spec.setdefault(key, set())
        if ids:  # this spec reached an agent before, under another command id
            self.phase.figures["issued_twice"] = self.phase.figures.get("issued_twice", 0) + 1
        ids.add(command.id)
        env = (command.deployment or {}).get("env")
        if isinstance(env, dict) and isinstance(env.get("GREETING"), str):
            self.by_greeting.setdefault(env["GREETING"], item)
        self.phase.pickup_created.append(now - command.created.timestamp())
        self.changed.set()
        return item

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, seconds))
        return self.stop.is_set()

    async def sampler(self) -> None:
        """The server's RSS and this loop's lag, every ``SAMPLE_EVERY``, into the current
        phase."""
        while not self.stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(SAMPLE_EVERY)
            self.phase.lag.append(max(0.0, time.monotonic() - before - SAMPLE_EVERY))
            rss = proc_rss_mb(self.server.pid) if self.server.proc is not None else None
            if rss is not None:
                self.phase.rss_mb.append(rss)


class WireError(Exception):
    """A call that got no HTTP answer (refused, reset, timed out); ``kind`` names it."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Answer:
    status_code: int
    content: bytes


class AgentWire:
    """One simulated agent's HTTP client, as the real agent's pool (agent.client): up to
    four connections of its own, kept alive past a heartbeat interval (KEEPALIVE_EXPIRY) so
    heartbeats reuse one.  aiohttp and not httpx, which the real agent uses: the simulator
    runs every agent in one process, and httpx's pure-Python HTTP/1.1 cost it 2 ms of CPU
    a request (5,000 agents saturated a core before the server was half busy); aiohttp
    parses in C.  The bytes on the wire are the same requests."""

    def __init__(self, base_url: str, tls: ssl.SSLContext, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.tls = tls if base_url.startswith("https:") else False
        self.headers = {
            "User-Agent": "reconcile-agent/fleet-bench",
            "Content-Type": "application/json",
            **headers,
        }
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                headers=self.headers,
                connector=aiohttp.TCPConnector(
                    limit=4, keepalive_timeout=KEEPALIVE_EXPIRY, ssl=self.tls
                ),
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT, connect=CONNECT_TIMEOUT),
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def post(self, path: str, body: bytes) -> Answer:
        try:
            async with self._open().post(path, data=body) as r:
                return Answer(r.status, await r.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WireError(type(exc).__name__) from None

    async def get(self, path: str, params: dict[str, str], *, timeout: float) -> Answer:
        budget = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        try:
            async with self._open().get(path, params=params, timeout=budget) as r:
                return Answer(r.status, await r.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WireError(type(exc).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class SimAgent:
    """One host's agent, speaking the wire protocol the way ``agent.daemon`` does."""

    def __init__(self, fleet: Fleet, index: int, creds: BootstrapResponse) -> None:
        self.fleet = fleet
        self.index = index
        self.id = creds.agent_id
        self.hostname = f"sim-{index:05d}"
        self.http = fleet.client({"X-Agent-Id": creds.agent_id, "X-Agent-Secret": creds.secret})
        self.deployments: dict[str, DeployedApp] = {}
        self.server_digest: str | None = None  # what the server last acknowledged
        self.running: set[str] = set()
        self.handled: set[str] = set()
        self._body_full = b""
        self._body_digest = b""
        self.digest = ""
        self._rebuild()

    # ------------------------------------------------------------------ the host's state

    def _rebuild(self) -> None:
        """The report bodies (full and digest-only) for the current state, built once per
        change: a heartbeat of an unchanged host costs the simulator no model work."""
        state = AgentState(agent=self.id, deployments=dict(self.deployments))
        self.digest = state_digest(state)
        report = AgentReport(
            state=state,
            state_digest=self.digest,
            version=VERSION,
            hostname=self.hostname,
            total_memory_mb=HOST_MEMORY_MB,
            free_networks=FREE_NETWORKS,
        )
        full = report.model_dump(mode="json", exclude={"state": LOCAL_ONLY})
        self._body_full = json.dumps(full).encode()
        self._body_digest = json.dumps({**full, "state": None}).encode()

    def _body(self, *, full: bool) -> bytes:
        body = self._body_full if full else self._body_digest
        if not self.running:
            return body
        data = json.loads(body)
        data["running"] = sorted(self.running)
        return json.dumps(data).encode()

    def apply(self, command: Command) -> CommandResult:
        """What the executor leaves behind, as the next heartbeat reports it."""
        if command.kind in ("install", "update", "repair") and command.deployment is not None:
            want = RenderedDeployment.model_validate(command.deployment)
            started = time.time()
            self.deployments[want.id] = DeployedApp(
                id=want.id,
                name=want.name,
                namespace=want.namespace,
                spec_hash=want.spec_hash,
                services=list(want.services),
                containers=[
                    ContainerState(
                        service=s,
                        name=f"{want.id}-{s}",
                        status="running",
                        health="healthy",
                        started_at=started,
                    )
                    for s in want.services
                ],
                record=spec_record(want),
                urls=[want.url] if want.url else [],
            )
            result = CommandResult(ok=True, message="simulated", seconds=self.fleet.ack_delay)
            result = result.model_copy(update={"url": want.url})
        elif command.kind == "uninstall":
            self.deployments.pop(command.action.id, None)
            result = CommandResult(ok=True, message="simulated", seconds=self.fleet.ack_delay)
        else:
            result = CommandResult(ok=False, message=f"fleet-bench simulates no {command.kind}")
        self._rebuild()
        return result

    # ------------------------------------------------------------------ heartbeats

    async def report(self) -> bool:
        """One heartbeat: the digest, and the state unless the server holds it already."""
        fleet = self.fleet
        full = self.server_digest != self.digest
        for _attempt in range(2):
            phase = fleet.phase
            phase.requests["report"] += 1
            start = time.monotonic()
            try:
                response = await self.http.post("/v1/agent/report", self._body(full=full))
            except WireError as exc:
                fleet.error("report", exc.kind)
                return False
            elapsed = time.monotonic() - start
            if response.status_code == 422 and not full:
                # A server that wants the state every time (issue 17's note): send it now.
                fleet.error("report", "422 without state (resent in full)")
                self.server_digest = None
                full = True
                continue
            if response.status_code != 200:
                fleet.error("report", f"HTTP {response.status_code}")
                return False
            phase.heartbeats.append(elapsed)
            if TRACE is not None:
                TRACE.append((phase.name, start, elapsed))
            ack = ReportAck.model_validate_json(response.content)
            self.server_digest = ack.state_digest
            if ack.state_digest == self.digest:
                fleet.digests_acked += 1
            if ack.state_digest is not None and ack.state_digest != self.digest and not full:
                full = True  # it holds another state: send ours at once
                continue
            return True
        return True

    async def heartbeat_loop(self) -> None:
        fleet = self.fleet
        attempt = 0
        # The real agent's grid (agent.cadence): a random phase, kept however slow the answers.
        cadence = Cadence(fleet.heartbeat, time.monotonic())
        if await fleet.sleep(cadence.delay(time.monotonic())):
            return
        while not fleet.stop.is_set():
            if await self.report():
                attempt = 0
                delay = cadence.delay(time.monotonic())
            else:
                delay = min(fleet.heartbeat, max(_backoff(attempt), 0.5))
                attempt += 1
            if await fleet.sleep(delay):
                return

    # ------------------------------------------------------------------ commands

    async def poll_loop(self) -> None:
        fleet = self.fleet
        attempt = 0
        while not fleet.stop.is_set():
            started = time.monotonic()
            fleet.phase.requests["poll"] += 1
            try:
                response = await self.http.get(
                    "/v1/agent/commands",
                    {"wait": f"{fleet.poll_wait:g}"},
                    timeout=fleet.poll_wait + LONG_POLL_SLACK,
                )
                if response.status_code != 200:
                    raise _Status(response.status_code)
                batch = CommandBatch.model_validate_json(response.content)
            except (WireError, _Status) as exc:
                fleet.error("poll", str(exc) if isinstance(exc, _Status) else exc.kind)
                if await fleet.sleep(_backoff(attempt)):
                    return
                attempt += 1
                continue
            attempt = 0
            for command in batch.commands:
                if command.id in self.running or command.id in self.handled:
                    continue
                fleet.got(self.id, command)  # None when it came before (a redo after a restart)
                self.running.add(command.id)
                asyncio.get_running_loop().create_task(self.handle(command))
            if time.monotonic() - started < MIN_EMPTY_POLL and await fleet.sleep(MIN_EMPTY_POLL):
                return

    async def handle(self, command: Command) -> None:
        fleet = self.fleet
        try:
            if await fleet.sleep(fleet.ack_delay):
                return
            result = self.apply(command)
            body = result.model_dump_json().encode()
            attempt = 0
            while not fleet.stop.is_set():
                fleet.phase.requests["result"] += 1
                try:
                    response = await self.http.post(f"/v1/agent/commands/{command.id}/result", body)
                except WireError as exc:
                    fleet.error("result", exc.kind)
                else:
                    if response.status_code == 200:
                        ack = ResultAck.model_validate_json(response.content)
                        item = fleet.received.get(command.id)
                        if item is not None:
                            if ack.duplicate:
                                item.duplicates += 1
                            else:
                                item.acked += 1
                        fleet.changed.set()
                        break
                    fleet.error("result", f"HTTP {response.status_code}")
                    if response.status_code in (404, 409, 422):
                        break  # the server no longer wants it, as the agent drops it
                if await fleet.sleep(_backoff(attempt)):
                    return
                attempt += 1
            self.handled.add(command.id)
        finally:
            self.running.discard(command.id)
        if not fleet.stop.is_set():
            await self.report()


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


def _backoff(attempt: int) -> float:
    return random.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


# -- one fleet size ----------------------------------------------------------------------------


class Run:
    """One fleet size, from an empty server to the last phase."""

    def __init__(self, base: pathlib.Path, args: argparse.Namespace, agents: int) -> None:
        self.base = base
        self.args = args
        self.n = agents
        self.d = args.deployments if args.deployments is not None else agents
        self.repo = Repo(base)
        settings: dict[str, Any] = {
            # A slow server makes an agent hold a long poll, a heartbeat and a result at
            # once (two per agent gave 503s at 1,000 agents); the server lowers it to what
            # its file handles allow.
            "max_connections": max(2048, 4 * agents + 512),
        }
        settings.update(args.settings)
        self.settings = settings
        self.server = Server(
            base,
            self.repo.origin,
            heartbeat=args.heartbeat,
            poll_interval=args.poll_interval,
            settings=settings,
            database=args.database,
        )
        self.fleet = Fleet(self.server, args)
        self.admin = httpx.AsyncClient(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=180,
            verify=self.fleet.tls,
        )
        self.names = [f"app-{i:05d}" for i in range(self.d)]
        self.versions = dict.fromkeys(self.names, 0)
        self.owner: dict[str, str] = {}
        self.event_cursor = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.notes: list[str] = []
        self.server_view: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers

    async def event_pages(
        self, after: int, deadline: float | None = None
    ) -> AsyncGenerator[tuple[list[dict[str, Any]], int], None]:
        """The event log after ``after``, a page (the server's cap) at a time, each with the
        id it ends at, up to the end: a short page.  With a ``deadline`` (monotonic) every
        read gets what is left of it, and TimeoutError says the log was not read to its end;
        without, the client's timeout.  One pager for every reader, so a cursor moves one way."""
        while True:
            timeout: float | httpx.Timeout = self.admin.timeout
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise TimeoutError(f"event log read only up to {after}")
            r = await self.admin.get(
                "/v1/events", params={"after": after, "limit": EVENTS_PAGE}, timeout=timeout
            )
            r.raise_for_status()
            data = r.json()
            after = int(data["last"])
            yield data["events"], after
            if len(data["events"]) < EVENTS_PAGE:
                return

    async def events(self, budget: float = 60.0) -> list[dict[str, Any]]:
        """Every event since the last call, or as many as an overloaded server gives in
        ``budget`` seconds (noted)."""
        out: list[dict[str, Any]] = []
        pages = self.event_pages(self.event_cursor, time.monotonic() + budget)
        with contextlib.suppress(TimeoutError):
            async for page, last in pages:
                out.extend(page)
                self.event_cursor = last
            return out
        self.notes.append(f"{self.fleet.phase.name}: event log read in part only")
        return out

    async def wait(self, check: Callable[[], bool], timeout: float, what: str) -> float | None:
        """Seconds until ``check()`` holds (re-checked on every receive and ack), or None
        after ``timeout`` (noted)."""
        start = time.monotonic()
        fleet = self.fleet
        while not check():
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                self.notes.append(f"{fleet.phase.name}: timed out after {timeout:g} s: {what}")
                return None
            fleet.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.changed.wait(), timeout=min(left, 1.0))
        return time.monotonic() - start

    async def window(self) -> None:
        """A heartbeat phase; with the server's reconciles during it (a run in a window
        that should be quiet explains its tail)."""
        before = await self.reconcile_seconds()
        await asyncio.sleep(self.args.window)
        with contextlib.suppress(httpx.HTTPError):
            after = await self.reconcile_seconds()
            self.fleet.phase.figures["reconciles"] = int(after[1] - before[1])
            self.fleet.phase.figures["reconcile_s"] = round(after[0] - before[0], 2)

    async def push(self, names: Sequence[str], message: str) -> tuple[str, float]:
        """Commit ``names`` at their next version, push, send the signed webhook; the
        commit and the wall time the webhook went out."""
        for name in names:
            self.versions[name] += 1
            self.repo.write(name, self.owner[name], self.versions[name])
        sha = await asyncio.to_thread(self.repo.commit, message)
        body, headers = signed_push(sha)
        sent = time.time()
        t0 = time.monotonic()
        r = await self.admin.post("/hooks/github", content=body, headers=headers)
        self.fleet.phase.figures["webhook_ms"] = round((time.monotonic() - t0) * 1000, 1)
        if r.status_code != 202:
            raise SystemExit(f"the signed webhook was refused: {r.status_code} {r.text}")
        return sha, sent

    async def reconcile_seconds(self) -> tuple[float, float]:
        """The server's own ``reconcile_duration_seconds``: (sum, count) so far."""
        r = await self.admin.get("/metrics")
        r.raise_for_status()
        total = count = 0.0
        for line in r.text.splitlines():
            if line.startswith("reconcile_duration_seconds_sum"):
                total = float(line.split()[-1])
            elif line.startswith("reconcile_duration_seconds_count"):
                count = float(line.split()[-1])
        return total, count

    async def newest_event_id(self) -> int:
        """The id of the newest event now (what a push's events come after)."""
        cursor = 0
        async for _, last in self.event_pages(cursor):
            cursor = last
        return cursor

    async def plan_stored(self, sha: str, cursor: int, timeout: float) -> float | None:
        """Wall time when the event log first shows the run of ``sha`` finished, its plan and
        commands committed (``reconcile.finished`` comes after that transaction): read every
        50 ms from ``cursor`` on, a few rows a read.  (``/v1/plan`` names the revision too,
        but it is the whole plan: read every 0.2 s at 1,000 deployments it took a fifth of
        a core from the reconcile it was timing.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError, TimeoutError):
                # closed at once when the plan is found, not when the loop collects it
                async with contextlib.aclosing(self.event_pages(cursor, deadline)) as pages:
                    async for page, last in pages:
                        cursor = last
                        for event in page:
                            fields = event.get("fields") or {}
                            if (
                                event["kind"] == "reconcile.finished"
                                and fields.get("revision") == sha
                            ):
                                return time.time()
            await asyncio.sleep(PLAN_POLL)
        self.notes.append(f"{self.fleet.phase.name}: no plan for {sha[:12]} in {timeout:g} s")
        return None

    def latest(self, names: Sequence[str]) -> dict[str, Received]:
        """The first command received for each of ``names`` at its current version."""
        found = self.fleet.by_greeting
        out = {n: found.get(greeting(n, self.versions[n])) for n in names}
        return {n: item for n, item in out.items() if item is not None}

    async def rollout_like(self, names: Sequence[str], message: str, *, kill: bool = False) -> None:
        """Push ``names``; measure webhook -> plan -> every command received -> acked."""
        phase = self.fleet.phase
        deadline: float = time.monotonic() + self.args.timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        cursor = await self.newest_event_id()
        runs_before = await self.reconcile_seconds()
        sha, sent = await self.push(names, message)
        plan_task = asyncio.create_task(self.plan_stored(sha, cursor, left()))
        if kill:
            got_one = await self.wait(lambda: bool(self.latest(names)), left(), "a command")
            if got_one is not None:
                killed = time.monotonic()
                self.server.kill()
                plan_task.cancel()
                self.server.start()
                await self.server.ready()
                phase.figures["kill_to_ready_s"] = round(time.monotonic() - killed, 2)
                phase.figures["received_before_kill"] = len(self.latest(names))
        received = await self.wait(
            lambda: len(self.latest(names)) == len(names), left(), "every command received"
        )
        acked = await self.wait(
            lambda: (
                all(i.acknowledged for i in self.latest(names).values())
                and len(self.latest(names)) == len(names)
            ),
            left(),
            "every result acknowledged",
        )
        done = time.time()
        plan_at = None if kill else await plan_task
        plan_task.cancel()
        items = self.latest(names)
        if plan_at is not None:
            phase.figures["webhook_to_plan_s"] = round(plan_at - sent, 2)
        with contextlib.suppress(httpx.HTTPError):  # the server's side of it: its runs
            if kill:  # a restarted server counts from zero
                raise httpx.HTTPError("restarted")
            runs_after = await self.reconcile_seconds()
            phase.figures["reconciles"] = int(runs_after[1] - runs_before[1])
            phase.figures["reconcile_s"] = round(runs_after[0] - runs_before[0], 2)
        if received is not None:
            phase.figures["webhook_to_all_received_s"] = round(
                max(i.at for i in items.values()) - sent, 2
            )
        if acked is not None:
            phase.figures["webhook_to_all_acked_s"] = round(done - sent, 2)
        phase.figures["changed"] = len(names)
        phase.figures["received"] = len(items)
        phase.figures["acked"] = sum(1 for i in items.values() if i.acknowledged)
        phase.figures["lost"] = len(names) - phase.figures["acked"]
        # Insert -> pickup, from the server's own command.created events (same clock).
        inserted: dict[str, float] = {}
        try:
            events = await self.events()
        except httpx.HTTPError as exc:
            self.notes.append(f"{phase.name}: the event log did not answer ({exc!r})")
            events = []
        for event in events:
            if event["kind"] == "command.created":
                when = datetime.fromisoformat(event["time"]).timestamp()
                inserted[str(event["fields"].get("command"))] = when
        phase.pickup_insert.extend(
            i.at - inserted[i.command.id] for i in items.values() if i.command.id in inserted
        )

    # ------------------------------------------------------------------ the run

    async def bootstrap(self) -> None:
        sem = asyncio.Semaphore(32)
        creds: list[BootstrapResponse | None] = [None] * self.n

        async def one(i: int) -> None:
            async with sem:
                r = await self.admin.post("/v1/agent-tokens")
                r.raise_for_status()
                token = r.json()["token"]
                body = BootstrapRequest(token=token, hostname=f"sim-{i:05d}")
                self.fleet.phase.requests["bootstrap"] += 1
                r = await self.admin.post("/v1/agent/bootstrap", json=body.model_dump(mode="json"))
                if r.status_code != 201:
                    raise SystemExit(f"bootstrap refused: {r.status_code} {r.text}")
                creds[i] = BootstrapResponse.model_validate_json(r.content)
                # Running at once, as the real agent starts its loops once bootstrapped: a
                # fleet's long polls begin as spread as its bootstraps (started all at the
                # end, 5,000 polls came back empty within the same 9 s, every 30 s).
                agent = slots[i] = SimAgent(self.fleet, i, creds[i])  # type: ignore[arg-type]
                self.tasks.append(asyncio.create_task(agent.heartbeat_loop()))
                self.tasks.append(asyncio.create_task(agent.poll_loop()))

        slots: list[SimAgent | None] = [None] * self.n
        await asyncio.gather(*(one(i) for i in range(self.n)))
        self.fleet.agents.extend(a for a in slots if a is not None)
        agents = self.fleet.agents
        self.owner = {name: agents[i % self.n].id for i, name in enumerate(self.names)}

    async def run(self) -> dict[str, Any]:
        args, fleet = self.args, self.fleet
        self.server.start()
        await self.server.ready()
        sampler = asyncio.create_task(fleet.sampler())
        try:
            fleet.begin("bootstrap")
            await self.bootstrap()
            # Every agent has reported once before anything is measured (it is offline
            # until then, and its first report is the "online" one, not a heartbeat).
            await asyncio.sleep(args.heartbeat + 1)
            await self.events()
            fleet.begin("idle")
            await self.window()
            if not args.idle_only and self.d:
                fleet.begin("rollout")
                await self.rollout_like(self.names, f"{self.d} deployments")
                fleet.begin("steady")
                await self.window()
                tenth = max(1, self.d // 10)
                fleet.begin("push")
                await self.rollout_like(self.names[:tenth], f"change {tenth}")
                if args.kill:
                    await asyncio.sleep(args.heartbeat)  # back to steady load first
                    fleet.begin("kill")
                    await self.rollout_like(
                        self.names[tenth : 2 * tenth] or self.names[:tenth],
                        f"change {tenth} more",
                        kill=True,
                    )
            fleet.end()
            if not args.idle_only and self.d:
                await self.check_server_view()
        except (httpx.HTTPError, SystemExit) as exc:
            # An overloaded server that stops answering the admin API is a finding: the
            # phases so far are reported, with the reason the run stopped.
            self.notes.append(f"{fleet.phase.name}: run stopped: {exc!r}")
        finally:
            await self.teardown(sampler)
        return self.result()

    async def teardown(self, sampler: asyncio.Task[None]) -> None:
        """Stop the agents fast: the server goes first (kill -9: its data dir is thrown
        away), so held long polls fail at once instead of running out their wait; what
        fails from here on is counted in no phase."""
        fleet = self.fleet
        fleet.end()
        if fleet.profiler is not None:
            fleet.profiler.stop()
            fleet.profiler = None
        fleet.phase = Phase("teardown")
        fleet.stop.set()
        if self.server.proc is not None and self.server.proc.poll() is None:
            self.server.kill()
        _done, pending = await asyncio.wait([*self.tasks, sampler], timeout=15)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        await asyncio.gather(
            *(a.http.aclose() for a in fleet.agents), self.admin.aclose(), return_exceptions=True
        )

    async def check_server_view(self) -> None:
        """The server's own account once the agents have reported their last state: every
        deployment in sync, every last command done (two heartbeats' grace)."""
        deadline = time.monotonic() + 2 * self.args.heartbeat + 5
        while True:
            r = await self.admin.get("/v1/deployments")
            r.raise_for_status()
            views = r.json()["deployments"]
            in_sync = sum(1 for v in views if v["in_sync"])
            states = Counter((v["last_command"] or {}).get("state", "none") for v in views)
            self.server_view = {
                "deployments": len(views),
                "in_sync": in_sync,
                "last_command": dict(states),
            }
            if in_sync == len(views) == self.d or time.monotonic() > deadline:
                return
            await asyncio.sleep(1.0)

    def result(self) -> dict[str, Any]:
        fleet = self.fleet
        twice = {k: v for k, v in fleet.by_spec.items() if len(v) > 1}
        received = fleet.received.values()
        return {
            "agents": self.n,
            "deployments": self.d,
            "heartbeat_s": self.args.heartbeat,
            "ack_delay_s": self.args.ack_delay,
            "server_settings": self.settings,
            "phases": {p.name: p.summary() for p in fleet.phases},
            "commands_received": len(fleet.received),
            "commands_acknowledged": sum(1 for i in received if i.acknowledged),
            "commands_accepted_twice": sum(1 for i in received if i.acked > 1),
            "duplicate_results": sum(i.duplicates for i in received),
            "server_view": self.server_view,
            "specs_issued_twice": len(twice),
            "digest_acks": fleet.digests_acked,
            "notes": self.notes,
        }


# -- the report --------------------------------------------------------------------------------


def _verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "missed (no figure)"
    return "met" if value <= goal else "missed"


def _in_ms(value: float | None) -> str:
    """A figure kept in ms, shown as ``ms()`` shows seconds ("-" when not measured)."""
    return ms(None if value is None else value / 1000)


def _report_errors(p: dict[str, Any]) -> str:
    errors = p["errors"].items()
    return ", ".join(f"{k.removeprefix('report: ')} ×{n}" for k, n in errors if k[:7] == "report:")


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, measured, goal with met/missed), in the order of issue 17's table."""
    n, d, ph = r["agents"], r["deployments"], r["phases"]
    rows: list[tuple[str, str, str]] = []

    def hb(p: dict[str, Any]) -> str:
        failed = sum(n for k, n in p["errors"].items() if k.startswith("report:"))
        if p["heartbeats"]:
            answered = f"p50 {p['heartbeat_p50_ms']} ms, p99 {p['heartbeat_p99_ms']} ms"
        else:
            answered = "no heartbeat answered"
        if failed:
            answered += f" ({failed} failed: {_report_errors(p)})"
        return (
            f"{answered}, server CPU {p['server_cpu_pct']}%, RSS {p['server_rss_mb']} MB "
            f"(sim CPU {p['sim_cpu_pct']}%, loop lag p99 {p['loop_lag_p99_ms']} ms)"
        )

    def p99(p: dict[str, Any]) -> float | None:
        """The p99 heartbeat, a failed one counting as slower than any goal."""
        v = p.get("heartbeat_p99_ms")
        failed = sum(n for k, n in p["errors"].items() if k.startswith("report:"))
        if failed > 0.01 * (p["heartbeats"] + failed):
            return float("inf")
        return None if v is None else v / 1000

    if "idle" in ph:
        p = ph["idle"]
        rows.append(
            (
                f"{n:,} idle agents, heartbeat every {r['heartbeat_s']:g} s",
                hb(p),
                f"p99 ≤ 1 s: {_verdict(p99(p), 1.0)}",
            )
        )
    if "rollout" in ph:
        p = ph["rollout"]
        rows.append(
            (
                f"first rollout of {d:,} deployments → all acknowledged "
                f"(ack delay {r['ack_delay_s']:g} s)",
                ms(p.get("webhook_to_all_acked_s")),
                f"≤ 30 s: {_verdict(p.get('webhook_to_all_acked_s'), 30)}",
            )
        )
    if "steady" in ph:
        p = ph["steady"]
        cpu = p["server_cpu_pct"]
        ok = _verdict(p99(p), 0.2) == "met" and cpu <= 40
        rows.append(
            (
                f"the same agents running {d:,} deployments between them",
                hb(p),
                f"p99 ≤ 200 ms, CPU ≤ 40%: {'met' if ok else 'missed'}",
            )
        )
    if "push" in ph:
        p = ph["push"]
        k = p.get("changed", 0)
        rows.append(
            (
                f"push touching {k:,} of {d:,} deployments, webhook → plan stored",
                ms(p.get("webhook_to_plan_s")),
                f"≤ 1 s: {_verdict(p.get('webhook_to_plan_s'), 1)}",
            )
        )
        rows.append(
            (
                "→ every affected agent has its command",
                ms(p.get("webhook_to_all_received_s")),
                f"≤ 3 s: {_verdict(p.get('webhook_to_all_received_s'), 3)}",
            )
        )
        created = p.get("pickup_created_p99_ms")
        rows.append(
            (
                "a command created → the long-polling agent receives it",
                f"p50 {_in_ms(p.get('pickup_created_p50_ms'))}, p99 {_in_ms(created)} (its "
                f"`created` field); from the insert: p50 {_in_ms(p.get('pickup_insert_p50_ms'))}, "
                f"p99 {_in_ms(p.get('pickup_insert_p99_ms'))}",
                f"p99 ≤ 1 s: {_verdict(None if created is None else created / 1000, 1)}",
            )
        )
        rows.append(("→ every result acknowledged", ms(p.get("webhook_to_all_acked_s")), ""))
    if "kill" in ph:
        p = ph["kill"]
        lost = p.get("lost")
        rows.append(
            (
                "server `kill -9` under load → ready again",
                f"{ms(p.get('kill_to_ready_s'))}, {lost} of {p.get('changed')} commands lost "
                f"({p.get('received_before_kill')} received before the kill)",
                f"keep, none lost: {'met' if lost == 0 else 'missed'}",
            )
        )
    twice = r["specs_issued_twice"]
    rows.append(
        (
            "the same spec issued and applied twice",
            f"{twice} (of {r['commands_received']:,} commands received)",
            f"never: {'met' if twice == 0 else 'missed'}",
        )
    )
    return rows


def _phase_figures(p: dict[str, Any]) -> str:
    """A phase's own figures (push times, pickups, specs issued twice), as key=value."""
    common = Phase("").summary().keys()
    return ", ".join(f"{k}={v}" for k, v in p.items() if k not in common and k != "profile")


def print_report(results: list[dict[str, Any]], env: dict[str, Any]) -> None:
    print(
        f"fleet-bench: {env['cpus']} CPUs, load average {env['loadavg_before']} before, "
        f"{env['loadavg_after']} after; file-handle limit {env['nofile']}"
    )
    for r in results:
        print()
        print(
            f"## {r['agents']:,} agents, {r['deployments']:,} deployments "
            f"(heartbeat {r['heartbeat_s']:g} s, ack delay {r['ack_delay_s']:g} s)"
        )
        print()
        print("| figure | measured | goal |")
        print("|---|---|---|")
        for figure, measured, goal in table_rows(r):
            print(f"| {figure} | {measured} | {goal} |")
        print()
        print(
            f"commands: {r['commands_received']} received, {r['commands_acknowledged']} "
            f"acknowledged, {r['commands_accepted_twice']} accepted twice; "
            f"{r['duplicate_results']} duplicate results; "
            f"{r['digest_acks']} heartbeats acknowledged by digest; the server's view at the "
            f"end: {r['server_view']}"
        )
        for name, p in r["phases"].items():
            errors = ", ".join(f"{k} ×{v}" for k, v in p["errors"].items()) or "none"
            print(
                f"- {name}: {p['seconds']} s, {p['heartbeats']} heartbeats "
                f"(p50 {p['heartbeat_p50_ms']} ms, p99 {p['heartbeat_p99_ms']} ms, "
                f"max {p['heartbeat_max_ms']} ms), requests {p['requests']}, errors: {errors}; "
                f"server CPU {p['server_cpu_pct']}%, RSS {p['server_rss_mb']} MB; "
                f"sim CPU {p['sim_cpu_pct']}%, loop lag p99 {p['loop_lag_p99_ms']} ms"
                + (f"; {extra}" if (extra := _phase_figures(p)) else "")
            )
        for name, p in r["phases"].items():
            if "profile" in p:
                prof = p["profile"]
                ours = "; ".join(f"{t['function']} {t['share_pct']}%" for t in prof["ours"])
                leaves = "; ".join(f"{t['function']} {t['share_pct']}%" for t in prof["leaves"])
                print(f"- py-spy, {name}, {prof['samples']} samples: ours (inclusive): {ours}")
                print(f"  leaves (self): {leaves}")
        for note in r["notes"]:
            print(f"note: {note}")


# -- main --------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"fleet sizes must be at least 1: {text!r}")
    return sizes


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--agents", type=_sizes, default=[100, 1000], help="sizes, e.g. 100,1000")
    p.add_argument(
        "--deployments", type=int, default=None, help="deployments (default: the agent count)"
    )
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    p.add_argument("--poll-wait", type=float, default=30.0, help="long-poll seconds")
    p.add_argument(
        "--ack-delay", type=float, default=0.5, help="seconds an agent works on a command"
    )
    p.add_argument("--window", type=float, default=30.0, help="seconds of the heartbeat phases")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a push phase may take in all"
    )
    p.add_argument("--poll-interval", type=float, default=0.0, help="the server's timer (0: off)")
    p.add_argument("--kill", action="store_true", help="add the kill -9 phase")
    p.add_argument("--idle-only", action="store_true", help="stop after the idle phase")
    p.add_argument("--database", default=None, help="passed to `reconcile serve --database`")
    p.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server.yaml setting (repeatable), e.g. keep_alive=15",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20 agents and deployments, 2 s heartbeats, 4 s windows",
    )
    p.add_argument(
        "--trace",
        type=pathlib.Path,
        default=None,
        help="write every heartbeat (phase, monotonic start, seconds) to this JSON file",
    )
    p.add_argument(
        "--py-spy",
        type=pathlib.Path,
        default=None,
        metavar="DIR",
        help="sample the server with py-spy in each measured phase; stacks go to DIR",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--tmpdir", default=None, help="where the temp dir goes")
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        defaults = {
            "--agents": ("agents", [20]),
            "--heartbeat": ("heartbeat", 2.0),
            "--window": ("window", 4.0),
            "--ack-delay": ("ack_delay", 0.2),
            "--poll-wait": ("poll_wait", 10.0),
            "--timeout": ("timeout", 120.0),
        }
        for flag, (dest, value) in defaults.items():
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(args, dest, value)
    args.settings = dict(args.settings)
    for name in ("heartbeat", "poll_wait", "window", "timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.ack_delay < 0:
        p.error("--ack-delay must not be negative")
    if args.deployments is not None and args.deployments < 0:
        p.error("--deployments must not be negative")
    return args


async def _main(args: argparse.Namespace, base: pathlib.Path) -> list[dict[str, Any]]:
    results = []
    for n in args.agents:
        size_dir = base / f"fleet-{n}"
        size_dir.mkdir()
        results.append(await Run(size_dir, args, n).run())
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size in turn; the JSON report."""
    nofile = raise_file_limit()
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=args.tmpdir))
    env: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "nofile": nofile,
    }
    try:
        results = _asyncio_run(_main(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"environment": env, "results": results}


def _asyncio_run(coro: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """With uvloop when installed (uvicorn's extra): the simulator's CPU is the server's
    to lose on a 2-core machine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    global TRACE
    if args.trace is not None:
        TRACE = []
    report = run(args)
    if args.trace is not None and TRACE is not None:
        args.trace.write_text(json.dumps(TRACE))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report["results"], report["environment"])


if __name__ == "__main__":
    main()
