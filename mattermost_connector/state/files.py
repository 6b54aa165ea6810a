"""Every attachment seen, embedded or not: its digest, and why it was left out if it was."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mattermost_connector.kinds import AttachmentFate
from mattermost_connector.state.schema import EngineBound, attachments, upsert, utc_now

ATTACHMENT_UPDATED = (
    "name",
    "mime_type",
    "size",
    "sha256",
    "status",
    "error",
    "run_id",
    "updated_at",
)


def upsert_attachments(
    connection: Connection,
    channel_id: str,
    rows: Iterable[dict[str, Any]],
    run_id: int | None,
) -> None:
    now = utc_now()
    full = [{**row, "channel_id": channel_id, "run_id": run_id, "updated_at": now} for row in rows]
    upsert(connection, attachments, "file_id", full, ATTACHMENT_UPDATED)


class AttachmentStore(EngineBound):
    """What became of each file: embedded (with its sha256), uploaded, too large, failed."""

    def record_attachments(
        self, channel_id: str, rows: Iterable[dict[str, Any]], run_id: int | None = None
    ) -> None:
        """Record what became of each file: embedded (with its sha256), too large, failed."""
        with self._engine.begin() as connection:
            upsert_attachments(connection, channel_id, rows, run_id)

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

    def channels_missing_files(self, channel_ids: Iterable[str], max_size: int) -> set[str]:
        """Of these channels, those with a file `posts_with_missing_files` would fetch again."""
        ids, found, table = list(set(channel_ids)), set(), attachments
        with self._engine.connect() as connection:
            for start in range(0, len(ids), 500):
                query = (
                    sa.select(table.c.channel_id)
                    .where(table.c.channel_id.in_(ids[start : start + 500]))
                    .where(
                        sa.or_(
                            table.c.status == AttachmentFate.FAILED,
                            sa.and_(
                                table.c.status == AttachmentFate.TOO_LARGE,
                                table.c.size <= max_size,
                            ),
                        )
                    )
                    .distinct()
                )
                found.update(connection.execute(query).scalars())
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
                    table.c.status == AttachmentFate.FAILED,
                    sa.and_(table.c.status == AttachmentFate.TOO_LARGE, table.c.size <= max_size),
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
