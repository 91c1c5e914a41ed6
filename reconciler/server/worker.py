"""The reconcile loop of the control plane: one worker per source, and what one run does.

:class:`Worker` is the scheduling: single-flight and coalescing.  Any number of triggers
(webhooks, the timer, ``POST /v1/reconcile``, drift seen in an agent's report) collapse
into at most one running and one queued reconcile: the loop is level-triggered, so a
queued run always starts from the newest commit and two queued runs would do the same
work twice.

:class:`Reconciler` is one run, mirroring ``reconcile apply``'s pipeline with the store
in place of the local host: fetch the source -> load (an invalid repository changes
nothing: no commands, no prune, the last good plan stays) -> render -> actual state from
the agents' reports -> plan -> commands for the agents (deduplicated against what is
already on its way) -> wake the agents' long polls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import random
import secrets
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.load.buildcontext import context_size
from reconciler.load.catalog import Catalog
from reconciler.load.files import inside
from reconciler.model.agentapi import Command
from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY, link_scope
from reconciler.model.errors import InvalidSpec, ReconcilerError, TemporaryError
from reconciler.model.ids import LOCAL_AGENT
from reconciler.model.plan import Action
from reconciler.model.state import ActualState, AgentState
from reconciler.plan import PlanOptions, plan
from reconciler.plan.planner import drift
from reconciler.render import RenderContext, RenderedDeployment, agents_of, render_all
from reconciler.server.config import ServerConfig
from reconciler.server.forges import CommitStatuses
from reconciler.server.metrics import Metrics
from reconciler.server.notify import Notifier
from reconciler.server.progress import ProgressHub
from reconciler.server.store import AgentRow, Issued, NewCommand, Store

#: The shared values (:meth:`Store.put_shared`) a run leaves for every replica.
RENDERED_KEY = "rendered"
MASS_PRUNE_KEY = "mass_prune_once"

__all__ = [
    "ACTIONABLE",
    "LOCAL_REASON",
    "LOCAL_TRIGGERS",
    "LostLeadership",
    "Outcome",
    "Reconciler",
    "Worker",
    "build_bundle",
    "iso",
    "retry_delay",
    "trigger_kind",
]

log = logging.getLogger("reconciler.server")

ACTIONABLE = ("install", "update", "repair", "uninstall")
LOCAL_REASON = (
    "not served by the control plane (`local` is the host `reconcile apply` runs on); "
    "name an agt_ id, or an alias under `agents:` in reconcile.yaml"
)
#: After a failed command, drift reported for the same deployment waits this long before
#: it triggers a reconcile again (the timer still retries): no retry storm per heartbeat.
FAILURE_BACKOFF = 60.0
#: Seconds a replica trusts its copy of the rendered deployments before it asks the
#: store whether another replica's run replaced them.
RENDERED_RECHECK = 1.0
#: A command that failed is issued again only after 30 s, then 1, 2, 4, 8 and at most
#: 15 minutes (per deployment, spec and kind; a new spec is issued at once).
RETRY_BASE = 30.0
RETRY_MAX = 15 * 60.0


def retry_delay(failures: int) -> float:
    if failures <= 0:
        return 0.0
    return float(min(RETRY_MAX, RETRY_BASE * 2 ** (failures - 1)))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def run_result(outcome: Outcome) -> str:
    """The ``result`` label of ``reconcile_runs_total`` for one finished run."""
    if outcome.ok:
        return "ok"
    return "invalid" if outcome.problems else "failed"


def log_outcome(outcome: Outcome, seconds: float) -> None:
    """One line per reconcile, whatever its end: the server's log tells a push's story."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.summary.items()) if v) or "nothing"
    fields = {
        "event": "reconcile",
        "trigger": outcome.reason,
        "commit": outcome.revision,
        "result": run_result(outcome),
        "counts": dict(outcome.summary),
        "commands": len(outcome.commands),
        "duration": round(seconds, 3),
    }
    if outcome.ok:
        log.info(
            "reconcile (%s) at %s: %s; %d commands sent (%.2f s)",
            outcome.reason,
            (outcome.revision or "-")[:12],
            counts,
            len(outcome.commands),
            seconds,
            extra={"fields": fields},
        )
    elif outcome.problems:
        log.warning(
            "reconcile (%s) at %s: repository invalid, %d errors, nothing planned (%.2f s): %s",
            outcome.reason,
            (outcome.revision or "-")[:12],
            len(outcome.problems),
            seconds,
            outcome.problems[0],
            extra={"fields": {**fields, "errors": len(outcome.problems)}},
        )
    else:
        log.warning(
            "reconcile (%s) failed (%.2f s): %s",
            outcome.reason,
            seconds,
            outcome.error,
            extra={"fields": {**fields, "error": outcome.error}},
        )


