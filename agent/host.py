"""The one writer of a host's shared state: the proxy's routes and the Tor sidecar's set.

Every deployment pipeline feeds it; none pushes a full set of its own.  Before this
module, each pipeline read every record and pushed the whole route set, so two installs
running at once raced: the later push was built from a read that predated the other's
record, both reported ``installed`` and only one domain was served (the Tor set worked
the same way, and there an empty set removes the sidecar).

What is pushed is *records ∪ overlays*: the records in the state dir (what finished
pipelines left, ``running`` only: a failed deployment's stack is down or rolled back)
with each in-flight deployment's overlay in place of its record (``publish``: routes
before the record exists; ``withdraw``: no routes while it is taken down).  A pipeline
calls ``settled`` once its record is written, and its overlay goes.

Pushes are gathered: one thread pushes.  A request waits until every pipeline in progress
has made its own (published, withdrawn, or ended without one), then one push carries them
all.  So a batch whose pipelines are all in the pool at once (the executor registers
them as it submits them; only the Docker-heavy steps are bounded tighter) costs one
``POST /load``.  Two bounds keep a slow pipeline (a long build or pull) from holding the
others' routes back: the push goes once no request came for ``gather`` seconds
(``GATHER_IDLE``), and at the latest ``GATHER_MAX`` seconds after its first request.  So
the count is at most one per ``GATHER_MAX`` seconds of a batch, plus one, whatever its
size, and a route waits at most ``GATHER_MAX``.  ``publish`` returns a future the
pipeline waits for before its probe, and a failed push fails every request it carried:
each becomes its pipeline's failure.

A push whose route set and Tor set equal the last push's makes no call at all (an
update that keeps its routes costs no ``POST /load`` and no read of the live config);
:meth:`HostWriter.repair` always asks the proxy, so a hand-edited one still heals.

The records are read once and cached per deployment, keyed by the ``state.json`` file's
inode, size and mtime: every record write is an atomic rename (a new inode), so a
record written by anyone, this process or another, is read again on the next push, and
the others are not (20 apps and 7 pushes read 140 records before).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from agent.onion import KEY_DIR, SECRET_KEY
from agent.statedir import app_dir, read_record, record_path
from reconciler.model.errors import ReconcilerError
from reconciler.model.ids import DEPLOYMENT_ID_RE

__all__ = ["HostWriter", "OnionPort", "ProxyPort", "default_compose_parallel"]

ENSURE_ATTEMPTS = 3  # the proxy container made or found running, tries in a row
ENSURE_RETRY_DELAY = 1.0  # seconds between them
# While pipelines in progress have not made their request yet, a push waits for them,
# but not once no request came for GATHER_IDLE seconds (a long build, a pull), and never
# longer than GATHER_MAX after its first request.  `up`s end about a second apart with
# two at a time on a busy 2-core host, so 5 s of quiet means a step far longer than `up`.
# Measured with 20 apps (4 in the pool, a fixed 1 s wait before each push): 7 `POST
# /load`; with all 20 in the pool and these bounds: 1 (README, apply figures).
GATHER_IDLE = 5.0
GATHER_MAX = 15.0


COMPOSE_PER_CORE = 1  # `docker compose` commands at once per core


def default_compose_parallel() -> int:
    """How many ``docker compose`` commands (build, up) run at once on a host: one per
    core, at least 2.  Each is a Go process plus the daemon's work on a 2-core machine;
    20 installs with 2 and with 4 at once took the same time within the noise (14-18 s
    on a load average of 13-18), so the smaller bound, which leaves the CPU to the
    settle windows' samples and the probes, stays."""
    return max(2, COMPOSE_PER_CORE * (os.cpu_count() or 1))


class ProxyPort(Protocol):
    def ensure(self) -> None: ...

    def sync(self, routes: Mapping[str, str]) -> object: ...

    def probe(self, domain: str, *, path: str = "/", timeout: float = 5) -> int: ...


class OnionPort(Protocol):
    def sync(self, keys: Mapping[str, pathlib.Path]) -> object:
        """Publish exactly these hidden services: ``{dpl_id: its key dir}``; an empty set
        when nothing was published is a cheap no-op."""


@dataclass(frozen=True)
class _Overlay:
    routes: Mapping[str, str]
    onion_key: pathlib.Path | None


@dataclass(frozen=True)
class _Served:
    """What one running record serves, with the ``state.json`` identity it was read from."""

    stamp: tuple[int, int, int]  # (inode, size, mtime ns)
    routes: Mapping[str, str]
    onion: bool  # a record with onion on: its key dir is checked on each push


