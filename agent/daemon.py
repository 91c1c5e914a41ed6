"""``reconcile-agent``: the host daemon that long-polls the control plane and applies.

Start-up bootstraps once (the one-time token buys an ``agt_`` id and a secret, kept 0600
in ``<state dir>/agent/credentials.json``), then two loops run side by side:

* the main loop long-polls ``GET /v1/agent/commands`` and carries out each command it
  has not already started or finished (:class:`agent.runner.CommandRunner`, the same
  executor as ``reconcile apply``), journals it (:mod:`agent.journal`) and posts the
  result, then reports the new state at once;
* a heartbeat thread posts the host's actual state every ``heartbeat_seconds`` (the
  server's number), with the ids of the commands in progress.

Every failure to reach the control plane is survived: connection errors and 5xx back
off exponentially with full jitter (0.5 s doubling to 30 s, reset after a success); a
refused secret is logged and retried slowly (the server may have lost its store; the
credentials are kept).  SIGTERM/SIGINT stop the loop: an idle poll is dropped at once, a
command in progress is finished (a second signal abandons it; the server hands it out
again and the executor's actions are idempotent), and the exit code is 0.

Before anything is sent, the control plane's certificate trust is settled
(:mod:`agent.tls`: the system's CAs, ``--ca-file`` or ``--server-fingerprint``), and
plain HTTP to another machine is warned about.  A command is never trusted to be well
formed: one that does not parse is answered with a failed result and journaled, and one
the agent died in twice is failed instead of run again (``MAX_INTERRUPTED``).

Only the stdlib, httpx and pydantic are imported at start; Docker and Compose come in
with the first command or heartbeat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import pathlib
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from agent.cadence import Cadence
from agent.client import (
    AgentClient,
    AgentClientError,
    Backoff,
    Credentials,
    ProtocolError,
    RefusedCommand,
    Unauthorized,
    Unavailable,
    credentials_path,
    load_credentials,
    save_credentials,
)
from agent.journal import Journal, JournalEntry
from agent.progress import ProgressForwarder
from agent.runner import CommandRunner
from agent.tls import TrustError, agent_trust
from reconciler.model.agentapi import AgentReport, Command, CommandResult, state_digest
from reconciler.model.logformat import LOG_FORMATS, LogFormat, formatter
from reconciler.model.secretenv import SecretEnvError, secret_from_env

if TYPE_CHECKING:
    from agent.executor import StepEvent
    from reconciler.model.state import AgentState

__all__ = [
    "EXIT_SETUP",
    "Agent",
    "BootstrapRefused",
    "SetupError",
    "ensure_credentials",
    "main",
]

log = logging.getLogger("reconcile-agent")

EXIT_SETUP = 2  # a refused token, or nothing to start with: no point in restarting
UNAUTHORIZED_RETRY = 60.0  # seconds between tries while the server refuses our secret
MIN_EMPTY_POLL = 1.0  # an empty long poll is never repeated faster than this
MIN_DEFAULT_PARALLEL = 4  # as agent.executor's: deploys mostly wait, so more than the cores
# A command during which this many agent processes died (a crash, an OOM kill, a restart)
# is failed instead of started again: the first death may be a reboot, a second in the
# same command is the command.  Without it one poisoned command crash-loops the agent.
MAX_INTERRUPTED = 2
ClientFactory = Callable[[str, Credentials | None], AgentClient]


class SetupError(Exception):
    """The agent cannot start (no server, no credentials and no token): exit 2."""


class BootstrapRefused(SetupError):
    """The server refused the one-time token: used, expired or unknown.  Exit 2."""


class _Interrupted(BaseException):
    """Raised from the signal handler to drop an idle long poll (or, on a second signal,
    the command in progress)."""


def _version() -> str:
    from reconciler import __version__

    return __version__


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------- bootstrap


def ensure_credentials(
    state_dir: pathlib.Path,
    server: str | None,
    token: str | None,
    *,
    hostname: str = "",
    make_client: ClientFactory | None = None,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
    retry: bool = True,
) -> Credentials:
    """Stored credentials, or new ones bought with the one-time token (once, ever).

    A refused token raises :class:`BootstrapRefused`: retrying cannot help, the operator
    needs a new token.  An unreachable server is retried with backoff (the token lives
    ten minutes) unless ``retry`` is false.
    """
    stored = load_credentials(state_dir)
    if stored is not None:
        if server and server.rstrip("/") != stored.server:
            log.info("control plane is now %s (was %s)", server.rstrip("/"), stored.server)
            stored = stored.model_copy(update={"server": server.rstrip("/")})
            save_credentials(state_dir, stored)
        return stored
    path = credentials_path(state_dir)
    if not server:
        raise SetupError(
            f"no credentials in {path} and no control plane given: "
            "pass --server URL (or set RECONCILE_SERVER)"
        )
    if not token:
        raise SetupError(
            f"no credentials in {path} yet: pass the one-time bootstrap token with --token "
            "(or RECONCILE_AGENT_TOKEN); it is needed only once"
        )
    backoff = backoff or Backoff()
    stop = stop or threading.Event()
    client = (make_client or AgentClient)(server, None)
    try:
        while True:
            try:
                answer = client.bootstrap(token, hostname)
                break
            except (Unauthorized, ProtocolError) as exc:
                raise BootstrapRefused(
                    f"the control plane refused the bootstrap token ({exc}); tokens are "
                    "single-use and expire after 10 minutes: ask for a new one"
                ) from None
            except Unavailable as exc:
                if not retry:
                    raise
                delay = backoff.next()
                log.warning("bootstrap: %s; retrying in %.1f s", exc, delay)
                if stop.wait(delay):
                    raise SetupError("stopped before the bootstrap finished") from None
    finally:
        client.close()
    creds = Credentials(server=server.rstrip("/"), agent_id=answer.agent_id, secret=answer.secret)
    save_credentials(state_dir, creds)
    log.info(
        "bootstrapped: this agent is %s (credentials in %s); map it in reconcile.yaml: "
        "agents: {%s: %s}",
        creds.agent_id,
        path,
        _alias(hostname),
        creds.agent_id,
    )
    return creds


def _alias(hostname: str) -> str:
    alias = "".join(c if c.isalnum() or c in "-_" else "-" for c in hostname.lower()).strip("-")
    return alias or "host1"


# --------------------------------------------------------------------- the loops


@dataclass
class Agent:
    """The two loops around one :class:`AgentClient`; every real part is injectable."""

    client: AgentClient
    journal: Journal
    runner: CommandRunner
    observe: Callable[[], AgentState]
    agent_id: str
    poll_wait: float = 30.0
    hostname: str = ""
    version: str = ""
    heartbeat_seconds: float = 10.0
    repair_seconds: float = 30.0  # proxy/Tor housekeeping between commands; 0: never
    backoff: Backoff = field(default_factory=Backoff)
    now: Callable[[], dt.datetime] = _now
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Interruptible sleep: True when stopped meanwhile (tests record the delays instead).
    wait: Callable[[float], bool] | None = None
    # Commands carried out at once, each for its own deployment; 0: the core count, at
    # least 4 (``reconcile apply --parallel`` defaults to more: see executor.default_parallel).
    max_parallel: int = 0

    def __post_init__(self) -> None:
        if self.wait is None:
            self.wait = self.stop_event.wait
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._expired_seen: set[str] = set()
        self._started: set[str] = set()  # command ids this process has started
        self._refused_seen: set[str] = set()  # commands with an unusable id, logged once
        self._heartbeat_wake = threading.Event()
        # One report at a time, each observed after the previous one was answered: the
        # server relies on it (a report counted after a result was observed after it; see
        # reconciler.server.store.Store.create_commands), and the digest below is per report.
        self._report_lock = threading.Lock()
        self._acked_digest: str | None = None  # the state digest the server last held
        self._interruptible = False
        self._signals = 0
        self._abandoned: list[str] = []
        self._undelivered = False  # a result post failed: retry after the next good poll
        self._unavailable = False
        self._last_prune = 0.0
        self._last_repair = time.monotonic()  # the first command sets the host up anyway
        self.executed: list[str] = []  # command ids carried out by this process, in order
        if self.max_parallel <= 0:
            self.max_parallel = max(MIN_DEFAULT_PARALLEL, os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(self.max_parallel)
        self._deployments: set[str] = set()  # deployment ids with a command in progress
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------ control

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()
        self._heartbeat_wake.set()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        self.stop()
        if self._interruptible and not self.running():
            # In the long poll with nothing in progress.  With commands in progress
            # (they run beside the poll now), the first signal lets them finish below.
            raise _Interrupted
        if self._signals == 1:
            with self._lock:
                busy = sorted(self._running)
            if busy:
                log.info(
                    "%s: finishing command %s, then exiting (send it again to abandon it: "
                    "the control plane hands it out again)",
                    name,
                    ", ".join(busy),
                )
            return
        self._abandoned = self.running()
        log.info("%s again: abandoning the command in progress", name)
        raise _Interrupted

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    # ------------------------------------------------------------ main loop

    def run(self, *, once: bool = False) -> int:
        """Until stopped (or, with ``once``, until nothing is pending).  The exit code."""
        heartbeat: threading.Thread | None = None
        try:
            self.runner.clean_scratch()
            self._prune()
            self.repost_unacked()
            if once:
                return self._run_once()
            heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            heartbeat.start()
            while not self.stopping:
                self.poll_once(self.poll_wait, background=True)
                self._prune()
            self._join_workers()  # a first signal finishes the commands in progress
            return 0
        except _Interrupted:
            if self._abandoned:
                log.info(
                    "command %s abandoned: it is redone when the agent is back",
                    ", ".join(self._abandoned),
                )
            return 0
        finally:
            self.stop()
            if heartbeat is not None:
                heartbeat.join(timeout=5)
            if not once:
                log.info("agent %s stopped", self.agent_id)

    def _run_once(self) -> int:
        """Poll without waiting until a poll brings nothing new; post; report; exit."""
        ok = True
        for _round in range(100):
            if self.stopping:
                break
            try:
                batch = self.client.commands(0)
            except AgentClientError as exc:
                log.error("control plane: %s", exc)
                return 1
            self._heard(batch.heartbeat_seconds)
            for bad in batch.refused:
                self.refuse(bad)
            ran = [o for o in self._handle_all(batch.commands, background=False) if o == "ran"]
            if not ran:
                break
        ok = self.repost_unacked() and ok
        ok = self.send_report() and ok
        return 0 if ok else 1

    def poll_once(self, wait: float, *, background: bool = False) -> None:
        """One long poll and the commands it brings; failures wait before returning.

        Commands for different deployments run side by side, up to ``max_parallel``.
        ``background``: return once they have started (the daemon loop), so the next poll
        can bring a command for another deployment while these settle; otherwise wait
        for them.
        """
        self._interruptible = True
        started = time.monotonic()
        try:
            if self.stopping:
                return
            batch = self.client.commands(wait)
        except Unavailable as exc:
            self._interruptible = False
            self._wait_retry(exc)
            return
        except Unauthorized as exc:
            self._interruptible = False
            log.error(
                "the control plane refused this agent's credentials (%s: %s); keeping them and "
                "retrying every %.0f s.  If the server lost its store, stop the agent, delete "
                "%s and start it with a new --token",
                self.agent_id,
                exc,
                UNAUTHORIZED_RETRY,
                credentials_path(self.runner.state_dir),
            )
            self._sleep(UNAUTHORIZED_RETRY)
            return
        except ProtocolError as exc:
            self._interruptible = False
            log.error("control plane: %s", exc)
            self._wait_retry(exc, quiet=True)
            return
        finally:
            self._interruptible = False
        self._heard(batch.heartbeat_seconds)
        for bad in batch.refused:
            self.refuse(bad)
        outcomes = self._handle_all(batch.commands, background=background)
        if "abandoned" in outcomes:  # the server went away mid-command
            self._wait_retry(Unavailable("the bundle download failed"), quiet=True)
            return
        if batch.commands or self._undelivered:
            self.repost_unacked()
        if "ran" not in outcomes and wait >= 1 and time.monotonic() - started < MIN_EMPTY_POLL:
            # Nothing new, at once: a server (or a proxy in front of it) that does not hold the
            # poll, or keeps listing what we skip (clock skew on a deadline), must not turn the
            # loop into a busy one.
            self._sleep(MIN_EMPTY_POLL)

    def _heard(self, heartbeat_seconds: float) -> None:
        if self._unavailable:
            log.info(
                "control plane reachable again",
                extra={"fields": {"event": "agent.state", "state": "connected"}},
            )
        self._unavailable = False
        self.backoff.reset()
        if heartbeat_seconds > 0:
            self.heartbeat_seconds = heartbeat_seconds

    def _wait_retry(self, exc: Exception, *, quiet: bool = False) -> None:
        delay = self.backoff.next()
        if not self._unavailable and not quiet:
            log.warning(
                "control plane unavailable: %s; retrying with backoff",
                exc,
                extra={"fields": {"event": "agent.state", "state": "unavailable"}},
            )
        else:
            log.debug("control plane still unavailable: %s; retrying in %.1f s", exc, delay)
        self._unavailable = True
        self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        assert self.wait is not None
        self.wait(seconds)

    # ------------------------------------------------------------ commands

    def _handle_all(self, commands: Sequence[Command], *, background: bool) -> list[str]:
        """Each deployment's commands in order, deployments side by side.  A deployment
        with a command in progress (from an earlier poll) is left for a later poll: the
        server lists its commands until their results arrive."""
        groups: dict[str, list[Command]] = {}
        for command in commands:
            groups.setdefault(command.action.id, []).append(command)
        with self._lock:
            groups = {k: v for k, v in groups.items() if k not in self._deployments}
            self._deployments.update(groups)
        if len(groups) == 1 and not background:
            # One deployment: in this thread, where a second signal can abandon it.
            ((dpl_id, group),) = groups.items()
            return self._handle_group(dpl_id, group, slot=False)
        outcomes: list[str] = []
        threads = []
        for dpl_id, group in groups.items():
            self._slots.acquire()
            thread = threading.Thread(
                target=lambda d=dpl_id, g=group: outcomes.extend(self._handle_group(d, g)),
                name=f"command-{dpl_id}",
                daemon=True,  # a second signal exits without them: redone when back
            )
            thread.start()
            threads.append(thread)
        if background:
            self._workers = [t for t in [*self._workers, *threads] if t.is_alive()]
            return ["started"] * len(threads)
        for thread in threads:
            thread.join()
        return outcomes

    def _handle_group(
        self, dpl_id: str, group: Sequence[Command], *, slot: bool = True
    ) -> list[str]:
        outcomes: list[str] = []
        try:
            for command in group:
                if self.stopping:
                    break
                outcomes.append(self.handle(command))
                if outcomes[-1] == "abandoned":
                    break
        finally:
            with self._lock:
                self._deployments.discard(dpl_id)
            if slot:
                self._slots.release()
        return outcomes

    def _join_workers(self) -> None:
        for thread in self._workers:
            thread.join()
        self._workers = []

    # ------------------------------------------------------------ one command

    def handle(self, command: Command) -> str:
        """Carry out ``command`` unless it is running, done or expired.  What happened:
        ``ran``, ``running``, ``done``, ``expired`` or ``abandoned``."""
        with self._lock:
            if command.id in self._running:
                return "running"
        entry = self.journal.get(command.id)
        if entry is not None and entry.status == "done":
            if not entry.acked:
                self._post(entry)  # the server still lists it: our result did not arrive
            return "done"
        if command.deadline <= self.now():
            if command.id not in self._expired_seen:
                self._expired_seen.add(command.id)
                log.warning(
                    "command %s %s %s: deadline %s passed; not started",
                    command.id,
                    command.kind,
                    command.action.deployment,
                    command.deadline.isoformat(),
                )
            return "expired"
        interrupted = 0
        if entry is not None and entry.status == "running":
            interrupted = entry.interrupted + (command.id not in self._started)
            if interrupted >= MAX_INTERRUPTED:
                return self._give_up(command, interrupted)
            log.info(
                "command %s %s %s: interrupted earlier (attempt %d); redoing it",
                command.id,
                command.kind,
                command.action.deployment,
                entry.attempts,
            )
        self.journal.start(command, interrupted=interrupted)
        self._started.add(command.id)
        with self._lock:
            self._running.add(command.id)
        log.info(
            "command %s %s %s: started%s",
            command.id,
            command.kind,
            command.action.deployment,
            f" ({command.action.reason})" if command.action.reason else "",
            extra={
                "fields": {
                    "event": "command.start",
                    "command": command.id,
                    "kind": command.kind,
                    "deployment": command.action.deployment,
                    "reason": command.action.reason,
                    "commit": command.revision,
                }
            },
        )
        try:
            result = self.runner.run(command)
        except Unavailable as exc:
            log.warning(
                "command %s %s %s: abandoned (%s); it is redone when the control plane "
                "hands it out again",
                command.id,
                command.kind,
                command.action.deployment,
                exc,
            )
            return "abandoned"
        except Exception as exc:  # the runner types its failures; this is a bug: survive it
            log.exception("command %s: the runner raised", command.id)
            result = CommandResult(ok=False, message=f"agent error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.discard(command.id)
        self.executed.append(command.id)
        done = self.journal.finish(command.id, result)
        log.info(
            "command %s %s %s: %s %s (%.1f s)%s",
            command.id,
            command.kind,
            command.action.deployment,
            "ok" if result.ok else "FAILED",
            result.message,
            result.seconds,
            "; rolled back" if result.rolled_back and "restored" not in result.message else "",
            extra={
                "fields": {
                    "event": "command.result",
                    "command": command.id,
                    "kind": command.kind,
                    "deployment": command.action.deployment,
                    "ok": result.ok,
                    "rolled_back": result.rolled_back,
                    "seconds": round(result.seconds, 3),
                    "message": result.message,
                }
            },
        )
        if not result.ok and result.logs:
            for line in result.logs.strip().splitlines()[-10:]:
                log.info("  %s | %s", command.action.deployment, line)
        self._post(done)
        self.send_report()
        return "ran"

    def _give_up(self, command: Command, interrupted: int) -> str:
        """Fail a command that the agent died in ``interrupted`` times, without starting it."""
        result = CommandResult(
            ok=False,
            message=f"not run again: the agent stopped {interrupted} times while running this "
            "command (a crash, an OOM kill or a restart); see the agent's log",
        )
        log.error(
            "command %s %s %s: %s",
            command.id,
            command.kind,
            command.action.deployment,
            result.message,
        )
        self.journal.start(command, interrupted=interrupted)
        self._post(self.journal.finish(command.id, result))
        return "done"

    def refuse(self, bad: RefusedCommand) -> None:
        """Answer a command that is not valid with a failed result, once, and never run it.

        Journaled as done, so neither a restart nor the server listing it again replays
        it.  A command whose very id is unusable cannot be answered: it is logged once.
        """
        if bad.id is None:
            if bad.shown_id not in self._refused_seen:
                self._refused_seen.add(bad.shown_id)
                log.error(
                    "a command with id %s refused, not answerable: %s", bad.shown_id, bad.reason
                )
            return
        entry = self.journal.get(bad.id)
        if entry is not None and entry.status == "done":
            if not entry.acked:
                self._post(entry)
            return
        message = f"refused by the agent: not a valid command: {bad.reason}"
        log.error("command %s: %s", bad.id, message)
        self._post(self.journal.refuse(bad.id, CommandResult(ok=False, message=message)))

    def _post(self, entry: JournalEntry) -> bool:
        """Post a journaled result; True once the server has it (or refused it for good)."""
        assert entry.result is not None
        try:
            ack = self.client.post_result(entry.id, entry.result)
        except (Unavailable, Unauthorized) as exc:
            log.warning("result of %s not delivered yet (%s); will retry", entry.id, exc)
            self._undelivered = True
            return False
        except ProtocolError as exc:
            # 404/409/422: the server no longer wants it (expired, forgotten); stop trying.
            log.warning("result of %s refused by the control plane (%s); dropped", entry.id, exc)
            self.journal.ack(entry.id)
            return True
        self.journal.ack(entry.id)
        if ack.duplicate:
            log.debug("result of %s was already recorded", entry.id)
        return True

    def repost_unacked(self) -> bool:
        """Deliver the results a previous run (or a failed post) left unconfirmed."""
        ok = True
        self._undelivered = False
        for entry in self.journal.unacked():
            if self.stopping and not ok:
                break
            log.info("command %s: posting the result the control plane never confirmed", entry.id)
            ok = self._post(entry) and ok
        return ok

    def _prune(self) -> None:
        if time.monotonic() - self._last_prune < 3600 and self._last_prune:
            return
        self._last_prune = time.monotonic()
        try:
            removed = self.journal.prune()
        except OSError as exc:
            log.warning("journal prune failed: %s", exc)
            return
        if removed:
            log.debug("journal: pruned %d acknowledged entries", removed)

    # ------------------------------------------------------------ heartbeat

    def send_report(self) -> bool:
        """Post a heartbeat: the state's digest always, the state itself only when the
        server does not hold that digest already (see reconciler.model.agentapi)."""
        with self._report_lock:
            try:
                state = self.observe()
            except Exception as exc:  # observe reports an unreachable Docker as offline itself
                log.warning("observing the host failed: %s", exc)
                return False
            digest = state_digest(state)
            report = AgentReport(
                state=None if digest == self._acked_digest else state,
                state_digest=digest,
                running=self.running(),
                version=self.version,
                hostname=self.hostname,
                total_memory_mb=state.total_memory_mb,
                free_networks=state.free_networks,
            )
            try:
                ack = self.client.report(report)
                if report.state is None and ack.state_digest != digest:
                    # The server holds another state (restored, or it lost ours): at once.
                    ack = self.client.report(report.model_copy(update={"state": state}))
            except AgentClientError as exc:
                log.debug("heartbeat not delivered: %s", exc)
                self._acked_digest = None  # unknown what the server holds now
                return False
            self._acked_digest = ack.state_digest
            if ack.heartbeat_seconds > 0:
                self.heartbeat_seconds = ack.heartbeat_seconds
            return True

    def housekeeping(self) -> None:
        """Every ``repair_seconds``: the proxy and Tor sidecar repaired as on a local apply."""
        if self.repair_seconds <= 0 or time.monotonic() - self._last_repair < self.repair_seconds:
            return
        self._last_repair = time.monotonic()
        try:
            self.runner.housekeeping()
        except Exception:  # the heartbeat must outlive any one bad repair
            log.exception("housekeeping failed")

    def _heartbeat_loop(self) -> None:
        failures = Backoff(base=1.0, cap=30.0, rng=self.backoff._rng)
        # On this agent's own grid, not an interval after each answer: see agent.cadence.
        cadence = Cadence(self.heartbeat_seconds, time.monotonic(), self.backoff._rng)
        while not self.stopping:
            self.housekeeping()
            ok = self.send_report()
            now = time.monotonic()
            if ok:
                failures.reset()
                cadence.set_interval(self.heartbeat_seconds, now)
                delay = cadence.delay(now)
            else:
                delay = min(self.heartbeat_seconds, max(failures.next(), 0.5))
            self._heartbeat_wake.wait(delay)
            self._heartbeat_wake.clear()


# --------------------------------------------------------------------- the command line


def _at_least_one(text: str) -> float:
    value = float(text)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="reconcile-agent",
        description="The compose-reconciler host agent: long-polls the control plane "
        "(`reconcile serve`) and applies its commands on this Docker host.",
    )
    p.add_argument(
        "--server",
        default=env.get("RECONCILE_SERVER"),
        help="control plane URL, e.g. http://10.0.0.1:8000 (env RECONCILE_SERVER); "
        "optional once credentials exist",
    )
    p.add_argument(
        "--ca-file",
        type=pathlib.Path,
        default=env.get("RECONCILE_CA_FILE") or None,
        help="PEM file of the CA(s) that signed the control plane's certificate, instead "
        "of the system's (env RECONCILE_CA_FILE); needs an https:// server",
    )
    p.add_argument(
        "--server-fingerprint",
        default=env.get("RECONCILE_SERVER_FINGERPRINT") or None,
        help="pin the control plane's certificate by its SHA-256 fingerprint "
        "(env RECONCILE_SERVER_FINGERPRINT), e.g. for a self-signed one; needs https://",
    )
    p.add_argument(
        "--token",
        default=secret_from_env("RECONCILE_AGENT_TOKEN", env),
        help="one-time bootstrap token (env RECONCILE_AGENT_TOKEN, or a file named by "
        "RECONCILE_AGENT_TOKEN_FILE); used only while no credentials exist",
    )
    p.add_argument(
        "--state-dir",
        type=pathlib.Path,
        default=None,
        help="state dir (env RECONCILE_STATE_DIR; default /var/lib/reconciler as root, "
        "else $XDG_STATE_HOME/reconciler)",
    )
    p.add_argument(
        "--poll-wait",
        type=_at_least_one,
        default=30.0,
        help="long-poll seconds, at least 1 (default 30; the server may cap it)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a service without a healthcheck must run without a restart, unless the "
        "command says (default 2)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="commands carried out at once, each for its own deployment (default: the core "
        "count, at least 4)",
    )
    p.add_argument(
        "--repair-interval",
        type=float,
        default=30.0,
        help="seconds between repairs of the proxy and Tor sidecar while idle (default 30; "
        "0: only when a command runs)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="process the pending commands, report, and exit (0 when every result was delivered)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=env.get("RECONCILE_LOG_FORMAT") or "text",
        help="text (for a terminal or journalctl) or json (one object per line, for a log "
        "shipper); env RECONCILE_LOG_FORMAT; default text",
    )
    p.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"reconcile-agent (compose-reconciler) {_version()}",
    )
    return p


def _setup_logging(verbose: bool, log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, with_name=False))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "docker", "python_on_whales"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _on_step(event: StepEvent) -> None:
    log.info(
        "  %s: %s %s",
        event.deployment,
        event.step,
        event.detail,
        extra={
            "fields": {
                "event": "command.step",
                "deployment": event.deployment,
                "step": event.step,
                "detail": event.detail,
            }
        },
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The console script.  Exits 0 when stopped by a signal (or ``--once`` went well), 1
    on an error worth retrying later, 2 when it cannot start as configured."""
    try:
        parser = _parser()
    except SecretEnvError as exc:
        print(f"reconcile-agent: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_SETUP) from None
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:  # argparse checks choices, not the env default
        parser.error(
            f"RECONCILE_LOG_FORMAT={args.log_format!r}: choose from {', '.join(LOG_FORMATS)}"
        )
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    _setup_logging(args.verbose, args.log_format)
    stop = threading.Event()
    holder: list[Agent] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if holder:
            holder[0].on_signal(signum, frame)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _serve(args, stop, holder)
    finally:
        # Leave the process as we found it (main() also runs inside tests).
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        handlers, level = saved_logging
        root.handlers[:] = handlers
        root.setLevel(level)
    raise SystemExit(code)


def _trust(args: argparse.Namespace, state_dir: pathlib.Path) -> ssl.SSLContext | bool:
    """The trust settings for the server given, else the one the credentials name."""
    stored = load_credentials(state_dir)
    server = args.server or (stored.server if stored is not None else None)
    return agent_trust(server, args.ca_file, args.server_fingerprint)


def _serve(args: argparse.Namespace, stop: threading.Event, holder: list[Agent]) -> int:
    from agent.statedir import default_state_dir

    state_dir: pathlib.Path = args.state_dir or default_state_dir()
    hostname = socket.gethostname()
    version = _version()
    try:
        verify = _trust(args, state_dir)
    except TrustError as exc:
        log.error("%s", exc)
        return EXIT_SETUP
    except (ValueError, OSError) as exc:  # unreadable credentials, as ensure_credentials
        log.error("%s", exc)
        return 1

    def make_client(server: str, creds: Credentials | None) -> AgentClient:
        return AgentClient(server, creds, verify=verify, user_agent=f"reconcile-agent/{version}")

    try:
        creds = ensure_credentials(
            state_dir,
            args.server,
            args.token,
            hostname=hostname,
            make_client=make_client,
            stop=stop,
            retry=not args.once,
        )
    except SetupError as exc:
        if stop.is_set():
            return 0
        log.error("%s", exc)
        return EXIT_SETUP
    except (Unavailable, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 1

    client = make_client(creds.server, creds)

    def observe() -> AgentState:
        from agent.observe import observe_local

        return observe_local(state_dir=state_dir, agent=creds.agent_id)

    def fetch_bundle(command_id: str, target: pathlib.Path) -> None:
        client.download_bundle(command_id, target)

    forwarder = ProgressForwarder(client.post_progress)
    agent = Agent(
        max_parallel=args.parallel,
        client=client,
        journal=Journal(state_dir),
        runner=CommandRunner(
            state_dir,
            fetch_bundle,
            default_settle=args.settle,
            on_event=_on_step,
            on_progress=forwarder,
        ),
        observe=observe,
        agent_id=creds.agent_id,
        poll_wait=args.poll_wait,
        repair_seconds=args.repair_interval,
        hostname=hostname,
        version=version,
        stop_event=stop,
    )
    holder.append(agent)
    log.info(
        "agent %s (reconcile-agent %s) on %s: control plane %s, state dir %s",
        creds.agent_id,
        version,
        hostname,
        creds.server,
        state_dir,
    )
    try:
        return agent.run(once=args.once)
    finally:
        forwarder.close()
        client.close()


if __name__ == "__main__":
    main()
