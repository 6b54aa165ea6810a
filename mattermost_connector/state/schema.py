"""The state store's tables, their migrations, the engine, and upserts that work on SQLite
and PostgreSQL alike.

The schema is versioned by a one-row table and upgraded in order by `MIGRATIONS`, so a file
written by an older release is migrated in place when a newer one opens it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

channel_cursors = sa.Table(
    "channel_cursors",
    metadata,
    sa.Column("channel_id", sa.String(64), primary_key=True),
    sa.Column("cursor", sa.Text, nullable=False),
    sa.Column("posts_delivered", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("channel_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_end", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("posts", sa.Integer, nullable=False, default=0),
    sa.Column("files", sa.Integer, nullable=False, default=0),
    sa.Column("objects", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
)


# What was delivered of each post: lets a later run tell an edit or a deletion from a reaction,
# and re-deliver a deleted post with the text it had (the server then answers "").
delivered_posts = sa.Table(
    "delivered_posts",
    metadata,
    sa.Column("post_id", sa.String(64), primary_key=True),
    sa.Column("channel_id", sa.String(64), nullable=False, index=True),
    sa.Column("root_id", sa.String(64)),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("create_at", sa.BigInteger, nullable=False),
    sa.Column("update_at", sa.BigInteger, nullable=False),
    sa.Column("edit_at", sa.BigInteger, nullable=False, default=0),
    sa.Column("delete_at", sa.BigInteger, nullable=False, default=0),
    sa.Column("message_sha256", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("seen_run", sa.Integer),
    # an integration post's attachments, display name and priority (integration_posts.kept)
    sa.Column("integration", sa.Text),
)


# Every attachment seen, embedded or not: its digest, and why it was left out if it was.
attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("file_id", sa.String(64), primary_key=True),
    sa.Column("post_id", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("mime_type", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),  # embedded uploaded too_large failed gone
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


# Who works on a channel: one run at a time, across processes and machines sharing the store.
channel_leases = sa.Table(
    "channel_leases",
    metadata,
    sa.Column("channel_id", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# Channel names as last resolved (`<team>/<channel>`), for `status`, which reads only the store.
channel_names = sa.Table(
    "channel_names",
    metadata,
    sa.Column("channel_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


# The name, team and username each Mattermost object had when first imported: STIX ids are
# derived from them, so that a rename or a move keeps one OpenCTI entity (see stix.py).
first_names = sa.Table(
    "first_names",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # channel | channel_team | user
    sa.Column("object_id", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


def _create_v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[channel_cursors, runs])


def _create_v2(connection: Connection) -> None:
    metadata.create_all(connection, tables=[delivered_posts])


def _create_v3(connection: Connection) -> None:
    metadata.create_all(connection, tables=[attachments])


def _create_v4(connection: Connection) -> None:
    metadata.create_all(connection, tables=[channel_leases])


def _create_v5(connection: Connection) -> None:
    metadata.create_all(connection, tables=[first_names])


def _create_v6(connection: Connection) -> None:
    metadata.create_all(connection, tables=[channel_names])


def _add_v7(connection: Connection) -> None:
    """delivered_posts.integration, unless the table was just created with it (v2)."""
    columns = {c["name"] for c in sa.inspect(connection).get_columns("delivered_posts")}
    if "integration" not in columns:
        connection.execute(sa.text("ALTER TABLE delivered_posts ADD COLUMN integration TEXT"))


# version -> step that brings the schema from version-1 to it
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _create_v1,
    2: _create_v2,
    3: _create_v3,
    4: _create_v4,
    5: _create_v5,
    6: _create_v6,
    7: _add_v7,
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(connection: Connection) -> int:
    """Bring the schema to SCHEMA_VERSION in `connection`'s transaction; returns the version
    found before."""
    schema_version.create(connection, checkfirst=True)
    found = connection.execute(sa.select(schema_version.c.version)).scalar()
    if found is None:
        connection.execute(schema_version.insert().values(version=0))
        found = 0
    for version in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](connection)
        connection.execute(schema_version.update().values(version=version))
    return found


def insert_construct(dialect: str) -> Callable[[sa.Table], Any] | None:
    """The dialect's INSERT that takes ON CONFLICT, or None where there is none."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


