"""Per-channel cursors and run history, in SQLite by default or any SQLAlchemy database.

The schema is versioned by a one-row table and upgraded in order by `MIGRATIONS`, so a file
written by an older release is migrated in place when a newer one opens it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from mattermost_connector.errors import ConnectorError

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


# version -> step that brings the schema from version-1 to it
def _create_v4(connection: Connection) -> None:
    metadata.create_all(connection, tables=[channel_leases])


def _create_v5(connection: Connection) -> None:
    metadata.create_all(connection, tables=[first_names])


def _create_v6(connection: Connection) -> None:
    metadata.create_all(connection, tables=[channel_names])


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _create_v1,
    2: _create_v2,
    3: _create_v3,
    4: _create_v4,
    5: _create_v5,
    6: _create_v6,
}
SCHEMA_VERSION = max(MIGRATIONS)


@dataclass(frozen=True)
class RunRecord:
    id: int
    flow_run_id: str | None
    channel_id: str
    kind: str
    started_at: datetime
    ended_at: datetime | None
    status: str
    posts: int
    files: int
    objects: int
    error: str | None


def _insert_construct(dialect: str) -> Callable[[sa.Table], Any] | None:
    """The dialect's INSERT that takes ON CONFLICT, or None where there is none."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


def _upsert(
    connection: Connection,
    table: sa.Table,
    key: str,
    rows: list[dict[str, Any]],
    updated: Iterable[str],
) -> None:
    """Insert or update rows by primary key, on SQLite and PostgreSQL alike."""
    if not rows:
        return
    insert = _insert_construct(connection.dialect.name)
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


# Rows per statement: 10 columns stay under the 999 parameters of SQLite before 3.32.
ROWS_PER_STATEMENT = 99


def _upsert_values(
    connection: Connection,
    table: sa.Table,
    key: str,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    updated: tuple[str, ...],
) -> None:
    """`_upsert` for rows of plain values (int, str, None) in `columns` order, many to a
    statement. A statement per row (executemany) releases the GIL at every row, and the
    thread reading ahead then takes it each time: beside a thread that computes and blocks
    in turn, 60,000 posts took 4.2 s this way against 5.5 s with executemany (alone, 2.2 s
    against 1.8 s). SQLAlchemy's per-row parameter processing is skipped (no conversion)."""
    if not rows:
        return
    position = columns.index(key)
    # PostgreSQL refuses to update one row twice in a statement: the last row of a key wins
    unique = list({row[position]: row for row in rows}.values())
    if _insert_construct(connection.dialect.name) is None:
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
    insert = _insert_construct(dialect.name)
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


INTERRUPTED = "interrupted: its process ended without closing the run (killed or crashed)"


def message_digest(message: str) -> str:
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


POST_COLUMNS = (
    "post_id",
    "channel_id",
    "root_id",
    "user_id",
    "create_at",
    "update_at",
    "edit_at",
    "delete_at",
    "message_sha256",
    "message",
)
POST_UPDATED = ("update_at", "edit_at", "delete_at", "message_sha256", "message")


def post_values(channel_id: str, post: dict[str, Any]) -> tuple[Any, ...]:
    """The delivered_posts row of a post as it was delivered, in POST_COLUMNS order."""
    message = post.get("message") or ""
    created = int(post["create_at"])
    return (
        post["id"],
        channel_id,
        post.get("root_id") or None,
        post["user_id"],
        created,
        int(post.get("update_at") or created),
        int(post.get("edit_at") or 0),
        int(post.get("delete_at") or 0),
        message_digest(message),
        message,
    )


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _engine(url: str) -> Engine:
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


