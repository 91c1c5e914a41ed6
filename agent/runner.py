"""One control-plane command, carried out on this host: bundle -> executor -> result.

The command carries everything the local pipeline (``reconcile apply``) would have
computed itself: the plan action, the rendered deployment, the repository's proxy
settings and the files the action needs (the bundle).  So the agent runs exactly the same
:meth:`Executor.apply_action` as a local apply; only where the inputs come from differs.

The real parts (Compose, Caddy, Docker) come in through ``make_executor``, so the
runner's logic is unit-tested with the fakes the executor's own tests use.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.bundle import BundleError, extract_bundle
from agent.client import ProtocolError
from agent.statedir import atomic_write
from reconciler.model.agentapi import Command, CommandResult
from reconciler.model.deployment import ProxyConfig
from reconciler.model.errors import ReconcilerError

if TYPE_CHECKING:
    from agent.executor import Executor, ExecutorSettings, StepEvent
    from agent.host import HostWriter
    from agent.onion import TorSidecar
    from agent.proxy import CaddyProxy, ProxySettings
    from reconciler.render.model import RenderedDeployment

__all__ = ["MAX_LOG_CHARS", "CommandRunner", "ExecutorFactory", "RealExecutorFactory"]

log = logging.getLogger(__name__)

MAX_LOG_CHARS = 8000

# (proxy settings, executor settings, step callback) -> an Executor for one command.
ExecutorFactory = Callable[
    ["ProxySettings", "ExecutorSettings", Callable[["StepEvent"], None]], "Executor"
]
# (command id, file to write the tar to) -> None; raises agent.client errors.
BundleFetcher = Callable[[str, pathlib.Path], object]


class RealExecutorFactory:
    """Docker Compose, the Caddy proxy container and the Docker Engine, as on a local apply.

    The proxy object is kept while the settings stay the same: its Docker client and
    its warm check of the proxy container are reused from one command to the next.  So
    is the host writer, which commands running side by side must share: it is what
    keeps one command's push from dropping another's routes.
    """

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.state_dir = state_dir
        self._proxy: tuple[ProxySettings, CaddyProxy, TorSidecar, HostWriter] | None = None
        self._lock = threading.Lock()

    def __call__(
        self,
        proxy_settings: ProxySettings,
        settings: ExecutorSettings,
        on_event: Callable[[StepEvent], None],
    ) -> Executor:
        from agent.compose import WhalesComposeDriver
        from agent.executor import Executor
        from agent.host import HostWriter
        from agent.onion import TorSettings, TorSidecar
        from agent.proxy import CaddyProxy
        from agent.watch import DockerWatch

        with self._lock:
            if self._proxy is None or self._proxy[0] != proxy_settings:
                if self._proxy is not None:
                    self._proxy[3].close()
                    self._proxy[1].close()
                proxy = CaddyProxy(proxy_settings)
                tor = TorSidecar(
                    TorSettings.from_env(self.state_dir, network=proxy_settings.network)
                )
                writer = HostWriter(self.state_dir, proxy, tor)
                self._proxy = (proxy_settings, proxy, tor, writer)
            _settings, proxy, tor, writer = self._proxy
        return Executor(
            state_dir=self.state_dir,
            driver=WhalesComposeDriver(),
            proxy=proxy,
            watch=DockerWatch(),
            settings=settings,
            onion=tor,
            on_event=on_event,
            writer=writer,
        )


class CommandRunner:
    def __init__(
        self,
        state_dir: pathlib.Path,
        fetch_bundle: BundleFetcher,
        make_executor: ExecutorFactory | None = None,
        *,
        default_settle: float = 2.0,
        on_event: Callable[[StepEvent], None] | None = None,
        on_progress: Callable[[str, StepEvent], None] | None = None,
    ) -> None:
        self.state_dir = pathlib.Path(state_dir)
        self.fetch_bundle = fetch_bundle
        self.make_executor: ExecutorFactory = make_executor or RealExecutorFactory(self.state_dir)
        self.default_settle = default_settle
        self.on_event = on_event or (lambda _e: None)
        # (command id, step): the live progress of a command; must be thread-safe, as
        # the executor may run steps of several deployments at once.
        self.on_progress = on_progress or (lambda _c, _e: None)
        # Commands in progress; housekeeping waits for a quiet moment.  (The host writer
        # already keeps its push from dropping an in-flight deployment's routes.)
        self._busy = _Busy()

    @property
    def proxy_file(self) -> pathlib.Path:
        return self.state_dir / "agent" / "proxy.json"

    def proxy_settings(self, command: Command) -> ProxySettings:
        """The command's proxy settings; else the last ones a command brought (an uninstall
        must not recreate the proxy on default ports); else the defaults."""
        from agent.proxy import ProxySettings

        if command.proxy is None:
            return self.proxy_settings_saved()
        try:
            atomic_write(self.proxy_file, command.proxy.model_dump_json().encode(), 0o600)
        except OSError as exc:  # pragma: no cover - the state dir is ours
            log.warning("cannot remember the proxy settings: %s", exc)
        return ProxySettings.from_config(command.proxy, self.state_dir)

    def housekeeping(self) -> bool:
        """Repair the host's shared parts between commands, as every `reconcile apply` does:
        the proxy (recreated with all routes if removed, routes re-pushed if edited) and
        the Tor sidecar.  The control plane cannot see either (agents report apps, not the
        proxy), so without this a removed proxy stayed down until the next command.

        Skipped while a command runs, and until a command has brought proxy settings (a
        host that never ran anything gets no proxy).  True when it ran and succeeded.
        """
        from agent.executor import ExecutorSettings
        from agent.statedir import list_records

        if not self.proxy_file.exists():
            return False
        records = [r for r in list_records(self.state_dir) if r.status != "uninstalled"]
        if not any(r.record and (r.record.routes or r.record.onion) for r in records):
            return False
        if not self._busy.idle():
            return False
        try:
            executor = self.make_executor(
                self.proxy_settings_saved(), ExecutorSettings(), self.on_event
            )
            executor.repair_host()
            return True
        except ReconcilerError as exc:
            log.warning("housekeeping: %s", exc)
            return False

    def proxy_settings_saved(self) -> ProxySettings:
        """The proxy settings the last command brought (housekeeping has no command)."""
        from agent.proxy import ProxySettings

        try:
            config = ProxyConfig.model_validate_json(self.proxy_file.read_bytes())
        except (OSError, ValidationError):
            config = ProxyConfig()
        return ProxySettings.from_config(config, self.state_dir)

    def clean_scratch(self) -> None:
        """Remove scratch repos a killed agent left behind (only this agent writes there)."""
        shutil.rmtree(self.state_dir / "agent" / "work", ignore_errors=True)

    def held_by_hand(self, command: Command) -> str | None:
        """Why this command must not run: its deployment was rolled back by hand and the
        command brings the very spec the hold is holding against (it was planned before
        the server saw the hold, e.g. a repair for the containers the rollback was
        recreating).  A command with another spec (git changed) runs and ends the hold."""
        from agent.statedir import read_record

        action = command.action
        if action.action not in ("update", "repair") or action.spec_hash is None:
            return None
        record = read_record(self.state_dir, action.id)
        if record is None or record.held is None or record.held.spec_hash != action.spec_hash:
            return None
        return (
            f"held: rolled back by hand to release {record.held.release}; not applied "
            "until its file changes in git"
        )

    def run_operation(self, command: Command) -> CommandResult:
        """A day-2 operation (agent.operations); its answer goes back as the payload."""
        from agent.executor import ExecutorSettings
        from agent.operations import perform

        start = time.monotonic()
        if command.operation is None:
            return CommandResult(ok=False, message="the operation command carries no operation")

        def executor() -> Executor:
            return self.make_executor(
                self.proxy_settings_saved(), ExecutorSettings(), self.on_event
            )

        # Held like a command: a rollback pushes routes, which housekeeping must not race.
        with self._busy:
            outcome = perform(command.operation, self.state_dir, executor)
        return CommandResult(
            ok=outcome.ok,
            message=outcome.error or f"{command.operation.op} {command.operation.deployment}: done",
            seconds=time.monotonic() - start,
            payload=outcome.model_dump(mode="json"),
        )

    def run(self, command: Command) -> CommandResult:
        """Carry out ``command``; a failure of the action is a result with ``ok=False``.

        Raises only :class:`agent.client.Unavailable` (the bundle could not be fetched:
        the command is abandoned and redone when the server hands it out again).
        """
        # Imported here: ``reconciler.render`` costs ~150 ms the daemon need not pay to start.
        from agent.executor import ExecutorSettings
        from reconciler.render.model import RenderedDeployment

        start = time.monotonic()

        def failed(message: str) -> CommandResult:
            return CommandResult(ok=False, message=message, seconds=time.monotonic() - start)

        if command.kind == "operation":
            return self.run_operation(command)
        held = self.held_by_hand(command)
        if held is not None:
            return CommandResult(ok=True, message=held)
        action = command.action
        want: RenderedDeployment | None = None
        if action.action not in ("install", "update", "repair", "uninstall"):
            return failed(f"unsupported action {action.action!r}")
        if action.action != "uninstall":
            if command.deployment is None:
                return failed(f"the {action.action} command carries no deployment")
            try:
                want = RenderedDeployment.model_validate(command.deployment)
            except ValidationError as exc:
                return failed(f"the command's deployment is not valid: {exc}")
            if want.id != action.id:
                return failed(f"the deployment {want.id} does not match the action's {action.id}")
        settings = ExecutorSettings(
            settle_seconds=(
                command.settle_seconds
                if command.settle_seconds is not None
                else self.default_settle
            ),
            purge=command.purge,
        )

        def on_event(event: StepEvent) -> None:
            self.on_event(event)
            self.on_progress(command.id, event)

        work = self.state_dir / "agent" / "work"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{command.id}-", dir=work))
        try:
            repo_root = scratch / "repo"
            repo_root.mkdir()
            if command.has_bundle:
                archive = scratch / "bundle.tar"
                roots = want.shipped_dirs() if want is not None else []
                try:
                    self.fetch_bundle(command.id, archive)
                    extract_bundle(archive, repo_root, link_roots=roots)
                except (BundleError, ProtocolError, OSError) as exc:
                    return failed(f"bundle refused: {exc}")
                finally:
                    archive.unlink(missing_ok=True)
            try:
                with self._busy:
                    executor = self.make_executor(self.proxy_settings(command), settings, on_event)
                    outcome = executor.apply_action(action, want, repo_root)
            except Exception as exc:  # the executor types its own failures; this is a bug
                log.exception("command %s: the executor raised", command.id)
                return failed(f"agent error: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return CommandResult(
            ok=outcome.ok,
            message=outcome.message,
            rolled_back=outcome.rolled_back,
            seconds=outcome.seconds,
            url=outcome.url,
            logs=outcome.logs[-MAX_LOG_CHARS:],
        )


class _Busy:
    """How many commands run now (they run side by side, so a lock no longer fits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def __enter__(self) -> None:
        with self._lock:
            self._running += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._running -= 1

    def idle(self) -> bool:
        with self._lock:
            return self._running == 0