@dataclass
class HostWriter:
    state_dir: pathlib.Path
    proxy: ProxyPort
    onion: OnionPort | None = None
    pushes: int = 0  # proxy pushes made (a gathered batch is one)
    unchanged: int = 0  # pushes not made: the same sets as the last push
    records_read: int = 0  # state.json files parsed (the cache's misses)
    sleep: Callable[[float], None] = time.sleep
    gather: float = GATHER_IDLE  # 0: push at once
    gather_max: float = GATHER_MAX
    # `docker compose` build/up commands at once on this host (the executors take a slot)
    compose_parallel: int = field(default_factory=default_compose_parallel)
    compose_slots: threading.BoundedSemaphore = field(init=False)
    _overlays: dict[str, _Overlay] = field(default_factory=dict, init=False)
    _active: set[str] = field(default_factory=set, init=False)
    _requested: set[str] = field(default_factory=set, init=False)  # active, made a request
    _waiting: list[Future[None]] = field(default_factory=list, init=False)
    _last_request: float = field(default=0.0, init=False)  # time.monotonic()
    _keys_pushed: dict[str, pathlib.Path] | None = field(default=None, init=False)
    _routes_pushed: dict[str, str] | None = field(default=None, init=False)
    _served: dict[str, _Served] = field(default_factory=dict, init=False)
    _ensured: bool = field(default=False, init=False)  # in this batch (cleared when idle)
    _state: threading.Condition = field(default_factory=threading.Condition, init=False)
    _ensure: threading.Lock = field(default_factory=threading.Lock, init=False)
    _flusher: threading.Thread | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.compose_slots = threading.BoundedSemaphore(max(1, self.compose_parallel))

    def ensure_proxy(self, *, force: bool = False) -> None:
        """The network and the proxy container, once per batch: the first pipeline checks
        (two inspects when all is in place), the others of the same batch rely on it, and
        a failed push or probe checks again (``force``).  One caller at a time."""
        self._check_open()
        self._ensure_proxy(force=force)

    def _ensure_proxy(self, *, force: bool = True) -> None:
        with self._ensure:
            if self._ensured and not force:
                return
            self._ensured = False
            for attempt in range(ENSURE_ATTEMPTS):
                try:
                    self.proxy.ensure()
                    self._ensured = True
                    return
                except ReconcilerError:
                    # Another process removing the container this very moment ("removal
                    # already in progress", an operator's `docker rm -f`) is over soon.
                    if attempt == ENSURE_ATTEMPTS - 1:
                        raise
                    self.sleep(ENSURE_RETRY_DELAY)

    def publish(
        self, dpl_id: str, routes: Mapping[str, str], onion_key: pathlib.Path | None
    ) -> Future[None]:
        """Serve ``routes`` (and the hidden service in ``onion_key``) for ``dpl_id``,
        before or instead of what its record says.  Done when a push carried it; the
        pipeline settles meanwhile and waits for it before its probe."""
        return self._request(dpl_id, _Overlay(dict(routes), onion_key))

    def withdraw(self, dpl_id: str) -> None:
        """Serve nothing for ``dpl_id`` (uninstall, a failed install taken down)."""
        self._request(dpl_id, _Overlay({}, None)).result()

    def begin(self, dpl_id: str) -> None:
        """``dpl_id``'s pipeline started: a push waits (at most ``gather``) until it has
        made its request or ended, so the pipelines of a batch share one push."""
        with self._state:
            self._active.add(dpl_id)
            self._requested.discard(dpl_id)

    def settled(self, dpl_id: str) -> None:
        """``dpl_id``'s record is written and says what its overlay said: drop the overlay
        (and the cached read of its record).  No push: the next one reads the record."""
        with self._state:
            self._overlays.pop(dpl_id, None)
            self._served.pop(dpl_id, None)
            self._active.discard(dpl_id)
            self._requested.discard(dpl_id)
            if not self._active:
                self._ensured = False  # the next batch checks the proxy again
            self._state.notify_all()

    def repair(self) -> None:
        """Push records ∪ overlays again, asking the proxy even when nothing changed
        here: a hand-edited or recreated proxy heals, and the Tor sidecar is told the
        full set."""
        self._check_open()
        with self._state:
            self._keys_pushed = None
            self._routes_pushed = None
        self._request(None, None).result()

    def pending(self) -> int:
        """Requests no push has carried yet (those of the push in flight excluded)."""
        with self._state:
            return len(self._waiting)

    def close(self) -> None:
        """Refuse any later call (a writer outliving its batch would push a stale set);
        requests already made are still pushed."""
        with self._state:
            self._closed = True
            self._state.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the host writer is closed")

    def _request(self, dpl_id: str | None, overlay: _Overlay | None) -> Future[None]:
        future: Future[None] = Future()
        with self._state:
            self._check_open()
            if dpl_id is not None and overlay is not None:
                self._overlays[dpl_id] = overlay
                self._requested.add(dpl_id)
            self._waiting.append(future)
            self._last_request = time.monotonic()
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="host-writer", daemon=True
                )
                self._flusher.start()
            self._state.notify_all()
        return future

    def _flush_loop(self) -> None:
        """The one thread that pushes: wait for a request, then until every pipeline in
        progress has made its own (at most ``gather`` seconds), push once for all."""
        while True:
            with self._state:
                while not self._waiting and not self._closed:
                    self._state.wait()
                if not self._waiting:
                    return  # closed, nothing left
                latest = time.monotonic() + self.gather_max
                while self.gather > 0 and self._active - self._requested and not self._closed:
                    now = time.monotonic()
                    left = min(latest, self._last_request + self.gather) - now
                    if left <= 0:
                        break
                    self._state.wait(left)
                waiting, self._waiting = self._waiting, []
                overlays = dict(self._overlays)
            try:
                self._push(overlays)
            except BaseException as exc:
                for future in waiting:
                    future.set_exception(exc)
            else:
                for future in waiting:
                    future.set_result(None)

    def _push(self, overlays: Mapping[str, _Overlay]) -> None:
        routes, keys = self._sets(overlays)
        if routes != self._routes_pushed:
            self._routes_pushed = None  # unknown until this push succeeds
            try:
                self.proxy.sync(routes)
            except ReconcilerError:
                # The proxy went away since this batch's ensure (removed, restarting):
                # bring it back and push again; a second failure is the requests'.
                self._ensure_proxy()
                self.proxy.sync(routes)
            self.pushes += 1
            self._routes_pushed = routes
        else:
            self.unchanged += 1
        if self.onion is not None and keys != self._keys_pushed:
            self.onion.sync(keys)
            self._keys_pushed = keys

    def _sets(
        self, overlays: Mapping[str, _Overlay]
    ) -> tuple[dict[str, str], dict[str, pathlib.Path]]:
        """The routes and onion keys of the host: running records, overlays in their place."""
        routes: dict[str, str] = {}
        keys: dict[str, pathlib.Path] = {}
        for dpl_id, served in self._records().items():
            if dpl_id in overlays:
                continue
            routes.update(served.routes)
            directory = app_dir(self.state_dir, dpl_id) / KEY_DIR
            if served.onion and (directory / SECRET_KEY).exists():
                keys[dpl_id] = directory
        for dpl_id, overlay in sorted(overlays.items()):
            routes.update(overlay.routes)
            if overlay.onion_key is not None:
                keys[dpl_id] = overlay.onion_key
        return routes, keys

    def _records(self) -> dict[str, _Served]:
        """What each running record serves, by id; a record is parsed again only when
        its file changed (a new inode, size or mtime), and a removed one is forgotten."""
        apps = self.state_dir / "apps"
        try:
            names = sorted(e.name for e in os.scandir(apps) if e.is_dir())
        except FileNotFoundError:
            names = []
        out: dict[str, _Served] = {}
        seen: set[str] = set()
        for dpl_id in names:
            if not DEPLOYMENT_ID_RE.match(dpl_id):
                continue
            seen.add(dpl_id)
            try:
                st = os.stat(record_path(self.state_dir, dpl_id))
            except OSError:
                self._served.pop(dpl_id, None)
                continue
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._served.get(dpl_id)
            if cached is None or cached.stamp != stamp:
                cached = self._served[dpl_id] = self._read(dpl_id, stamp)
            out[dpl_id] = cached
        for gone in set(self._served) - seen:
            del self._served[gone]
        return out

    def _read(self, dpl_id: str, stamp: tuple[int, int, int]) -> _Served:
        """One record's routes: none when it is not running or cannot be read."""
        self.records_read += 1
        rec = read_record(self.state_dir, dpl_id)
        if rec is None or rec.status != "running" or rec.record is None:
            return _Served(stamp, {}, False)
        routes = {r.domain: r.upstream for r in rec.record.routes}
        if rec.record.onion and rec.onion_address and rec.onion_upstream:
            routes[rec.onion_address] = rec.onion_upstream
        return _Served(stamp, routes, rec.record.onion)