def upsert(
    connection: Connection,
    table: sa.Table,
    key: str,
    rows: list[dict[str, Any]],
    updated: Iterable[str],
) -> None:
    """Insert or update rows by primary key, on SQLite and PostgreSQL alike."""
    if not rows:
        return
    insert = insert_construct(connection.dialect.name)
    if insert is None:
        _replace(connection, table, key, rows)
        return
    statement = insert(table)
    changes = {name: statement.excluded[name] for name in updated}
    connection.execute(statement.on_conflict_do_update(index_elements=[key], set_=changes), rows)


def _replace(connection: Connection, table: sa.Table, key: str, rows: list[dict[str, Any]]) -> None:
    """The portable fallback where there is no ON CONFLICT: delete, then insert."""
    column = table.c[key]
    connection.execute(table.delete().where(column.in_([row[key] for row in rows])))
    connection.execute(table.insert(), rows)


# Rows per statement: 11 columns stay under the 999 parameters of SQLite before 3.32.
ROWS_PER_STATEMENT = 90


def upsert_values(
    connection: Connection,
    table: sa.Table,
    key: str,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    updated: tuple[str, ...],
) -> None:
    """`upsert` for rows of plain values (int, str, None) in `columns` order, many to a
    statement. A statement per row (executemany) releases the GIL at every row, and the
    thread reading ahead then takes it each time: beside a thread that computes and blocks
    in turn, 60,000 posts took 4.2 s this way against 5.5 s with executemany (alone, 2.2 s
    against 1.8 s). SQLAlchemy's per-row parameter processing is skipped (no conversion)."""
    if not rows:
        return
    position = columns.index(key)
    # PostgreSQL refuses to update one row twice in a statement: the last row of a key wins
    unique = list({row[position]: row for row in rows}.values())
    if insert_construct(connection.dialect.name) is None:
        _replace(connection, table, key, [dict(zip(columns, row, strict=True)) for row in unique])
        return
    for start in range(0, len(unique), ROWS_PER_STATEMENT):
        chunk = unique[start : start + ROWS_PER_STATEMENT]
        sql, names = _multirow_upsert(connection.dialect, table, key, columns, updated, len(chunk))
        values = [value for row in chunk for value in row]  # row after row, as bound
        if names is None:
            connection.exec_driver_sql(sql, tuple(values))
        else:
            connection.exec_driver_sql(sql, dict(zip(names, values, strict=True)))


@lru_cache(maxsize=256)
def _multirow_upsert(
    dialect: Any,
    table: sa.Table,
    key: str,
    columns: tuple[str, ...],
    updated: tuple[str, ...],
    count: int,
) -> tuple[str, list[str] | None]:
    """`INSERT ... VALUES (...) x count ... ON CONFLICT (key) DO UPDATE`, compiled once per
    size; the parameter names row after row for a named paramstyle, None for a positional one
    (whose order is checked to be row after row)."""
    insert = insert_construct(dialect.name)
    assert insert is not None
    names = [f"{column}__{row}" for row in range(count) for column in columns]
    statement = insert(table).values(
        [{c: sa.bindparam(f"{c}__{i}") for c in columns} for i in range(count)]
    )
    changes = {name: statement.excluded[name] for name in updated}
    compiled = statement.on_conflict_do_update(index_elements=[key], set_=changes).compile(
        dialect=dialect
    )
    if compiled.positional:
        if list(compiled.positiontup or []) != names:
            raise RuntimeError(f"unexpected parameter order for {table.name}")
        return compiled.string, None
    return compiled.string, names


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


def open_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Python's sqlite3 opens no transaction before DDL or SELECT: take over, so
            # that a check-then-write (migrations, leases) is one transaction.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL, in WAL mode, never corrupts and survives a crashed process; a power cut
            # may undo the last commits, which only moves a cursor back: those posts are sent
            # again with the same ids. FULL cost an fsync per delivered bundle.
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Post ids are random: each bundle's rows land all over the post_id index, so a
            # checkpoint every 32 MiB of WAL (not 4) writes each index page back once for many
            # bundles. (A larger page cache also helped alone, but not in a sync, and it grew
            # the process by 25 MB between 20,000 and 100,000 posts.)
            cursor.execute("PRAGMA wal_autocheckpoint=8192")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # the write lock up front: concurrent writers queue (busy timeout) instead of
            # reading the same state and both writing
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class EngineBound:
    """Base of each concern's store: its methods share one engine, each write its own
    committed transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
