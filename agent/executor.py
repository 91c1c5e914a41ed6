"""Applying plan actions on one host: install, update, repair, uninstall.

The outer shape follows Flux's kustomize-controller: each action is one linear
pipeline of small steps, and whatever happens the app's record in the state dir says
how it ended.  The steps for install/update::

    lock -> keep the running release -> write files atomically -> proxy ready
    -> compose config -> build (buildable only) -> up -d -> routes -> onion
    -> settle gate -> install hook -> health through the proxy -> record

Deployments run side by side in a bounded pool (uninstalls first), each one's steps in
order under its lock.  Every step failure takes one ladder: the last log lines, then a
failed update puts the previous release back (its files, and its images pinned by id)
and an install that got as far as ``up`` is taken down; the record says how it ended.
Uninstall stops the stack and removes routes; the app's ``data/`` (and secrets) stay as
a tombstone unless purged.

Onion services (``onion: true``): the deployment's key is made (or read back) in
``apps/<id>/onion`` when its files are written, so an onion-only deployment boots with
``DOMAIN=<addr>.onion`` / ``DOMAIN_URL=http://<addr>.onion``; the proxy gets a plain-HTTP
route for the ``.onion`` host, and the Tor sidecar is told the full set of onion
deployments after every change (by the host writer, :mod:`agent.host`).  Turning onion
off or uninstalling removes the hidden service; the key stays until a purge removes the
app dir.

The real parts come in through small seams -- :class:`ComposeDriver`, a
:class:`ProxyPort`, an optional :class:`OnionPort` and a :class:`ContainerWatch` -- so
the ordering and verdict logic is unit-tested against fakes, and the Docker tests run it
for real.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from agent.appdir import AppDir
from agent.compose import ComposeDriver, ComposeError, ComposeProject
from agent.failures import Failure, classify
from agent.gate import Outcome, Sample, SettleGate, ready_now
from agent.host import HostWriter, OnionPort, ProxyPort, default_compose_parallel
from agent.onion import KEY_DIR, SECRET_KEY, OnionKeyError, read_identity
from agent.statedir import (
    AppRecord,
    AppStatus,
    app_dir,
    read_record,
    write_record,
)
from reconciler.model.digests import value_digest
from reconciler.model.errors import InvalidSpec, ReconcilerError
from reconciler.model.ids import LOCAL_AGENT
from reconciler.model.plan import Action, Plan
from reconciler.model.state import ContainerState, Hold
from reconciler.render.model import RenderedDeployment, spec_record

__all__ = [
    "ActionResult",
    "ContainerWatch",
    "Executor",
    "ExecutorSettings",
    "OnionPort",
    "ProxyPort",
    "StepEvent",
    "default_parallel",
]

LAST_ERROR_CHARS = 2000  # state.json's last_error: the classified summary + output's tail
MIN_DEFAULT_PARALLEL = 4  # deploys mostly wait (settle windows, Docker): more than the cores
GATEWAY_ERRORS = frozenset({502, 503, 504})
WINDOW_MARGIN = 0.05  # seconds past a settle window's end before its sample (clock skew)
ROUTES_HINT = "see the proxy's (or the reconciler-tor container's) logs"


PIPELINES_PER_CORE = 16  # pipelines in the pool per core: see default_parallel


def default_parallel() -> int:
    """How many deployments apply at once unless told: 16 per core, at least 4.

    A pipeline spends most of its time waiting (the settle window, the push, the
    probe), and the steps that load the machine are bounded apart (the host writer's
    compose slots), so the pool holds a whole batch of a typical host: the settle
    windows overlap, and the routes of all go out in one push.  With 8 per core (16
    here) 20 installs ran in two waves and two pushes."""
    return max(MIN_DEFAULT_PARALLEL, PIPELINES_PER_CORE * (os.cpu_count() or 1))


class ContainerWatch(Protocol):
    def containers(self, deployment_id: str) -> list[ContainerState]:
        """Current state of the deployment's containers, restart counts included."""

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        """service -> image id of the running containers (to pin a release)."""


