"""Cursors (how far each channel, or backfill window, is delivered) and what was delivered of
each post, which lets a later run tell an edit or a deletion from a reaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mattermost_connector import integration_posts
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.state.files import upsert_attachments
from mattermost_connector.state.schema import (
    EngineBound,
    channel_cursors,
    channel_leases,
    delivered_posts,
    runs,
    upsert_values,
    utc_now,
)

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
    "integration",
)
POST_UPDATED = ("update_at", "edit_at", "delete_at", "message_sha256", "message", "integration")


def message_digest(message: str) -> str:
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


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
        integration_posts.digest(post),  # the message's own digest for most posts
        message,
        integration_posts.encode(integration_posts.kept(post)),
    )


def write_cursor(connection: Connection, key: str, cursor: Cursor, posts_delivered: int) -> None:
    """Set the cursor under `key` and add `posts_delivered` to its count. The one place a
    cursor becomes JSON (`decode` is the way back)."""
    table = channel_cursors
    encoded = json.dumps(cursor.to_dict(), sort_keys=True)
    updated = connection.execute(
        table.update()
        .where(table.c.channel_id == key)
        .values(
            cursor=encoded,
            posts_delivered=table.c.posts_delivered + posts_delivered,
            updated_at=utc_now(),
        )
    ).rowcount
    if not updated:
        connection.execute(
            table.insert().values(
                channel_id=key,
                cursor=encoded,
                posts_delivered=posts_delivered,
                updated_at=utc_now(),
            )
        )


def upsert_posts(connection: Connection, channel_id: str, posts: Iterable[dict[str, Any]]) -> None:
    rows = [post_values(channel_id, post) for post in posts]
    upsert_values(connection, delivered_posts, "post_id", POST_COLUMNS, rows, POST_UPDATED)


def decode(raw: str) -> Cursor:
    return Cursor.from_dict(json.loads(raw))


class DeliveryStore(EngineBound):
    """Cursors and delivered posts. `key` is the channel id for a sync, a backfill window's
    own key otherwise."""

    def cursor(self, channel_id: str) -> Cursor | None:
        with self._engine.connect() as connection:
            raw = connection.execute(
                sa.select(channel_cursors.c.cursor).where(
                    channel_cursors.c.channel_id == channel_id
                )
            ).scalar()
        return decode(raw) if raw else None

    def cursors_for(self, keys: Iterable[str]) -> dict[str, Cursor]:
        """The cursors under these keys, in one query per 500 (absent: never synced)."""
        ids, found = list(set(keys)), {}
        table = channel_cursors
        with self._engine.connect() as connection:
            for start in range(0, len(ids), 500):
                query = sa.select(table.c.channel_id, table.c.cursor).where(
                    table.c.channel_id.in_(ids[start : start + 500])
                )
                found.update({key: decode(raw) for key, raw in connection.execute(query)})
        return found

    def advance_watermarks(self, moves: Iterable[tuple[str, Cursor, Cursor]]) -> set[str]:
        """Move unchanged channels' cursors from `old` to `new` in one transaction, each only
        if its cursor is still `old` (no run moved it since it was read) and no live lease is
        held on it (a run is working on it): that run's own commit decides. Returns the keys
        moved."""
        table, now, moved = channel_cursors, utc_now(), set()
        busy = sa.exists().where(
            channel_leases.c.channel_id == table.c.channel_id,
            channel_leases.c.expires_at >= now,
        )
        with self._engine.begin() as connection:
            for key, old, new in moves:
                count = connection.execute(
                    table.update()
                    .where(table.c.channel_id == key)
                    .where(table.c.cursor == json.dumps(old.to_dict(), sort_keys=True))
                    .where(~busy)
                    .values(cursor=json.dumps(new.to_dict(), sort_keys=True), updated_at=now)
                ).rowcount
                if count:
                    moved.add(key)
        return moved

    def cursors(self) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                sa.select(channel_cursors).order_by(channel_cursors.c.channel_id)
            ).mappings()
            return [dict(row, cursor=decode(row["cursor"])) for row in rows]

    def posts_delivered(self, key: str) -> int:
        """How many posts runs of this cursor (a channel, or a backfill window) delivered."""
        with self._engine.connect() as connection:
            count = connection.execute(
                sa.select(channel_cursors.c.posts_delivered).where(
                    channel_cursors.c.channel_id == key
                )
            ).scalar()
        return int(count or 0)

    def save_cursor(self, key: str, cursor: Cursor, posts_delivered: int = 0) -> None:
        """Move the cursor alone (past posts that deliver nothing): everything up to `cursor`
        is delivered. A delivered bundle goes through `record_delivery` instead."""
        with self._engine.begin() as connection:
            write_cursor(connection, key, cursor, posts_delivered)

    def record_delivery(
        self,
        key: str,
        channel_id: str,
        cursor: Cursor | None,
        delivered: Iterable[dict[str, Any]] = (),
        posts_delivered: int = 0,
        files: Iterable[dict[str, Any]] = (),
        run_id: int | None = None,
        tally: Counts | None = None,
    ) -> None:
        """One delivered bundle in one transaction (one commit per bundle, not three): its
        posts, its files' fates, when it moves it the cursor under `key`, and `tally` (its
        posts, files, objects) added to run `run_id`'s history row, so that a run that fails
        or is killed later still shows what it delivered. Call only after delivery."""
        with self._engine.begin() as connection:
            upsert_posts(connection, channel_id, delivered)
            upsert_attachments(connection, channel_id, files, run_id)
            if cursor is not None:
                write_cursor(connection, key, cursor, posts_delivered)
            if tally is not None and run_id is not None:
                connection.execute(
                    runs.update()
                    .where(runs.c.id == run_id)
                    .values(
                        posts=runs.c.posts + tally.posts,
                        files=runs.c.files + tally.files,
                        objects=runs.c.objects + tally.objects,
                    )
                )

    def record_posts(self, channel_id: str, delivered: Iterable[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            upsert_posts(connection, channel_id, delivered)

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

    def delivered_replies(self, channel_id: str, root_ids: Iterable[str]) -> list[dict[str, Any]]:
        """What was delivered of the live-looking replies of these roots (deleting a root
        deletes its replies, and the server sends no event for them)."""
        ids = list(set(root_ids))
        found: list[dict[str, Any]] = []
        with self._engine.connect() as connection:
            for start in range(0, len(ids), 500):
                query = (
                    sa.select(delivered_posts)
                    .where(delivered_posts.c.channel_id == channel_id)
                    .where(delivered_posts.c.root_id.in_(ids[start : start + 500]))
                    .where(delivered_posts.c.delete_at == 0)
                )
                found.extend(dict(row) for row in connection.execute(query).mappings())
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