class StateStore:
    """Cursors and runs. Each write is its own committed transaction."""

    def __init__(self, url: str) -> None:
        try:
            self._engine = _engine(url)
            self._migrate_racing()
        except (SQLAlchemyError, OSError, ImportError) as error:
            raise ConnectorError(
                f"CONNECTOR_STATE_DATABASE_URL: cannot open the state store "
                f"({type(error).__name__}: {str(error).splitlines()[0]})"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    def _migrate_racing(self, attempts: int = 5) -> None:
        """Several processes may open a new store at once: the losers of the race fail on
        CREATE TABLE (their transaction wrote nothing) and find the schema done on retry."""
        for attempt in range(attempts):
            try:
                self.migrate()
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; returns the version found before."""
        with self._engine.begin() as connection:
            schema_version.create(connection, checkfirst=True)
            found = connection.execute(sa.select(schema_version.c.version)).scalar()
            if found is None:
                connection.execute(schema_version.insert().values(version=0))
                found = 0
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](connection)
                connection.execute(schema_version.update().values(version=version))
        return found

    # -- channel leases ----------------------------------------------------------------------

    def try_lease(self, channel_id: str, holder: str, seconds: float) -> bool:
        """Take the channel if it is free or its lease ran out (a holder that died); renew it
        if `holder` has it already."""
        table, now = channel_leases, _now()
        until = now + timedelta(seconds=seconds)
        with self._engine.begin() as connection:
            taken = connection.execute(
                table.update()
                .where(table.c.channel_id == channel_id)
                .where(sa.or_(table.c.holder == holder, table.c.expires_at < now))
                .values(holder=holder, expires_at=until)
            ).rowcount
            if taken:
                return True
            try:
                with connection.begin_nested():
                    connection.execute(
                        table.insert().values(
                            channel_id=channel_id, holder=holder, expires_at=until
                        )
                    )
            except IntegrityError:
                return False
            return True

    def lease_holder(self, channel_id: str) -> tuple[str, datetime] | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(channel_leases.c.holder, channel_leases.c.expires_at).where(
                    channel_leases.c.channel_id == channel_id
                )
            ).first()
        return (row[0], row[1]) if row else None

    def release_lease(self, channel_id: str, holder: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                channel_leases.delete()
                .where(channel_leases.c.channel_id == channel_id)
                .where(channel_leases.c.holder == holder)
            )

    def touch(self) -> None:
        """A real write that changes nothing: proves the store is writable."""
        with self._engine.begin() as connection:
            connection.execute(schema_version.update().values(version=schema_version.c.version))

    def version(self) -> int:
        with self._engine.connect() as connection:
            return connection.execute(sa.select(schema_version.c.version)).scalar_one()

    # -- first names -----------------------------------------------------------------------

    def pin_names(self, kind: str, current: dict[str, str]) -> dict[str, str]:
        """The value first recorded for each object of `kind`, recording `current` for those
        seen for the first time. Concurrent callers agree: the first insert wins."""
        if not current:
            return {}
        table, now = first_names, _now()
        ids = list(current)
        with self._engine.begin() as connection:
            found = self._names(connection, kind, ids)
            rows = [
                {"kind": kind, "object_id": i, "value": current[i], "recorded_at": now}
                for i in ids
                if i not in found
            ]
            if rows:
                insert = _insert_construct(connection.dialect.name)
                if insert is not None:
                    connection.execute(insert(table).on_conflict_do_nothing(), rows)
                else:
                    for row in rows:
                        try:
                            with connection.begin_nested():
                                connection.execute(table.insert(), row)
                        except IntegrityError:
                            pass
                found = self._names(connection, kind, ids)
        return found

    @staticmethod
    def _names(connection: Connection, kind: str, ids: list[str]) -> dict[str, str]:
        table, found = first_names, {}
        for start in range(0, len(ids), 500):
            query = (
                sa.select(table.c.object_id, table.c.value)
                .where(table.c.kind == kind)
                .where(table.c.object_id.in_(ids[start : start + 500]))
            )
            found.update({row[0]: row[1] for row in connection.execute(query)})
        return found

    # -- cursors ---------------------------------------------------------------------------

    def cursor(self, channel_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            raw = connection.execute(
                sa.select(channel_cursors.c.cursor).where(
                    channel_cursors.c.channel_id == channel_id
                )
            ).scalar()
        return json.loads(raw) if raw else None

    def save_cursor(
        self,
        key: str,
        cursor: dict[str, Any],
        posts_delivered: int = 0,
        delivered: Iterable[dict[str, Any]] = (),
        channel_id: str | None = None,
    ) -> None:
        """Record, in one transaction, that everything up to `cursor` and the `delivered`
        posts (of `channel_id`, default `key`) are delivered. Call only after delivery.

        `key` is the channel id for a sync, a backfill window's own key otherwise.
        """
        self.record_delivery(key, channel_id or key, cursor, delivered, posts_delivered)

    def record_delivery(
        self,
        key: str,
        channel_id: str,
        cursor: dict[str, Any] | None,
        delivered: Iterable[dict[str, Any]] = (),
        posts_delivered: int = 0,
        files: Iterable[dict[str, Any]] = (),
        run_id: int | None = None,
    ) -> None:
        """One delivered bundle in one transaction (one commit per bundle, not three): its
        posts, its files' fates and, when it moves it, the cursor under `key`."""
        with self._engine.begin() as connection:
            self._upsert_posts(connection, channel_id, delivered)
            self._upsert_attachments(connection, channel_id, files, run_id)
            if cursor is not None:
                self._write_cursor(connection, key, cursor, posts_delivered)

    @staticmethod
    def _write_cursor(
        connection: Connection, key: str, cursor: dict[str, Any], posts_delivered: int
    ) -> None:
        table = channel_cursors
        encoded = json.dumps(cursor, sort_keys=True)
        updated = connection.execute(
            table.update()
            .where(table.c.channel_id == key)
            .values(
                cursor=encoded,
                posts_delivered=table.c.posts_delivered + posts_delivered,
                updated_at=_now(),
            )
        ).rowcount
        if not updated:
            connection.execute(
                table.insert().values(
                    channel_id=key,
                    cursor=encoded,
                    posts_delivered=posts_delivered,
                    updated_at=_now(),
                )
            )

    def record_posts(self, channel_id: str, delivered: Iterable[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            self._upsert_posts(connection, channel_id, delivered)

    def _upsert_posts(
        self, connection: Connection, channel_id: str, posts: Iterable[dict[str, Any]]
    ) -> None:
        rows = [post_values(channel_id, post) for post in posts]
        _upsert_values(connection, delivered_posts, "post_id", POST_COLUMNS, rows, POST_UPDATED)

    def record_attachments(
        self, channel_id: str, rows: Iterable[dict[str, Any]], run_id: int | None = None
    ) -> None:
        """Record what became of each file: embedded (with its sha256), too large, failed."""
        with self._engine.begin() as connection:
            self._upsert_attachments(connection, channel_id, rows, run_id)

    @staticmethod
    def _upsert_attachments(
        connection: Connection,
        channel_id: str,
        rows: Iterable[dict[str, Any]],
        run_id: int | None,
    ) -> None:
        now = _now()
        full = [
            {**row, "channel_id": channel_id, "run_id": run_id, "updated_at": now} for row in rows
        ]
        columns = ("name", "mime_type", "size", "sha256", "status", "error", "run_id", "updated_at")
        _upsert(connection, attachments, "file_id", full, columns)

    def attachments(self, channel_id: str) -> list[dict[str, Any]]:
        query = sa.select(attachments).where(attachments.c.channel_id == channel_id)
        with self._engine.connect() as connection:
            return [
                dict(row)
                for row in connection.execute(query.order_by(attachments.c.file_id)).mappings()
            ]

    def file_fates(self, run_id: int) -> dict[str, int]:
        """How many files this run settled, by fate (embedded, uploaded, too_large, failed,
        gone): the rows it recorded last."""
        query = (
            sa.select(attachments.c.status, sa.func.count())
            .where(attachments.c.run_id == run_id)
            .group_by(attachments.c.status)
        )
        with self._engine.connect() as connection:
            return {status: int(count) for status, count in connection.execute(query)}

    def attachments_of(self, post_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The attachments rows of these posts, by post id, in file id order."""
        ids = sorted(set(post_ids))
        found: dict[str, list[dict[str, Any]]] = {}
        with self._engine.connect() as connection:
            for start in range(0, len(ids), 500):
                query = (
                    sa.select(attachments)
                    .where(attachments.c.post_id.in_(ids[start : start + 500]))
                    .order_by(attachments.c.file_id)
                )
                for row in connection.execute(query).mappings():
                    found.setdefault(row["post_id"], []).append(dict(row))
        return found

    def posts_with_missing_files(
        self, channel_id: str, max_size: int, limit: int = 200, before_run: int | None = None
    ) -> list[str]:
        """Posts delivered without a file that may be fetched now: it failed, or was over a
        size cap that has since been raised. `before_run`: only files settled by an earlier
        run (one that failed in this run was just tried, with retries)."""
        table = attachments
        query = (
            sa.select(table.c.post_id)
            .where(table.c.channel_id == channel_id)
            .where(
                sa.or_(
                    table.c.status == "failed",
                    sa.and_(table.c.status == "too_large", table.c.size <= max_size),
                )
            )
            .distinct()
            .order_by(table.c.post_id)
            .limit(limit)
        )
        if before_run is not None:
            query = query.where(sa.or_(table.c.run_id.is_(None), table.c.run_id != before_run))
        with self._engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def delivered(self, post_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """What was delivered of these posts, by id (absent: never delivered)."""
        ids = list(set(post_ids))
        found: dict[str, dict[str, Any]] = {}
        with self._engine.connect() as connection:
            for start in range(0, len(ids), 500):
                query = sa.select(delivered_posts).where(
                    delivered_posts.c.post_id.in_(ids[start : start + 500])
                )
                found.update(
                    {row["post_id"]: dict(row) for row in connection.execute(query).mappings()}
                )
        return found

    def mark_seen(self, channel_id: str, post_ids: Iterable[str], run_id: int) -> None:
        ids = list(post_ids)
        with self._engine.begin() as connection:
            for start in range(0, len(ids), 500):
                connection.execute(
                    delivered_posts.update()
                    .where(delivered_posts.c.channel_id == channel_id)
                    .where(delivered_posts.c.post_id.in_(ids[start : start + 500]))
                    .values(seen_run=run_id)
                )

    def unseen(
        self, channel_id: str, run_id: int, created_from: int, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Live-looking delivered posts that a complete listing did not return: gone."""
        table = delivered_posts
        query = (
            sa.select(table)
            .where(table.c.channel_id == channel_id)
            .where(table.c.delete_at == 0)
            .where(table.c.create_at >= created_from)
            .where(sa.or_(table.c.seen_run.is_(None), table.c.seen_run != run_id))
            .order_by(table.c.create_at, table.c.post_id)
            .limit(limit)
        )
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def cursors(self) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                sa.select(channel_cursors).order_by(channel_cursors.c.channel_id)
            ).mappings()
            return [dict(row, cursor=json.loads(row["cursor"])) for row in rows]

    # -- run history -----------------------------------------------------------------------

    def start_run(
        self,
        channel_id: str,
        kind: str,
        flow_run_id: str | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> int:
        """A new `running` row. Call holding the channel's lease: any other row of the channel
        still `running` then belongs to a process that died without closing it (SIGKILL, a
        crash), and is closed as failed here, so that history and `status` tell the truth."""
        with self._engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.channel_id == channel_id)
                .where(runs.c.status == "running")
                .values(status="failed", ended_at=_now(), error=INTERRUPTED)
            )
            result = connection.execute(
                runs.insert().values(
                    channel_id=channel_id,
                    kind=kind,
                    flow_run_id=flow_run_id,
                    window_start=window[0],
                    window_end=window[1],
                    started_at=_now(),
                    status="running",
                    posts=0,
                    files=0,
                    objects=0,
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        posts: int = 0,
        files: int = 0,
        objects: int = 0,
        error: str | None = None,
    ) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    ended_at=_now(),
                    posts=posts,
                    files=files,
                    objects=objects,
                    error=error,
                )
            )

    def runs(self, limit: int = 20, channel_id: str | None = None) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if channel_id:
            query = query.where(runs.c.channel_id == channel_id)
        with self._engine.connect() as connection:
            return [
                RunRecord(**{k: v for k, v in row.items() if k in RunRecord.__dataclass_fields__})
                for row in connection.execute(query).mappings()
            ]

    # -- channel names -----------------------------------------------------------------------

    def posts_delivered(self, key: str) -> int:
        """How many posts runs of this cursor (a channel, or a backfill window) delivered."""
        with self._engine.connect() as connection:
            count = connection.execute(
                sa.select(channel_cursors.c.posts_delivered).where(
                    channel_cursors.c.channel_id == key
                )
            ).scalar()
        return int(count or 0)

    def remember_name(self, channel_id: str, name: str) -> None:
        with self._engine.begin() as connection:
            _upsert(
                connection,
                channel_names,
                "channel_id",
                [{"channel_id": channel_id, "name": name, "updated_at": _now()}],
                ("name", "updated_at"),
            )

    def channel_names(self) -> dict[str, str]:
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(channel_names.c.channel_id, channel_names.c.name))
            return {channel_id: name for channel_id, name in rows}
