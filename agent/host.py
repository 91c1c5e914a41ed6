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

Pushes coalesce (flat combining): a request takes a ticket; whoever holds the push lock
builds the set once for every ticket issued so far, so ten pipelines publishing while a
``POST /load`` is in flight cause one more push, not ten.  No thread of its own: the
pushing caller sees its own error, which becomes its pipeline's failure.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.onion import KEY_DIR, SECRET_KEY
from agent.statedir import app_dir, list_records
from reconciler.model.errors import ReconcilerError

__all__ = ["HostWriter", "OnionPort", "ProxyPort"]

ENSURE_ATTEMPTS = 3  # the proxy container made or found running, tries in a row
ENSURE_RETRY_DELAY = 1.0  # seconds between them


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
    pushes: int = 0  # proxy pushes made (a coalesced batch is one)
    sleep: Callable[[float], None] = time.sleep
    _overlays: dict[str, _Overlay] = field(default_factory=dict, init=False)
    _requested: int = field(default=0, init=False)
    _done: int = field(default=0, init=False)
    _keys_pushed: dict[str, pathlib.Path] | None = field(default=None, init=False)
    _state: threading.Lock = field(default_factory=threading.Lock, init=False)
    _push: threading.Lock = field(default_factory=threading.Lock, init=False)
    _ensure: threading.Lock = field(default_factory=threading.Lock, init=False)
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
    ) -> None:
        """Serve ``routes`` (and the hidden service in ``onion_key``) for ``dpl_id`` now,
        before or instead of what its record says."""
        self._flush(dpl_id, _Overlay(dict(routes), onion_key))

    def withdraw(self, dpl_id: str) -> None:
        """Serve nothing for ``dpl_id`` (uninstall, a failed install taken down)."""
        self._flush(dpl_id, _Overlay({}, None))

    def settled(self, dpl_id: str) -> None:
        """``dpl_id``'s record is written and says what its overlay said: drop the overlay.
        No push: the next one reads the record."""
        with self._state:
            self._overlays.pop(dpl_id, None)

    def repair(self) -> None:
        """Push records ∪ overlays again: a hand-edited or recreated proxy heals, and the
        Tor sidecar is told the full set even when nothing changed here."""
        self._check_open()
        with self._state:
            self._keys_pushed = None
        self._flush(None, None)

    def pending(self) -> int:
        """Requests not yet covered by a finished push (the one in flight included)."""
        with self._state:
            return self._requested - self._done

    def close(self) -> None:
        """Refuse any later call (a writer outliving its batch would push a stale set)."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the host writer is closed")

    def _flush(self, dpl_id: str | None, overlay: _Overlay | None) -> None:
        self._check_open()
        with self._state:
            if dpl_id is not None and overlay is not None:
                self._overlays[dpl_id] = overlay
            self._requested += 1
            ticket = self._requested
        with self._push:
            if self._done >= ticket:
                return  # a push that started after this request covered it
            with self._state:
                upto = self._requested
                overlays = dict(self._overlays)
            routes, keys = self._sets(overlays)
            try:
                self.proxy.sync(routes)
            except ReconcilerError:
                # The proxy went away since this batch's ensure (removed, restarting):
                # bring it back once and push again; a second failure is the caller's.
                self._ensure_proxy()
                self.proxy.sync(routes)
            self.pushes += 1
            if self.onion is not None and keys != self._keys_pushed:
                self.onion.sync(keys)
                self._keys_pushed = keys
            self._done = upto

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
