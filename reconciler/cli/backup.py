"""``reconcile serve backup`` and ``reconcile serve restore``: the control plane's store.

A backup is taken online (the server keeps running; see :mod:`reconciler.server.backup`
for why it is consistent).  A restore is offline: it refuses a file from a newer schema
or one that is not ours before it touches anything.
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from reconciler.cli.app import _console
from reconciler.cli.serve import (
    DatabaseOption,
    DataDirOption,
    _fail,
    serve_app,
    shared_database,
)

__all__ = ["backup_command", "copy_to_postgres_command", "restore_command"]


def _sqlite_store(
    data_dir: pathlib.Path | None, database: str | None
) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The data dir and the SQLite file (None: the data dir's) to copy: ``--database``, else
    ``--data-dir``, else the store ``reconcile serve`` would open from the environment.  A
    store on PostgreSQL is refused (exit 2) with the tools to use instead: copying the data
    dir's SQLite file then would give a backup that restores nothing."""
    from reconciler.model.errors import ReconcilerError
    from reconciler.model.redact import redact
    from reconciler.server.backup import sqlite_file
    from reconciler.server.config import default_data_dir, store_location

    if database is not None and data_dir is not None:
        raise _fail("give --data-dir or --database, not both", 2)
    if database is None and data_dir is None:
        database = shared_database(None)
    directory = data_dir if data_dir is not None else default_data_dir()
    try:
        file = sqlite_file(store_location(database, directory))
    except ReconcilerError as exc:
        raise _fail(redact(str(exc)), 2) from None
    return directory, file if database is not None else None


@serve_app.command("backup")
def backup_command(
    to: Annotated[
        pathlib.Path,
        typer.Option(
            "--to", help="The backup file to write (replaced atomically).", show_default=False
        ),
    ],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Copy the server's database to a file, consistently, while the server runs (SQLite;
    on PostgreSQL use pg_dump)."""
    from rich.markup import escape

    from reconciler.server.backup import backup_store
    from reconciler.server.store import SchemaError

    try:
        directory, file = _sqlite_store(data_dir, database)
        result = backup_store(directory, to, file=file)
    except SchemaError as exc:
        raise _fail(escape(str(exc))) from None
    except OSError as exc:
        raise _fail(escape(f"cannot write {to}: {exc.strerror or exc}")) from None
    counts = ", ".join(f"{n} {table}" for table, n in result.counts.items())
    _console(stderr=True).print(
        f"backup: {result.path} (schema {result.schema_version}, {result.size} bytes: {counts})",
        highlight=False,
        markup=False,
    )


@serve_app.command("restore")
def restore_command(
    source: Annotated[
        pathlib.Path,
        typer.Option("--from", help="A file made by `reconcile serve backup`.", show_default=False),
    ],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing database (it is kept beside it)."),
    ] = False,
) -> None:
    """Make a backup the server's database (stop the server first); migrations run."""
    from rich.markup import escape

    from reconciler.server.backup import restore_store
    from reconciler.server.store import SchemaError

    try:
        directory, file = _sqlite_store(data_dir, database)
        result = restore_store(source, directory, force=force, file=file)
    except SchemaError as exc:
        raise _fail(escape(str(exc))) from None
    except OSError as exc:
        raise _fail(escape(f"cannot restore {source}: {exc.strerror or exc}")) from None
    err = _console(stderr=True)
    upgraded = (
        f", migrated from schema {result.from_version}"
        if result.from_version != result.schema_version
        else ""
    )
    err.print(
        f"restored {source} into {result.path} (schema {result.schema_version}{upgraded})",
        highlight=False,
        markup=False,
    )
    if result.replaced is not None:
        err.print(
            f"the previous database is kept as {result.replaced}", highlight=False, markup=False
        )


@serve_app.command("copy-to-postgres")
def copy_to_postgres_command(
    data_dir: DataDirOption = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="The empty PostgreSQL store to fill (default: $RECONCILE_DATABASE or the file "
            "$RECONCILE_DATABASE_FILE names). Put a password in those, not in this flag.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Copy the SQLite store into an empty PostgreSQL one (stop the server first)."""
    from rich.markup import escape

    from reconciler.model.errors import ReconcilerError
    from reconciler.server.config import default_data_dir
    from reconciler.server.copystore import copy_to_postgres
    from reconciler.server.database import redact_url
    from reconciler.server.store import DB_NAME

    url = shared_database(database)
    if not url:
        raise _fail("no target: set RECONCILE_DATABASE(_FILE) or pass --database", 2)
    source = (data_dir if data_dir is not None else default_data_dir()) / DB_NAME
    try:
        result = copy_to_postgres(source, url)
    except ReconcilerError as exc:
        raise _fail(escape(redact_url(str(exc)))) from None
    counts = ", ".join(f"{n} {table}" for table, n in result.counts.items() if n)
    _console(stderr=True).print(
        f"copied {source} into {redact_url(url)} (schema {result.schema_version}: "
        f"{counts or 'no rows'}); start `reconcile serve` with that database now",
        highlight=False,
        markup=False,
    )
