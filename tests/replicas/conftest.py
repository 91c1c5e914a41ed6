"""Several replicas on one database: the database they share, from one fixture.

``shared_db`` is the seam for more backends: each param gives the URL every replica is
started with (``database:`` in ``server.yaml``), a way to open the store in the test, and
a way to hold the commands table still (to stop a leader between two commands).  Today
it is SQLite in WAL mode: one file, several processes, which is a real replica set on
one host.  A PostgreSQL param adds a URL, a store opener, and ``LOCK TABLE commands``.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from reconciler.server.store import Store
from tests.server.conftest import Remote


@dataclass
class SharedDatabase:
    """The database of a replica set, as a test sees it."""

    url: str
    open_store: Callable[[], Store]
    #: A context manager: while inside it, no replica can create a command (the test's
    #: own transaction holds the write lock); a replica trying waits, it does not fail.
    hold_commands: Callable[[], contextlib.AbstractContextManager[None]]


def _sqlite(path: pathlib.Path) -> SharedDatabase:
    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=60)
        try:
            db.execute("BEGIN IMMEDIATE")  # SQLite: one writer; this is it
            yield
            db.execute("ROLLBACK")
        finally:
            db.close()

    return SharedDatabase(
        url=f"sqlite:///{path}", open_store=lambda: Store(path), hold_commands=hold
    )


@pytest.fixture(params=["sqlite"])
def shared_db(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> SharedDatabase:
    if request.param == "sqlite":
        path = tmp_path / "shared" / "reconcile.db"
        path.parent.mkdir()
        Store(path).close()  # migrated once, before the replicas race to open it
        return _sqlite(path)
    raise AssertionError(request.param)  # pragma: no cover


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> Remote:
    r = Remote(tmp_path)
    r.commit({"reconcile.yaml": "namespace: srv\n", "deployments/.keep": ""}, "empty repo")
    return r