@dataclass(frozen=True)
class StepEvent:
    deployment: str
    step: str
    detail: str = ""


@dataclass
class ActionResult:
    action: Action
    ok: bool
    message: str
    seconds: float = 0.0
    url: str | None = None
    logs: str = ""
    rolled_back: bool = False
    skipped: bool = False
    failure: Failure | None = None  # the failed step, classified (agent.failures)


@dataclass
class ExecutorSettings:
    # a service without a healthcheck must have run this long (from its start) without a
    # restart; one with a healthcheck is settled once healthy (agent/gate.py)
    settle_seconds: float = 2.0
    settle_timeout: float = 180.0  # give up waiting for healthchecks after this
    sample_interval: float = 0.25
    probe_timeout: float = 20.0
    probe: bool = True
    purge: bool = False


class _Failed(Exception):
    """A step failed; ``after_up``: containers of this spec may run, so the ladder rolls
    back (an update to its last release, an install down to nothing)."""

    def __init__(
        self,
        step: str,
        message: str,
        hint: str | None = None,
        *,
        after_up: bool = False,
        changed_nothing: bool = False,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.hint = hint
        self.after_up = after_up
        self.changed_nothing = changed_nothing  # e.g. `up` refused the compose file

    def classified(self) -> Failure:
        return classify(self.step, self.message, self.hint)


@contextlib.contextmanager
def _step(step: str, hint: str | None = None) -> Iterator[None]:
    """Run one step: whatever it raises becomes a :class:`_Failed` named after it, so
    every failure takes the same ladder (a proxy error after ``up`` used to skip the
    rollback and leave the record at the old spec while the containers ran the new)."""
    try:
        yield
    except _Failed:
        raise
    except ComposeError as exc:
        raise _Failed(step, exc.output or str(exc), _hint(step, exc.output)) from exc
    except Exception as exc:
        raise _Failed(step, str(exc) or type(exc).__name__, hint) from exc


@dataclass
class Executor:
    state_dir: pathlib.Path
    driver: ComposeDriver
    proxy: ProxyPort
    watch: ContainerWatch
    settings: ExecutorSettings = field(default_factory=ExecutorSettings)
    onion: OnionPort | None = None  # None: keys and DOMAIN still made, no Tor sidecar
    on_event: Callable[[StepEvent], None] = lambda _e: None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    max_parallel: int = 4  # deployments applied at once (each one runs its steps in order)
    # `docker compose` commands at once (build, up), across the pool: they load the
    # daemon and the CPU, the rest of a pipeline (the settle window) mostly waits.  The
    # bound is the host writer's, so executors sharing one (the agent's commands) share it.
    compose_parallel: int = 0  # 0: default_compose_parallel()
    # The one writer of the proxy's routes and the Tor set; executors that run side by
    # side on one host (the agent's concurrent commands) share one.
    writer: HostWriter | None = None

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = HostWriter(
                self.state_dir,
                self.proxy,
                self.onion,
                sleep=self.sleep,
                compose_parallel=self.compose_parallel or default_compose_parallel(),
            )
        self.host: HostWriter = self.writer
        self._compose_slots = self.host.compose_slots

    # ------------------------------------------------------------------ public

    def run(
        self,
        plan: Plan,
        desired: Sequence[RenderedDeployment],
        repo_root: pathlib.Path,
    ) -> list[ActionResult]:
        """Carry out a plan's actions for this host, up to ``max_parallel`` at a time.

        Uninstalls run first, all of them, and only then the rest: they free domains an
        install may take.  Results come in the order the actions ran before the pool
        (uninstalls, then by name), and one bad action never stops the others.
        """
        by_id = {d.id: d for d in desired}
        order = {"uninstall": 0, "install": 1, "update": 1, "repair": 1}
        todo = sorted(
            (a for a in plan.actions if a.action in order),
            key=lambda a: (order[a.action], a.deployment),
        )
        results: dict[int, ActionResult] = {}
        with ThreadPoolExecutor(
            max_workers=max(1, self.max_parallel), thread_name_prefix="apply"
        ) as pool:
            for phase in (0, 1):
                futures: dict[int, Future[ActionResult]] = {}
                for i, action in enumerate(todo):
                    if order[action.action] != phase:
                        continue
                    if action.agent != LOCAL_AGENT:
                        results[i] = ActionResult(
                            action,
                            False,
                            f"agent {action.agent} is remote; the control plane applies it",
                            skipped=True,
                        )
                        continue
                    if len(futures) < self.max_parallel:
                        # In the pool at once: the host writer gathers their routes into
                        # one push (it waits for the registered ones to publish).
                        self.host.begin(action.id)
                    futures[i] = pool.submit(
                        self.apply_action, action, by_id.get(action.id), repo_root
                    )
                for i, future in futures.items():  # the barrier between the phases
                    results[i] = future.result()
        return [results[i] for i in range(len(todo))]

    def apply_action(
        self, action: Action, want: RenderedDeployment | None, repo_root: pathlib.Path
    ) -> ActionResult:
        """One action under the deployment's lock; never raises.  Whatever path it took,
        the record says how it ended and its overlay in the host writer goes; the last
        event is ``done`` or ``failed`` with the result's message."""
        result = self._apply(action, want, repo_root)
        self._emit(action.deployment, "done" if result.ok else "failed", result.message)
        return result

    def _apply(
        self, action: Action, want: RenderedDeployment | None, repo_root: pathlib.Path
    ) -> ActionResult:
        start = self.clock()
        try:
            try:
                self.app_dir(action.id)
            except ValueError as exc:  # refused before any path is made of the id
                return ActionResult(action, False, f"refused: {exc}", self.clock() - start)
            try:
                with self._lock(action.id):
                    self.host.begin(action.id)
                    return self._attempt(action, want, repo_root, start)
            except OSError as exc:  # the app dir or its lock file
                return ActionResult(action, False, f"lock: {exc}", self.clock() - start)
        finally:
            self.host.settled(action.id)  # also when run() registered it and it ended early

    def repair_host(self) -> None:
        """The proxy container and the full route and Tor sets again, from the records:
        a hand-edited or recreated proxy heals on every reconcile."""
        self.host.ensure_proxy()
        self.host.repair()

    # ------------------------------------------------------------------ ladder

    def _attempt(
        self,
        action: Action,
        want: RenderedDeployment | None,
        repo_root: pathlib.Path,
        start: float,
    ) -> ActionResult:
        if action.action == "uninstall":
            try:
                message = self._uninstall(action)
            except _Failed as exc:
                failure = exc.classified()
                return ActionResult(
                    action, False, failure.text(), self.clock() - start, failure=failure
                )
            return ActionResult(action, True, message, self.clock() - start)
        if want is None:
            return ActionResult(
                action, False, f"no rendered deployment for {action.action}", self.clock() - start
            )
        previous = self._latest_release(want.id) if action.action == "update" else None
        try:
            self._deploy(action, want, repo_root, install=action.action == "install")
        except _Failed as exc:
            return self._failed(action, want, exc, previous, start)
        except Exception as exc:  # a bug outside any step: still the same ladder
            failed = _Failed("agent", f"{type(exc).__name__}: {exc}")
            return self._failed(action, want, failed, previous, start)
        done = {"install": "installed", "repair": "repaired", "update": "updated"}
        return ActionResult(
            action, True, done[action.action], self.clock() - start, self._url(want)
        )

    def _failed(
        self,
        action: Action,
        want: RenderedDeployment,
        exc: _Failed,
        previous: pathlib.Path | None,
        start: float,
    ) -> ActionResult:
        """The one failure ladder: logs, then back to what ran before (an update's last
        release; nothing, for an install that got as far as ``up``), then the record."""
        logs = self._logs(want.id) if exc.step not in ("files", "config") else ""
        failure = exc.classified()
        note = ""
        rolled_back = False
        if action.action == "update" and previous is not None:
            self._emit(want.name, "rollback", f"restoring release {previous.name}")
            rolled_back = self._rollback(want, previous)
            note = "; previous release restored" if rolled_back else "; ROLLBACK FAILED"
        elif action.action == "install" and exc.after_up:
            self._emit(want.name, "rollback", "taking the new stack down (data kept)")
            rolled_back = self._take_down(want)
            note = "; stack stopped, data kept" if rolled_back else "; ROLLBACK FAILED"
        if not (action.action == "update" and rolled_back):
            self._mark_failed(want, exc)
        return ActionResult(
            action,
            False,
            failure.text(note),
            self.clock() - start,
            self._url(want),
            logs,
            rolled_back=rolled_back,
            failure=failure,
        )

    def _take_down(self, want: RenderedDeployment) -> bool:
        """A failed install's containers stopped and its routes withdrawn: a crash loop
        does not keep restarting, nor a route keep answering 502."""
        try:
            self.driver.down(self._project(want.id), volumes=False)
            self.host.withdraw(want.id)
        except Exception:
            return False
        return True

    # ------------------------------------------------------------------ steps

    def _emit(self, name: str, step: str, detail: str = "") -> None:
        self.on_event(StepEvent(name, step, detail))

    def app_dir(self, dpl_id: str) -> pathlib.Path:
        """``apps/<id>`` through the checked helper: an id that is not ``dpl_<16 hex>``
        raises ValueError before any path is made of it (an uninstall with purge would
        otherwise delete whatever ``../../victim`` names)."""
        return app_dir(self.state_dir, dpl_id)

    def locked(self, dpl_id: str) -> contextlib.AbstractContextManager[None]:
        """The app's lock, for day-2 operations (agent.operations) that change its files."""
        return self._lock(dpl_id)

    @contextlib.contextmanager
    def _lock(self, dpl_id: str) -> Iterator[None]:
        directory = self.app_dir(dpl_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(directory / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _project(self, dpl_id: str) -> ComposeProject:
        return ComposeProject(dpl_id, self.app_dir(dpl_id))

    def _onion_address(self, want: RenderedDeployment) -> str | None:
        """The deployment's ``.onion`` host when onion is on and its key exists."""
        if not want.onion:
            return None
        try:
            identity = read_identity(self.app_dir(want.id) / KEY_DIR)
        except (OSError, OnionKeyError):
            return None
        return identity.address if identity is not None else None

    def _urls(self, want: RenderedDeployment) -> list[str]:
        """Every URL the app answers on: DOMAIN_URL, then ``http://<onion>``."""
        onion = self._onion_address(want)
        return [u for u in (want.url, f"http://{onion}" if onion else None) if u]

    def _url(self, want: RenderedDeployment | None) -> str | None:
        if want is None:
            return None
        return next(iter(self._urls(want)), None)

    def _onion_route(self, want: RenderedDeployment) -> dict[str, str]:
        onion = self._onion_address(want)
        return {onion: want.onion_upstream} if onion and want.onion_upstream else {}

    def _app(self, dpl_id: str) -> AppDir:
        """The app dir's file I/O (the id checked: see :meth:`app_dir`)."""
        return AppDir(self.state_dir, dpl_id)

    def _write_files(self, want: RenderedDeployment, repo_root: pathlib.Path) -> None:
        self._app(want.id).write_files(want, repo_root, self.environ)

    def _deploy(
        self, action: Action, want: RenderedDeployment, repo_root: pathlib.Path, *, install: bool
    ) -> None:
        name = want.name
        project = self._project(want.id)
        # An update may only move routes (see _routes_only): what ran before decides.
        before = read_record(self.state_dir, want.id) if action.action == "update" else None
        self._emit(name, "files", "writing compose.yaml and .env")
        try:
            self._write_files(want, repo_root)
        except (InvalidSpec, OnionKeyError) as exc:
            raise _Failed("files", str(exc)) from None
        except OSError as exc:
            raise _Failed("files", f"cannot write the app dir: {exc}") from None
        if want.routes or want.onion or "impreza-proxy" in want.compose_yaml:
            self._emit(name, "proxy", "network and proxy container")
            with _step("proxy"):
                self.host.ensure_proxy()
        if before is not None and self._routes_only(want, before):
            self._move_routes(want, before)
            return
        # No `compose config` before `up`: `up` reads and checks the same file before it
        # changes anything, so a bad file costs nothing there.  The check runs only when
        # a compose step failed, to tell a bad file (step `config`, nothing changed) from
        # a failed start: one `docker compose` process less per deployment (~0.4 s of CPU).
        if want.build is not None or "build:" in want.compose_yaml:
            self._emit(name, "build", "docker compose build")
            self._compose(name, "build", lambda: self.driver.build(project), project)
        try:
            self._emit(name, "up", "docker compose up -d")
            self._compose(name, "up", lambda: self.driver.up(project), project)
            published = self._publish(want)
            probed = self._settle(want, published, early_probe=self._may_probe_early(want, install))
            if install and "install" in want.hooks:
                with _step("install hook"):
                    self._hook(want, "install")
            with _step("routes", ROUTES_HINT):
                published.result()  # served (pushed during the settle window) or failed
            self._check_health(want, probed)
            self._emit(name, "record", "state.json")
            with _step("record"):
                self._save_release(want)
                self._write_record(want, "running")
        except _Failed as exc:
            exc.after_up = not exc.changed_nothing
            raise

    def _may_probe_early(self, want: RenderedDeployment, install: bool) -> bool:
        """Whether the probe may run during the settle window: only without hooks that
        must come first (the install hook, the health hook), which run after the gate."""
        if not self.settings.probe or "health" in want.hooks:
            return False
        return not (install and "install" in want.hooks)

    def _routes_only(self, want: RenderedDeployment, before: AppRecord) -> bool:
        """Whether this update changes nothing the containers see, so ``up`` is skipped.

        ``docker compose up -d`` recreates a container whenever its config hash changes,
        and our spec-hash label is part of that config: every update would restart the
        app.  But a domain change alters only the routes plus ``DOMAIN``/``DOMAIN_URL`` in
        ``.env``, which reach a container only if its compose file interpolates them.  So
        when the images, the compose file (our labels aside), resources, build revision,
        onion setting and shipped files are all as before, every env key that changed is
        referenced nowhere in the compose file, no service reads ``.env`` whole
        (``env_file``), and the app is running healthily, the containers are left alone:
        the routes move, the record is rewritten.  Otherwise it is a normal update.
        """
        old, new = before.record, spec_record(want)
        if before.status != "running" or before.spec_hash == want.spec_hash:
            return False
        same = (
            old.images == new.images
            and old.compose_digest == new.compose_digest
            and old.resources == new.resources
            and old.source_revision == new.source_revision
            and old.bundle_digest == new.bundle_digest
            and old.onion == new.onion
        )
        if not same or "env_file" in want.compose_yaml:
            return False
        changed = {k for k in old.env.keys() | new.env.keys() if old.env.get(k) != new.env.get(k)}
        if any(_references(want.compose_yaml, key) for key in changed):
            return False
        return ready_now(want.services, want.one_shot, self.watch.containers(want.id))

    def _move_routes(self, want: RenderedDeployment, before: AppRecord) -> None:
        name = want.name
        self._emit(name, "up", "skipped: only routes changed; the containers keep running")
        published = self._publish(want)
        with _step("routes", ROUTES_HINT):
            published.result()
        self._check_health(want)
        self._emit(name, "record", "state.json")
        with _step("record"):
            self._save_release(want)
            labels = before.labels_spec_hash or before.spec_hash
            rec = self._record(want, "running").model_copy(update={"labels_spec_hash": labels})
            write_record(self.state_dir, rec)

    def _publish(self, want: RenderedDeployment) -> Future[None]:
        """Routes (its .onion host included) and the hidden service, as soon as the
        containers run: serving starts during the settle gate, not after.  The push
        (shared with the deployments that got there at the same moment) is awaited
        before the probe."""
        self._emit(want.name, "routes", ", ".join(r.domain for r in want.routes) or "none")
        onion = self._onion_address(want)
        if onion is not None and self.onion is not None:
            self._emit(want.name, "onion", f"hidden service {onion}")
        key = self.app_dir(want.id) / KEY_DIR if onion else None
        routes = {r.domain: r.upstream for r in want.routes} | self._onion_route(want)
        with _step("routes", ROUTES_HINT):
            return self.host.publish(want.id, routes, key)

    def _check_health(self, want: RenderedDeployment, probed: frozenset[str] = frozenset()) -> None:
        """The app's own health hook, then a request through the proxy (for the routes
        that did not answer yet during the settle window: ``probed``)."""
        if "health" in want.hooks:
            with _step("health hook"):
                self._hook(want, "health")
        if self.settings.probe:
            with _step("probe"):
                self._probe(want, probed)

    def _compose(
        self,
        name: str,
        step: str,
        fn: Callable[[], None],
        project: ComposeProject | None = None,
    ) -> None:
        """One compose command, at most ``compose_parallel`` of them at once on the host.
        With ``project``, a failure is checked against ``compose config``: a file compose
        refuses fails as step ``config``, and nothing ran."""
        try:
            with self._compose_slots:
                fn()
        except ComposeError as exc:
            if project is not None:
                try:
                    with self._compose_slots:
                        self.driver.check(project)
                except ComposeError as bad:
                    raise _Failed(
                        "config",
                        bad.output or str(bad),
                        _hint("config", bad.output),
                        changed_nothing=True,
                    ) from None
            raise _Failed(step, exc.output or str(exc), _hint(step, exc.output)) from None

    def _settle(
        self,
        want: RenderedDeployment,
        published: Future[None] | None = None,
        *,
        early_probe: bool = False,
    ) -> frozenset[str]:
        """Sample the containers until the gate (``agent.gate``) says settled or failed;
        its decision is emitted as the ``settled`` step, so logs and tests see why.

        With ``early_probe``, once the routes are pushed each route is also asked once
        per sample until it answers: the probe's wait overlaps the window instead of
        following it.  Both must pass, so the verdict is the same (a service that
        answers and then crashes still fails the gate).  Returns the domains that
        answered."""
        s = self.settings
        self._emit(want.name, "settle", f"healthy, or up {s.settle_seconds:g} s without a restart")
        gate = SettleGate(want.services, want.one_shot, s.settle_seconds)
        answered: set[str] = set()
        start = self.clock()
        while True:
            now = self.clock() - start
            sample = Sample(now, tuple(self.watch.containers(want.id)), time.time())
            decision = gate.observe(sample)
            if decision.outcome is Outcome.FAILED:
                raise _Failed("settle", decision.reason, "see the log lines below")
            if decision.outcome is Outcome.SETTLED:
                self._emit(want.name, "settled", f"after {now:.1f} s: {decision.reason}")
                return frozenset(answered)
            pushed = published is not None and published.done() and not published.exception()
            if early_probe and pushed:
                answered |= self._probe_once(want, answered)
            answered_all = len(answered) == len({r.domain for r in want.routes})
            if now > s.settle_timeout:
                raise _Failed(
                    "settle",
                    f"not ready after {s.settle_timeout:g} s: {decision.reason}",
                    "is the healthcheck right?",
                )
            # Only windows left: nothing can settle before the first one ends, so wait
            # that long (a crash meanwhile is still seen: restarts only rise).  Fewer
            # samples: 20 deployments settling at once made ~80 Docker calls a second.
            # With the probe still to answer, keep asking at the interval.
            wait = s.sample_interval
            if decision.window_left is not None and (not early_probe or answered_all):
                wait = max(wait, decision.window_left + WINDOW_MARGIN)
            self.sleep(wait)

    def _hook(self, want: RenderedDeployment, phase: str) -> None:
        hook = want.hooks[phase]
        self._emit(want.name, f"{phase} hook", f"in service {hook.service}")
        code, output = self.driver.exec(
            self._project(want.id), hook.service, hook.run, float(hook.timeout)
        )
        if code != 0:
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise _Failed(
                f"{phase} hook",
                f"exited {code}: {tail}",
                f"the manifest's lifecycle.{phase} command",
            )

    def _probe_once(self, want: RenderedDeployment, answered: set[str]) -> set[str]:
        """One request per route not yet answered: the domains that answer now."""
        ok = set()
        for route in want.routes:
            if route.domain in answered:
                continue
            try:
                status = self.proxy.probe(route.domain)
            except ReconcilerError:
                continue
            if status and status not in GATEWAY_ERRORS:
                ok.add(route.domain)
        return ok

    def _probe(self, want: RenderedDeployment, answered: frozenset[str] = frozenset()) -> None:
        for route in want.routes:
            if route.domain in answered:
                self._emit(want.name, "probe", f"http://{route.domain}: answered during the settle")
                continue
            self._emit(want.name, "probe", f"http://{route.domain} through the proxy")
            deadline = self.clock() + self.settings.probe_timeout
            status = 0
            healed = False
            while True:
                try:
                    status = self.proxy.probe(route.domain)
                except ReconcilerError as exc:
                    status = 0
                    last = str(exc)
                    if not healed:
                        # Nothing listens: the proxy went away mid-batch (removed by hand,
                        # crashed).  Bring it back once; it starts with the pushed config.
                        healed = True
                        with contextlib.suppress(ReconcilerError):
                            self.host.ensure_proxy(force=True)
                else:
                    last = f"HTTP {status}"
                if status and status not in GATEWAY_ERRORS:
                    break
                if self.clock() > deadline:
                    raise _Failed(
                        "probe",
                        f"{route.domain} answered {last} through the proxy",
                        "the route's upstream port may be wrong",
                    )
                self.sleep(self.settings.sample_interval)

    def _rollback(self, want: RenderedDeployment, release: pathlib.Path) -> bool:
        return self.restore_release(
            want.id, release, f"update to {want.spec_hash[:12]} failed; rolled back"
        )

    def restore_release(
        self, dpl_id: str, release: pathlib.Path, note: str | None, *, hold: Hold | None = None
    ) -> bool:
        """Run a kept release again (files, images pinned by id, routes, record); the
        record's ``last_error`` becomes ``note``.  Used by a failed update and by a manual
        ``reconcile rollback`` (agent.operations), which holds the lock already and
        passes its ``hold``: written with the record, in one write, so no report of the
        host ever shows the rolled-back spec without it (the server would undo it)."""
        app = self._app(dpl_id)
        directory = app.path
        project = self._project(dpl_id)
        try:
            rec = app.restore_files(release)
            self.driver.up(project)
            routes = {r.domain: r.upstream for r in (rec.record.routes if rec.record else [])}
            if rec.record and rec.record.onion and rec.onion_address and rec.onion_upstream:
                routes[rec.onion_address] = rec.onion_upstream
            key = directory / KEY_DIR
            onion_key = (
                key if rec.record and rec.record.onion and (key / SECRET_KEY).exists() else None
            )
            self.host.publish(dpl_id, routes, onion_key).result()
            rec = rec.model_copy(
                update={
                    "status": "running",
                    "updated_at": _now(),
                    "last_error": note,
                    "held": hold,
                }
            )
            write_record(self.state_dir, rec)
            return True
        except Exception:  # the ladder reports it: "ROLLBACK FAILED"
            return False

    def _uninstall(self, action: Action) -> str:
        directory = self.app_dir(action.id)
        project = self._project(action.id)
        rec = read_record(self.state_dir, action.id)
        hook_note = ""
        if rec is not None and "uninstall" in rec.hooks and (directory / "compose.yaml").exists():
            # Before `down`: the hook runs in the app's service, which must still run.  A
            # failing hook is reported but does not keep the app installed.
            hook = rec.hooks["uninstall"]
            self._emit(action.deployment, "uninstall hook", f"in service {hook.service}")
            code, output = self.driver.exec(project, hook.service, hook.run, float(hook.timeout))
            if code != 0:
                tail = " | ".join(output.strip().splitlines()[-3:])
                hook_note = f" (uninstall hook exited {code}: {tail})"
        self._emit(action.deployment, "down", "docker compose down")
        if (directory / "compose.yaml").exists():
            try:
                self.driver.down(project, volumes=self.settings.purge)
            except ComposeError as exc:
                raise _Failed("down", exc.output) from None
        self._emit(action.deployment, "routes", "removing")
        if self.onion is not None and rec is not None and rec.onion_address:
            self._emit(action.deployment, "onion", "hidden service removed")
        with _step("routes"):
            self.host.withdraw(action.id)
        if self.settings.purge:
            shutil.rmtree(directory, ignore_errors=True)
            return "uninstalled; data purged" + hook_note
        if rec is not None:
            write_record(
                self.state_dir,
                rec.model_copy(update={"status": "uninstalled", "updated_at": _now()}),
            )
        return "uninstalled; data kept" + hook_note

    # ------------------------------------------------------------ records

    def _record(
        self, want: RenderedDeployment, status: AppStatus, error: str | None = None
    ) -> AppRecord:
        onion = self._onion_address(want)
        urls = self._urls(want)
        return _app_record(want, status, error).model_copy(
            update={
                "onion_address": onion,
                "onion_upstream": want.onion_upstream if onion else None,
                "urls": urls,
                "url": urls[0] if urls else None,
                "hooks": dict(want.hooks),
                "revision": want.source_revision,
                "from_env": {
                    key: (ref.spec, value_digest(want.id, key, self.environ[ref.spec]))
                    for key, ref in sorted(want.secrets.items())
                    if ref.source == "env" and ref.spec in self.environ
                },
            }
        )

    def _write_record(
        self, want: RenderedDeployment, status: AppStatus, error: str | None = None
    ) -> None:
        write_record(self.state_dir, self._record(want, status, error))

    def _mark_failed(self, want: RenderedDeployment, exc: _Failed) -> None:
        with contextlib.suppress(OSError, ValueError):
            failure = exc.classified()
            rec = self._record(want, "failed", failure.text()[:LAST_ERROR_CHARS])
            write_record(self.state_dir, rec.model_copy(update={"hint": failure.hint}))

    def _save_release(self, want: RenderedDeployment) -> None:
        """Keep this working release (files + image ids) for a later rollback."""
        image_ids = self.watch.image_ids(want.id)
        self._app(want.id).save_release(want, image_ids, self._record(want, "running"))

    def _latest_release(self, dpl_id: str) -> pathlib.Path | None:
        return self._app(dpl_id).latest_release()

    def _logs(self, dpl_id: str) -> str:
        try:
            return self.driver.logs(self._project(dpl_id), tail=20)
        except Exception:
            return ""


def _app_record(want: RenderedDeployment, status: AppStatus, error: str | None = None) -> AppRecord:
    """The secret-free ``state.json`` for a rendered deployment."""
    return AppRecord(
        id=want.id,
        name=want.name,
        namespace=want.namespace,
        spec_hash=want.spec_hash,
        status=status,
        services=list(want.services),
        one_shot=list(want.one_shot),
        record=spec_record(want),
        domain=want.domain,
        url=want.url,
        updated_at=_now(),
        last_error=error,
    )


def _references(compose_yaml: str, key: str) -> bool:
    """Whether the compose text interpolates ``key`` (``$KEY``, ``${KEY}``, ``${KEY:-x}``...).
    Textual on purpose: a false positive only costs a restart."""
    import re

    return re.search(rf"\$\{{?{re.escape(key)}(?![A-Za-z0-9_])", compose_yaml) is not None


def _hint(step: str, output: str) -> str | None:
    low = output.lower()
    if "pull access denied" in low or "no such host" in low or "not found: manifest" in low:
        return "the image is not available locally and no registry answered"
    if "port is already allocated" in low or "address already in use" in low:
        return "a host port is taken by another container or process"
    if "network" in low and "not found" in low:
        return "the proxy network is missing; it is created on the next apply"
    if step == "build":
        return "the Dockerfile failed to build; see the build output"
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
