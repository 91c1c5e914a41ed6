"""The test PostgreSQL server: a fresh schema per test, dropped afterwards.

``scripts/setup.sh --dev`` starts the server (its own cluster, 127.0.0.1:55432) with the role
and database of :data:`DEFAULT_DSN`; ``RECONCILE_TEST_POSTGRES`` points the tests elsewhere.
A server that does not answer FAILS the test with a clear message (CI must not go green by
skipping), like the Docker tests; ``RECONCILE_SKIP_POSTGRES=1`` turns that into a skip.

Each test gets a schema of its own in the one database (the URL's
``options=-csearch_path=...``): creating one takes milliseconds where a database takes a
checkpoint, and suites running at the same time never see each other's tables, locks or
notifications (the store scopes those by schema).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_DSN = "postgresql://reconciler:reconciler@127.0.0.1:55432/reconciler_test"


def postgres_dsn() -> str:
    return os.environ.get("RECONCILE_TEST_POSTGRES") or DEFAULT_DSN


def admin_connection() -> Any:
    """A psycopg connection (autocommit) to the test database, or a failed test."""
    import psycopg

    try:
        return psycopg.connect(postgres_dsn(), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        if os.environ.get("RECONCILE_SKIP_POSTGRES") == "1":
            pytest.skip(f"no PostgreSQL and RECONCILE_SKIP_POSTGRES=1 ({exc})")
        pytest.fail(
            "these tests need PostgreSQL and none answered at RECONCILE_TEST_POSTGRES "
            f"(default {DEFAULT_DSN}): {type(exc).__name__}: {exc}. Start it with "
            "`bash scripts/setup.sh --dev`, or set RECONCILE_SKIP_POSTGRES=1 to skip them on "
            "purpose.",
            pytrace=False,
        )


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose sessions use ``schema`` (and only it)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@contextlib.contextmanager
def fresh_schema(prefix: str = "t") -> Iterator[str]:
    """A URL whose sessions see a new, empty schema; the schema is dropped afterwards."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(postgres_dsn(), schema)
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def terminate_backend(pid: int) -> None:
    """Kill one server process (a replica's connection) as a crash would."""
    with admin_connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
