"""Moving a control plane from SQLite to PostgreSQL: every row of the SQLite store, copied
into an empty PostgreSQL store in one transaction.

Both sides are first brought to this release's schema (the same migrations, translated on
PostgreSQL), so their tables and columns are the same and rows copy by column name.  The
target must be empty: copying into a store that already holds agents or commands would mix
two histories (and collide on ids).  One transaction, so a failure leaves the target as
empty as it was.  Identity columns (``events.id``, ``outbox.id``) keep their values, and
their sequences are moved past the copied ones, so the next event gets a higher id.

Run it with the server stopped: rows written to SQLite after the copy began are not in it.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

from reconciler.server.database import is_postgres_url
from reconciler.server.store import SchemaError, Store

__all__ = ["CopyResult", "copy_to_postgres"]

#: Rows sent per INSERT: few round trips, statements well under PostgreSQL's limits.
BATCH = 500
# Table and column names go into the SQL text (they cannot be parameters): only the plain
# names our migrations make are accepted, whatever a tampered file holds.
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(name: object) -> str:
    text = str(name)
    if not _NAME.match(text):
        raise SchemaError(f"unexpected table or column name {text[:80]!r}: not our database")
    return f'"{text}"'


@dataclass(frozen=True)
class CopyResult:
    schema_version: int
    counts: dict[str, int]  # rows copied, per table


def copy_to_postgres(source: pathlib.Path, url: str) -> CopyResult:
    """Copy the SQLite store ``source`` into the empty PostgreSQL store at ``url``.

    Raises :class:`SchemaError` when ``source`` is missing or not ours, or the target is
    not empty (nothing is written then), and ``DatabaseError`` when PostgreSQL cannot be
    used.
    """
    if not is_postgres_url(url):
        raise SchemaError("the target must be a postgresql:// URL")
    if not source.is_file():
        raise SchemaError(f"no control-plane database at {source}")
    src = Store(source)
    try:
        dst = Store(url)
        try:
            return _copy(src, dst)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: Store, dst: Store) -> CopyResult:
    tables = [
        str(r[0])
        for r in src.db.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
            "ORDER BY name"
        )
    ]
    ours = {
        str(r[0])
        for r in dst.db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    }
    identity = {
        (str(r[0]), str(r[1]))
        for r in dst.db.query(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'"
        )
    }
    counts: dict[str, int] = {}
    with dst.db.tx() as db:
        for table in tables:
            if table not in ours:
                raise SchemaError(f"{src.location}: table {table[:80]!r} is not ours")
            if db.execute(f"SELECT 1 FROM {_ident(table)} LIMIT 1").fetchone() is not None:  # noqa: S608
                raise SchemaError(
                    f"{dst.location}: table {table} already has rows; copy only into an empty "
                    "store (a fresh database or schema)"
                )
        for table in tables:
            rows = src.db.query(f"SELECT * FROM {_ident(table)}")  # noqa: S608
            counts[table] = len(rows)
            if not rows:
                continue
            columns = list(rows[0].keys())
            names = ", ".join(_ident(c) for c in columns)
            one = "(" + ", ".join("?" for _ in columns) + ")"
            # OVERRIDING SYSTEM VALUE: identity columns keep the ids the rows had.
            for start in range(0, len(rows), BATCH):
                chunk = rows[start : start + BATCH]
                db.execute(
                    f"INSERT INTO {_ident(table)} ({names}) OVERRIDING SYSTEM VALUE VALUES "  # noqa: S608
                    + ", ".join(one for _ in chunk),
                    [row[c] for row in chunk for c in columns],
                )
            for owner, column in identity:
                if owner == table:
                    top = f"SELECT max({_ident(column)}) FROM {_ident(table)}"  # noqa: S608
                    db.execute(
                        f"SELECT setval(pg_get_serial_sequence(?, ?), ({top}))", (table, column)
                    )
    return CopyResult(schema_version=dst.schema_version(), counts=counts)
