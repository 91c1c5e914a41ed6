"""Opt-in: the control-plane tests with their store on PostgreSQL instead of SQLite.

    .venv/bin/python -m pytest -p tests.server.pgstore_plugin tests/server/test_api.py ...

Every ``Store.in_dir(data_dir)`` of a test opens a fresh PostgreSQL schema instead (the
same one for the whole test, so a restart finds its data), and ``RECONCILE_DATABASE``
points the ``reconcile serve`` processes the tests start at it too.  Tests that look at
the SQLite file itself (its modes, its bytes, backup/restore) are not meant for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.server.store import Store
from tests.server.postgres_helpers import fresh_schema


@pytest.fixture(autouse=True)
def _store_on_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with fresh_schema("plugin") as url:
        monkeypatch.setattr(Store, "in_dir", classmethod(lambda cls, data_dir: cls(url)))
        monkeypatch.setenv("RECONCILE_DATABASE", url)
        yield