def trigger_kind(reason: str) -> str:
    """The metric label of a trigger reason (``"webhook: github push"`` -> ``webhook``)."""
    return reason.split(":", 1)[0].strip() or "unknown"


# ---------------------------------------------------------------------------- worker

#: Triggers a follower keeps to itself: the leader has its own timer and its own start.
LOCAL_TRIGGERS = ("startup", "timer")


class LostLeadership(TemporaryError):
    """Another replica leads now: this run stops before it issues anything more."""


class Worker:
    """Single-flight, coalescing reconcile scheduler on one thread.

    ``trigger`` is thread-safe and returns at once.  While a run is in progress, every
    trigger lands in the one queued slot (its reasons are kept for the log); the timer
    (``poll_interval`` +-10% jitter, so a fleet of servers does not poll in lockstep)
    counts from the end of the last run.

    Leading edge now, trailing edge debounced: a trigger on an idle worker runs at once
    (a lone push is not delayed), but triggers that pile up during a run, or right after
    one, wait until they have been ``quiet`` for that long (at most ``max_delay`` after
    the first of them).  Single flight alone is not enough: a reconcile takes ~0.1 s, so
    100 webhooks spread over one second would still give ~10 runs; with the debounce
    they give two (the first, and one for everything after it).
    """

    def __init__(
        self,
        run: Callable[[str], object],
        *,
        poll_interval: float = 60.0,
        jitter: float = 0.1,
        quiet: float = 0.5,
        max_delay: float = 5.0,
        name: str = "reconcile-worker",
    ) -> None:
        self._run = run
        self._quiet = quiet
        self._max_delay = max_delay
        self._last_end: float | None = None  # when the last run ended (monotonic)
        self._last_trigger = 0.0
        self._first_queued = 0.0
        self._poll = poll_interval
        self._jitter = jitter
        self._name = name
        self._cond = threading.Condition()
        self._queued: list[str] = []
        self._running = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._next_timer: float | None = None
        self.runs = 0
        self.started_first = False  # the first run began
        self.last_error: str | None = None
        self._leading: Callable[[], bool] | None = None
        self._forward: Callable[[str], None] = lambda reason: None

    def follow(self, leading: Callable[[], bool], forward: Callable[[str], None]) -> None:
        """Run only while ``leading()`` (several replicas share one database, one of them
        reconciles); a trigger that arrives while another replica leads goes to
        ``forward`` (the leader's worker), and the timer does nothing here."""
        self._leading = leading
        self._forward = forward

    @property
    def leading(self) -> bool:
        """Whether this worker runs reconciles (always, unless it follows a leader)."""
        return self._leading is None or self._leading()

    def start(self, *, initial: str | None = "startup") -> None:
        if initial:
            self.trigger(initial)
        self._schedule_timer()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running or bool(self._queued)

    def trigger(self, reason: str) -> None:
        if not self.leading:
            if reason not in LOCAL_TRIGGERS:
                self._forward(reason)
            return
        with self._cond:
            now = time.monotonic()
            if not self._queued:
                self._first_queued = now
            self._last_trigger = now
            if reason not in self._queued and len(self._queued) < 20:
                self._queued.append(reason)
            self._cond.notify_all()

    def _ready_at(self) -> float:
        """When the queued triggers may run (call with the lock held)."""
        if self._last_end is None or self._first_queued - self._last_end >= self._quiet:
            return self._first_queued  # idle before this burst began: the leading edge
        return min(self._last_trigger + self._quiet, self._first_queued + self._max_delay)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing runs or is queued (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running or self._queued:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _schedule_timer(self) -> None:
        if self._poll <= 0:
            self._next_timer = None
            return
        spread = self._poll * self._jitter
        self._next_timer = time.monotonic() + self._poll + random.uniform(-spread, spread)  # noqa: S311

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    now = time.monotonic()
                    if self._queued:
                        left = self._ready_at() - now
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    elif self._next_timer is not None:
                        left = self._next_timer - now
                        if left <= 0:
                            self._queued.append("timer")
                            break  # the timer itself never waits for quiet
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if self._stop:
                    return
                reasons, self._queued = self._queued, []
                if not self.leading:  # leadership went elsewhere while these waited
                    for reason in reasons:
                        if reason not in LOCAL_TRIGGERS:
                            self._forward(reason)
                    self._schedule_timer()
                    self._cond.notify_all()
                    continue
                self._running = True
                self.started_first = True
            try:
                self._run(", ".join(reasons))
                self.last_error = None
            except LostLeadership as exc:  # expected when a lease moves: no traceback
                log.warning("reconcile stopped: %s", exc)
                self.last_error = str(exc)
            except Exception as exc:  # the loop must outlive any one bad run
                log.exception("reconcile failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._running = False
                    self._last_end = time.monotonic()
                    self.runs += 1
                    self._schedule_timer()
                    self._cond.notify_all()


# ------------------------------------------------------------------------ reconciler


@dataclass
class Outcome:
    """What one reconcile did (also the ``reconcile.finished`` event)."""

    ok: bool
    reason: str
    revision: str | None = None
    summary: dict[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    backoff: list[str] = field(default_factory=list)  # failed recently: retried later
    error: str | None = None
    problems: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        *,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        progress: ProgressHub | None = None,
        catalog: Catalog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.progress = progress or ProgressHub()
        self.clock = clock
        self._online: dict[str, bool] = {}  # agent -> online at the last run: logs changes
        self._catalog = catalog
        self._lock = threading.Lock()  # one run at a time, whoever calls
        # The last run's rendered deployments, as the store holds them (any replica may
        # have run it): cached with the version read, looked at again after a second.
        self._rendered: dict[str, RenderedDeployment] = {}
        self._rendered_version: str | None = None
        self._rendered_checked = -RENDERED_RECHECK
        self._rendered_lock = threading.Lock()
        self.last_outcome: Outcome | None = None
        #: Whether this process may still issue commands (another replica may lead now):
        #: asked before each one, so a leader that lost its lease mid-run stops there.
        self.may_issue: Callable[[], bool] = lambda: True
        self.data_dir = config.data_dir
        self.bundle_dir = config.data_dir / "bundles"
        self.cache_dir = config.data_dir / "cache"
        self.statuses: CommitStatuses | None = None  # commit_status: in server.yaml

    # ------------------------------------------------------------------ sources

    def source_spec(self) -> tuple[str, str | None]:
        """What to hand to ``open_source``: a git URL and branch, or a plain directory.

        A local directory that is a git repository (bare or not) is read as git, at
        ``branch`` (default: the branch its HEAD names), so the server deploys commits,
        never half-edited files; a plain directory is read as it is on disk.
        """
        source = self.config.source
        if "://" in source:
            return source, self.config.branch or "main"
        path = pathlib.Path(source).expanduser()
        if _is_git_repo(path):
            branch = self.config.branch or _head_branch(path) or "main"
            return path.resolve().as_uri(), branch
        if self.config.branch:
            raise InvalidSpec(
                f"--branch {self.config.branch!r} given, but {source} is a plain directory "
                "(not a git repository): it has no branches"
            )
        return str(path), None

    def catalog(self) -> Catalog:
        if self._catalog is None:
            path = self.config.catalog
            self._catalog = (
                Catalog.at(path.resolve(), display_root=str(path)) if path else Catalog.builtin()
            )
        return self._catalog

    # ------------------------------------------------------------ actual state

    def agent_state(self, row: AgentRow | None, agent_id: str, now: float) -> AgentState:
        if agent_id == LOCAL_AGENT:
            return AgentState(agent=agent_id, online=False, reason=LOCAL_REASON)
        if row is None:
            return AgentState(agent=agent_id, online=False, reason="offline (never connected)")
        deployments: dict[str, Any] = {}
        memory: int | None = None
        networks: int | None = None
        if row.report is not None:
            with contextlib.suppress(Exception):
                state = AgentState.model_validate(row.report.get("state", {}))
                deployments = dict(state.deployments)
                memory = state.total_memory_mb
                networks = state.free_networks
        if row.last_seen is None:
            return AgentState(
                agent=agent_id, online=False, reason="offline (bootstrapped, never reported)"
            )
        if now - row.last_seen > self.config.offline_after:
            return AgentState(
                agent=agent_id,
                online=False,
                reason=f"offline (missed 3 heartbeats; last seen {iso(row.last_seen)})",
                deployments=deployments,
            )
        return AgentState(
            agent=agent_id,
            online=True,
            deployments=deployments,
            total_memory_mb=memory,
            free_networks=networks,
        )

    def actual_state(self, referenced: Iterable[str] = (), now: float | None = None) -> ActualState:
        """Every registered agent, plus every agent the desired state names."""
        return self._view(referenced, now)[0]

    def _view(
        self, referenced: Iterable[str] = (), now: float | None = None
    ) -> tuple[ActualState, dict[str, int]]:
        """The actual state, and each agent's ``reports`` count it was read at: the clock
        the store checks a plan's commands against (Store.create_commands)."""
        now = self.clock() if now is None else now
        rows = {a.id: a for a in self.store.agents()}
        names = set(rows) | set(referenced) | {d.agent for d in self.rendered()}
        agents = {a: self.agent_state(rows.get(a), a, now) for a in sorted(names)}
        seen = {a: row.reports for a, row in rows.items()}
        return ActualState(source="control-plane", agents=agents), seen

    def online(self, row: AgentRow, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return row.last_seen is not None and now - row.last_seen <= self.config.offline_after

    # -------------------------------------------------------------------- drift

    def drift_in_report(self, agent_id: str, state: AgentState) -> list[str]:
        """Why this report calls for a reconcile: desired deployments of this agent that are
        missing, drifted or at another spec than asked, with no command on its way.

        Reads this agent's rows only (three indexed queries, none over the fleet)."""
        now = self.clock()
        pending = self.store.pending_deployments(agent_id)
        failed = self.store.recently_failed(agent_id, since=now - FAILURE_BACKOFF)
        rendered = self._current_rendered()
        reasons: list[str] = []
        for row in self.store.agent_deployments(agent_id):
            if row.id in pending or row.id in failed or row.last_action in ("blocked", "held"):
                continue
            have = state.deployments.get(row.id)
            if have is None or have.status == "uninstalled":
                reasons.append(f"{row.name}: not installed")
            elif have.spec_hash != row.spec_hash:
                reasons.append(f"{row.name}: spec {have.spec_hash[:12]} is not the desired one")
            elif have.status == "failed":
                reasons.append(f"{row.name}: the last apply failed")
            else:
                want = rendered.get(row.id)
                problems = drift(want, have) if want is not None else []
                if problems:
                    reasons.append(f"{row.name}: {'; '.join(problems)}")
        return reasons

    def rendered(self) -> list[RenderedDeployment]:
        """The desired deployments of the last run that rendered (empty before it),
        whichever replica ran it."""
        return list(self._current_rendered().values())

    def _current_rendered(self) -> dict[str, RenderedDeployment]:
        with self._rendered_lock:
            now = time.monotonic()
            if now - self._rendered_checked < RENDERED_RECHECK:
                return self._rendered
            self._rendered_checked = now
            if self.store.shared_version(RENDERED_KEY) == self._rendered_version:
                return self._rendered
            found = self.store.shared(RENDERED_KEY)
            if found is None:
                return self._rendered
            try:
                loaded = [RenderedDeployment.model_validate(d) for d in json.loads(found[0])]
            except (ValueError, TypeError):  # written by another version: keep ours
                log.warning("the stored rendered deployments do not load; kept the last ones")
                return self._rendered
            self._rendered = {d.id: d for d in loaded}
            self._rendered_version = found[1]
            return self._rendered

    def _share_rendered(self, rendered: list[RenderedDeployment]) -> None:
        """Leave this run's rendered deployments for every replica (drift checks and the
        status API read them), and keep them as this replica's copy."""
        body = json.dumps([d.model_dump(mode="json") for d in rendered])
        version = self.store.put_shared(RENDERED_KEY, body)
        with self._rendered_lock:
            self._rendered = {d.id: d for d in rendered}
            self._rendered_version = version
            self._rendered_checked = time.monotonic()

    def _log_agent_changes(self, actual: ActualState) -> None:
        """An agent going offline is noticed here, by its silence (its coming back is
        logged where its report arrives)."""
        for agent_id, agent in actual.agents.items():
            was = self._online.get(agent_id)
            self._online[agent_id] = agent.online
            if was and not agent.online:
                log.warning(
                    "agent %s: %s",
                    agent_id,
                    agent.reason or "offline",
                    extra={
                        "fields": {
                            "event": "agent.offline",
                            "agent": agent_id,
                            "reason": agent.reason,
                        }
                    },
                )

    def allow_mass_prune_once(self) -> None:
        """Let the next run that gets as far as planning prune past the guard, on
        whichever replica runs it (the approval is in the store, taken by one run)."""
        self.store.put_shared(MASS_PRUNE_KEY, "1")

    # -------------------------------------------------------------------- a run

    def reconcile(self, reason: str = "manual") -> Outcome:
        with self._lock:
            started = time.monotonic()
            trigger = trigger_kind(reason)
            try:
                self.last_outcome = self._reconcile(reason)
                self._judge_commit(self.last_outcome)
            except Exception as exc:
                # /readyz and the event log report a run that raised as failed, never as
                # "no reconcile yet" or the previous run's success.
                error = f"{type(exc).__name__}: {exc}"
                self.last_outcome = Outcome(ok=False, reason=reason, error=error)
                self.store.record_event("reconcile.failed", {"reason": reason, "error": error})
                self.metrics.observe_run(trigger, "error", finished=self.clock())
                raise
            finally:
                self.metrics.reconcile_duration.observe(time.monotonic() - started)
            outcome = self.last_outcome
            self.metrics.observe_run(trigger, run_result(outcome), finished=self.clock())
            log_outcome(outcome, time.monotonic() - started)
            return outcome

    def _judge_commit(self, outcome: Outcome) -> None:
        """The commit status of this run's revision (see reconciler.server.forges)."""
        if self.statuses is None:
            return
        try:
            self.statuses.reconciled(
                outcome.revision,
                commands=outcome.commands,
                backoff=outcome.backoff,
                blocked=outcome.summary.get("blocked", 0),
                problems=len(outcome.problems),
                ok=outcome.ok,
            )
            self.statuses.settle()  # a command superseded by this run ends its commit's wait
        except Exception:  # a status is a report on the run, never a reason to fail it
            log.exception("commit status of %s", outcome.revision)

    def _reconcile(self, reason: str) -> Outcome:
        from reconciler.load.desired import load_desired

        now = self.clock()
        for gone in self.store.expire_commands(now=now):
            self.metrics.actions.labels(kind=gone.kind, result="expired").inc()
            self.store.record_event(
                "command.expired",
                {"command": gone.id, "agent": gone.agent, "deployment": gone.deployment},
            )
        self.store.record_event("reconcile.started", {"reason": reason})
        try:
            spec, ref = self.source_spec()
            desired = load_desired(
                spec,
                ref=ref,
                subpath=self.config.path,
                catalog=self.catalog(),
                cache_dir=self.cache_dir,
            )
        except ReconcilerError as exc:
            out = Outcome(ok=False, reason=reason, error=str(exc))
            self.store.record_event("reconcile.failed", {"reason": reason, "error": str(exc)})
            return out
        state = desired.state
        if not state.ok:
            problems = [p.render() for p in state.errors]
            self.store.record_event(
                "reconcile.invalid",
                {
                    "reason": reason,
                    "revision": desired.revision,
                    "errors": len(problems),
                    "problems": problems[:50],
                    "note": "nothing planned, nothing pruned; the last good plan stays",
                },
            )
            return Outcome(ok=False, reason=reason, revision=desired.revision, problems=problems)
        config = state.config
        mass_prune = self.store.take_shared(MASS_PRUNE_KEY)
        actual, seen = self._view(set(agents_of(state, local=False)), now)
        self._log_agent_changes(actual)
        # Rendered against the actual state: an auto domain another app serves moves on.
        rendered = render_all(
            state,
            RenderContext(
                config=config,
                source_revision=desired.revision,
                git_revisions=desired.git_revisions,
            ),
            actual=actual,
        )
        self._share_rendered(rendered)
        before = {row.id: row.last_action for row in self.store.deployments()}
        result = plan(
            rendered,
            actual,
            namespace=config.namespace,
            options=PlanOptions(
                prune=config.prune,
                allow_mass_prune=self.config.allow_mass_prune or mass_prune,
                max_prune_share=config.max_prune_share,
            ),
            unresolved=desired.unresolved,
        )
        outcome = Outcome(
            ok=True, reason=reason, revision=desired.revision, summary=dict(result.summary)
        )
        # Planned from the view above; the store checks every command against that same
        # view as it writes them, with the plan, in one transaction (Store.save_plan).
        prepared: list[NewCommand] = []
        wanted = {d.id: d for d in rendered}
        # Commands carry the time they are made, not the run's start: loading, rendering and
        # planning a large fleet take seconds, which are not the command's age (its deadline,
        # the agent's pickup latency).
        now = self.clock()
        for action in result.actions:
            if action.action == "blocked":
                self.metrics.actions.labels(kind="blocked", result="blocked").inc()
                if before.get(action.id) != "blocked":  # announced once, not every run
                    self.store.record_event(
                        "deployment.blocked",
                        {
                            "deployment": action.deployment,
                            "deployment_id": action.id,
                            "agent": action.agent,
                            "reason": action.reason,
                            "revision": desired.revision,
                        },
                    )
                continue
            if action.action not in ACTIONABLE:
                continue
            if self.store.in_flight(
                action.id,
                action.agent,
                action.spec_hash,
                action.action,
                seen=seen.get(action.agent),
            ):
                continue  # a hint, to build no payload for nothing; the store decides
            failed, last_failure = self.store.failures(
                action.id, action.agent, action.spec_hash, action.action
            )
            if failed and now < last_failure + retry_delay(failed):
                outcome.backoff.append(action.deployment)
                continue
            want = wanted.get(action.id) if action.action != "uninstall" else None
            try:
                prepared.append(
                    self._prepare(action, want, state.root, config, desired.revision, now)
                )
            except InvalidSpec as exc:
                self.store.record_event(
                    "command.refused",
                    {"deployment": action.deployment, "agent": action.agent, "error": str(exc)},
                )
                self.metrics.actions.labels(kind=action.action, result="refused").inc()
        # by deployment and agent: a deployment moving hosts has an action on each
        by_id = {(a.id, a.agent): a for a in result.actions}
        if prepared and not self.may_issue():
            for new in prepared:
                self.store.drop_bundle(new.id)
            raise LostLeadership(
                "another replica leads now: this run stopped before issuing its "
                f"{len(prepared)} command(s); the leader's run issues them"
            )
        issued = self.store.save_plan(
            result.model_dump(mode="json"),
            revision=desired.revision,
            desired=[(d.id, d.name, d.agent, d.spec_hash, d.url) for d in rendered],
            commands=prepared,
            seen=seen,
            event=lambda done: ("command.created", _created_fields(by_id, done)),
            now=now,
        )
        accepted = {done.command.id for done in issued}
        for new in prepared:
            if new.id not in accepted:
                self.store.drop_bundle(new.id)  # an equivalent one was on its way after all
        sent = []
        for done in issued:
            sent.append(
                self._announce(
                    by_id[done.command.deployment, done.command.agent], done, desired.revision
                )
            )
            outcome.commands.append(done.command.id)
            outcome.superseded.extend(done.superseded)
        # One write for the batch, before the wake-up: a step never precedes its command.
        self.progress.publish_many(sent)
        # Woken after the commit, every agent of the batch: a poll reads what is there.
        self.notifier.notify_many(sorted({done.command.agent for done in issued}))
        self._clean_bundles()
        self.store.prune_history(now=now)
        self.store.record_event(
            "reconcile.finished",
            {
                "reason": reason,
                "revision": desired.revision,
                "summary": outcome.summary,
                "commands": outcome.commands,
                "superseded": outcome.superseded,
                "backoff": outcome.backoff,
            },
        )
        return outcome

    def _prepare(
        self,
        action: Action,
        want: RenderedDeployment | None,
        root: pathlib.Path,
        config: Any,
        revision: str | None,
        now: float,
    ) -> NewCommand:
        """The command for one action, its bundle written (dropped again when the store
        does not issue it)."""
        command_id = f"cmd_{secrets.token_hex(8)}"
        dirs = bundle_dirs(want) if want is not None else []
        if dirs:
            contexts = build_contexts(want) if want is not None else {}
            self._store_bundle(command_id, root, dirs, contexts)
        command = Command(
            id=command_id,
            kind=action.action,
            action=action,
            deployment=want.model_dump(mode="json") if want is not None else None,
            has_bundle=bool(dirs),
            proxy=config.proxy,
            revision=revision,
            created=datetime.fromtimestamp(now, UTC),
            deadline=datetime.fromtimestamp(now + self.config.command_ttl, UTC),
        )
        return NewCommand(
            id=command_id,
            agent=action.agent,
            deployment=action.id,
            kind=action.action,
            spec_hash=action.spec_hash,
            payload=command.model_dump(mode="json"),
            created=now,
            deadline=now + self.config.command_ttl,
        )

    def _announce(self, action: Action, done: Issued, revision: str | None) -> dict[str, Any]:
        """What follows an issued command's commit: metrics, the log; returns its event for
        the live stream."""
        command_id, superseded = done.command.id, done.superseded
        self.metrics.actions.labels(kind=action.action, result="issued").inc()
        log.info(
            "command %s sent: %s %s to %s (%s)%s",
            command_id,
            action.action,
            action.deployment,
            action.agent,
            action.reason or "no reason given",
            f"; supersedes {', '.join(superseded)}" if superseded else "",
            extra={
                "fields": {
                    "event": "command.sent",
                    "command": command_id,
                    "kind": action.action,
                    "deployment": action.deployment,
                    "agent": action.agent,
                    "reason": action.reason,
                    "commit": revision,
                }
            },
        )
        for old in superseded:
            self.metrics.actions.labels(kind=action.action, result="superseded").inc()
            self.store.drop_bundle(old)
        return {
            "type": "command.sent",
            "command": command_id,
            "kind": action.action,
            "deployment": action.deployment,
            "agent": action.agent,
            "reason": action.reason,
        }

    def _store_bundle(
        self, command_id: str, root: pathlib.Path, dirs: list[str], contexts: dict[str, str]
    ) -> None:
        """Build the command's bundle and put it in the store, where every replica finds
        it (the agent may poll another one); the file is only the way there."""
        path = self.bundle_dir / f"{command_id}.tar"
        try:
            build_bundle(root, dirs, path, contexts=contexts)
            self.store.put_bundle(command_id, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _clean_bundles(self) -> None:
        """Bundles are needed only while their command is pending."""
        self.store.prune_bundles()


def _created_fields(actions: Mapping[tuple[str, str], Action], done: Issued) -> dict[str, Any]:
    """The ``command.created`` event of an issued command (written in its transaction)."""
    action = actions[done.command.deployment, done.command.agent]
    return {
        "command": done.command.id,
        "kind": action.action,
        "deployment": action.deployment,
        "deployment_id": action.id,
        "agent": action.agent,
        "reason": action.reason,
        "superseded": done.superseded,
    }


# --------------------------------------------------------------------------- bundles


def bundle_dirs(want: RenderedDeployment) -> list[str]:
    """The repository directories an agent needs for this deployment (the agent scopes
    the bundle's links by the same list)."""
    return want.shipped_dirs()


def build_contexts(want: RenderedDeployment) -> dict[str, str]:
    """Repo-relative build context -> its Dockerfile, for a build from the repository."""
    if want.build is not None and want.build.kind == "repo" and want.build.path:
        return {want.build.path: want.build.dockerfile}
    return {}


def build_bundle(
    root: pathlib.Path,
    dirs: Iterable[str],
    dest: pathlib.Path,
    *,
    contexts: Mapping[str, str] | None = None,
) -> None:
    """A tar of ``dirs`` (repo-relative), written atomically to ``dest``.

    A dir in ``contexts`` (a build context -> its Dockerfile) ships only what ``docker
    build`` would send from it: what its ``.dockerignore`` leaves out is never needed,
    and is what the 100 MB limit did not count.

    Regular files and directories, paths relative to the repository root, owners and
    times normalised, in the format of :mod:`reconciler.model.bundle`.  A symlink that
    resolves inside the shipped directory holding it travels as a marked symlink
    (:func:`_inner_link`), unless ``.dockerignore`` leaves its target out (then as the
    target's content: the agent refuses a dangling link); one to a file elsewhere in the
    repository as that file's content; one that leaves the repository, dangles, loops, or
    points at a directory outside its shipped directory is refused (the agent would
    otherwise unpack a link to somewhere on *its* host).  Hard-linked files go as plain
    copies (``dereference``: agents refuse hard links).
    """
    root = root.resolve()
    dirs = sorted(dirs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    seen: set[str] = set()

    def norm(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            for rel in dirs:
                base = (root / rel).resolve()
                if not inside(base, root) or not base.is_dir():
                    raise InvalidSpec(f"bundle directory {rel!r} is not a directory in the repo")
                sent = (
                    frozenset(context_size(base, contexts[rel]).sent)
                    if contexts and rel in contexts
                    else None
                )
                for dirpath, dirnames, filenames in os.walk(base):
                    here = pathlib.Path(dirpath)
                    arc_dir = here.relative_to(root).as_posix()
                    if arc_dir not in seen:
                        seen.add(arc_dir)
                        tar.addfile(norm(tar.gettarinfo(str(here), arcname=arc_dir)))
                    dirnames.sort()
                    for name in [*sorted(filenames), *list(dirnames)]:
                        path = here / name
                        arc = f"{arc_dir}/{name}"
                        mode = os.lstat(path).st_mode
                        if stat.S_ISDIR(mode):
                            continue  # walked next
                        if sent is not None and path.relative_to(base).as_posix() not in sent:
                            continue  # .dockerignore'd: the build would not send it
                        if stat.S_ISLNK(mode):
                            link = _inner_link(root, dirs, here, path, arc)
                            if isinstance(link, tarfile.TarInfo) and _ignored_target(
                                base, path, sent
                            ):
                                # the build would send it dangling (its target is
                                # .dockerignore'd), and agents refuse dangling links
                                continue
                            if isinstance(link, tarfile.TarInfo):
                                if arc not in seen:
                                    seen.add(arc)
                                    tar.addfile(link)
                                continue
                            source = link  # a file elsewhere in the repository: its content
                        elif stat.S_ISREG(mode):
                            source = path
                        else:
                            raise InvalidSpec(f"{arc}: not a regular file or directory")
                        if arc in seen:
                            continue
                        seen.add(arc)
                        info = norm(tar.gettarinfo(str(source), arcname=arc))
                        with open(source, "rb") as fh:
                            tar.addfile(info, fh)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _ignored_target(base: pathlib.Path, link: pathlib.Path, sent: frozenset[str] | None) -> bool:
    """Whether a link inside a build context points at what its ``.dockerignore`` leaves
    out of the bundle (nothing is left out when ``sent`` is None)."""
    if sent is None:
        return False
    target = pathlib.Path(os.path.realpath(link))
    if not inside(target, base):
        return False
    rel = target.relative_to(base).as_posix()
    return rel not in sent and not any(p.startswith(rel + "/") for p in sent)


def _inner_link(
    root: pathlib.Path, dirs: list[str], here: pathlib.Path, path: pathlib.Path, arc: str
) -> tarfile.TarInfo | pathlib.Path:
    """The marked symlink member for a link inside its shipped directory, re-written
    relative to its real target (so it leads through real directories only); else the
    file it names elsewhere in the repository.  Raises InvalidSpec for anything else."""
    refused = InvalidSpec(
        f"{arc}: symlink to {os.readlink(path)!r} refused: only links that stay inside "
        "the repository (to a file, or to a directory shipped with it) can be shipped"
    )
    try:
        target = pathlib.Path(os.path.realpath(path, strict=True))
    except OSError:  # dangling, a loop, or too long to resolve
        raise refused from None
    if not inside(target, root):
        raise refused
    if inside(target, (root / link_scope(arc, dirs)).resolve()):
        info = tarfile.TarInfo(arc)
        info.type = tarfile.SYMTYPE
        info.mode = 0o777
        info.linkname = os.path.relpath(target, here.resolve())
        info.pax_headers = {LINK_PAX_KEY: LINK_INSIDE}
        return info
    if target.is_file():
        return target
    raise refused


# ------------------------------------------------------------------------------- git


def _is_git_repo(path: pathlib.Path) -> bool:
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _head_branch(path: pathlib.Path) -> str | None:
    """The branch a local repository's HEAD names, read from the file (no git process:
    a repository's own config can make git run commands)."""
    for head in (path / ".git" / "HEAD", path / "HEAD"):
        try:
            text = head.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if text.startswith("ref: refs/heads/"):
            return text.removeprefix("ref: refs/heads/") or None
        return None
    return None
