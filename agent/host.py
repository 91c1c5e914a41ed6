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

Pushes are gathered: one thread pushes, and every request made while it waits a moment
(``GATHER_SECONDS``) or pushes goes out together in its next push, so deployments that
reach ``up`` at the same time cost one ``POST /load``, not one each.  ``publish`` returns
a future the pipeline waits for before its probe (it settles meanwhile), and a failed
push fails every request it carried: each becomes its pipeline's failure.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from agent.onion import KEY_DIR, SECRET_KEY
from agent.statedir import app_dir, list_records
from reconciler.model.errors import ReconcilerError

__all__ = ["HostWriter", "OnionPort", "ProxyPort"]

ENSURE_ATTEMPTS = 3  # the proxy container made or found running, tries in a row
ENSURE_RETRY_DELAY = 1.0  # seconds between them
# Seconds the writer waits after a request for others to join its push, while other
# deployments are in progress (alone, a deployment is pushed at once).  Measured with 20
# apps, 8 at a time: 20 `POST /load` without, 15 with 0.25 s, 8 with 1 s; well inside a
# settle window (3 s), which the pipeline spends meanwhile.
GATHER_SECONDS = 1.0


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


@dataclass
class HostWriter:
    state_dir: pathlib.Path
    proxy: ProxyPort
    onion: OnionPort | None = None
    pushes: int = 0  # proxy pushes made (a gathered batch is one)
    sleep: Callable[[float], None] = time.sleep
    gather: float = GATHER_SECONDS
    _overlays: dict[str, _Overlay] = field(default_factory=dict, init=False)
    _active: set[str] = field(default_factory=set, init=False)
    _waiting: list[Future[None]] = field(default_factory=list, init=False)
    _keys_pushed: dict[str, pathlib.Path] | None = field(default=None, init=False)
    _state: threading.Condition = field(default_factory=threading.Condition, init=False)
    _ensure: threading.Lock = field(default_factory=threading.Lock, init=False)
    _flusher: threading.Thread | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)

    def ensure_proxy(self) -> None:
        """The network and the proxy container; one caller at a time (each is cheap
        when all is in place: one inspect)."""
        self._check_open()
        self._ensure_proxy()

    def _ensure_proxy(self) -> None:
        with self._ensure:
            for attempt in range(ENSURE_ATTEMPTS):
                try:
                    self.proxy.ensure()
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
        """``dpl_id``'s pipeline started: while others run too, pushes are gathered."""
        with self._state:
            self._active.add(dpl_id)

    def settled(self, dpl_id: str) -> None:
        """``dpl_id``'s record is written and says what its overlay said: drop the overlay.
        No push: the next one reads the record."""
        with self._state:
            self._overlays.pop(dpl_id, None)
            self._active.discard(dpl_id)

    def repair(self) -> None:
        """Push records ∪ overlays again: a hand-edited or recreated proxy heals, and the
        Tor sidecar is told the full set even when nothing changed here."""
        self._check_open()
        with self._state:
            self._keys_pushed = None
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
            self._waiting.append(future)
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="host-writer", daemon=True
                )
                self._flusher.start()
            self._state.notify_all()
        return future

    def _flush_loop(self) -> None:
        """The one thread that pushes: wait for a request, let the others made at the
        same moment join it (``gather``), push once for all of them."""
        while True:
            with self._state:
                while not self._waiting and not self._closed:
                    self._state.wait()
                if not self._waiting:
                    return  # closed, nothing left
                others = len(self._active) > 1
            if self.gather > 0 and others:
                self.sleep(self.gather)
            with self._state:
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
        try:
            self.proxy.sync(routes)
        except ReconcilerError:
            # The proxy went away since this batch's ensure (removed, restarting): bring
            # it back and push again; a second failure is the requests'.
            self._ensure_proxy()
            self.proxy.sync(routes)
        self.pushes += 1
        if self.onion is not None and keys != self._keys_pushed:
            self.onion.sync(keys)
            self._keys_pushed = keys

    def _sets(
        self, overlays: Mapping[str, _Overlay]
    ) -> tuple[dict[str, str], dict[str, pathlib.Path]]:
        """The routes and onion keys of the host: running records, overlays in their place."""
        routes: dict[str, str] = {}
        keys: dict[str, pathlib.Path] = {}
        for rec in list_records(self.state_dir):
            if rec.id in overlays or rec.status != "running" or rec.record is None:
                continue
            for r in rec.record.routes:
                routes[r.domain] = r.upstream
            if rec.record.onion and rec.onion_address and rec.onion_upstream:
                routes[rec.onion_address] = rec.onion_upstream
            directory = app_dir(self.state_dir, rec.id) / KEY_DIR
            if rec.record.onion and (directory / SECRET_KEY).exists():
                keys[rec.id] = directory
        for dpl_id, overlay in sorted(overlays.items()):
            routes.update(overlay.routes)
            if overlay.onion_key is not None:
                keys[dpl_id] = overlay.onion_key
        return routes, keys
