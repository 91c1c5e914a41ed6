"""Opt-in: the control-plane tests with their store on PostgreSQL instead of SQLite.

    .venv/bin/python -m pytest -p tests.server.pgstore_plugin -m "not docker" tests/server

Every ``Store.in_dir(data_dir)`` of a test opens a fresh PostgreSQL schema instead (the
same one for the whole test, so a restart finds its data), and ``RECONCILE_DATABASE``
points the ``reconcile serve`` processes the tests start at it too.  Deselected: the tests
of the SQLite file itself (its modes and bytes, backup/restore, the CLI's ``--data-dir``)
and the PostgreSQL tests, which make their own schemas.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.server.store import Store
from tests.server.postgres_helpers import fresh_schema

SQLITE_ONLY = (
    "tests/server/test_backup.py::",
    "tests/server/test_copy_to_postgres.py::",
    "tests/server/test_serve_postgres.py::",
    "tests/server/test_store_postgres.py::",
    "tests/server/test_store.py::",
    "tests/server/test_fleet_hot_paths.py::TestHeartbeat::",  # traces SQLite statements
    "tests/server/test_hold.py::TestFileModes::",
    "tests/server/test_hold.py::TestCredentialsInUrls::test_a_source_url_token_is_nowhere",
    "tests/server/test_serve_process.py::test_serve_end_to_end_and_restart",
    "tests/server/test_serve_process.py::TestCli::test_agent_remove_from_the_data_dir",
    "tests/server/test_serve_process.py::TestCli::test_token_and_hook_from_the_data_dir",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [i for i in items if not i.nodeid.startswith(SQLITE_ONLY)]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid.startswith(SQLITE_ONLY)])
    items[:] = kept


@pytest.fixture(autouse=True)
def _store_on_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with fresh_schema("plugin") as url:
        monkeypatch.setattr(Store, "in_dir", classmethod(lambda cls, data_dir: cls(url)))
        monkeypatch.setenv("RECONCILE_DATABASE", url)
        yield
