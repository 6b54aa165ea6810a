"""Where the cursor stands after each step: the cursor a bundle carries, and the cut at a
backfill window's end. Pure functions of posts and cursors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mattermost_connector.cursor import Cursor

Post = dict[str, Any]


def bundle_cursors(
    start: Cursor, bundles: Iterable[Sequence[Post]], batch_cursor: Cursor | None
) -> list[Cursor | None]:
    """The cursor each bundle (given by its posts, in delivery order) carries: the one that
    holds once it and every bundle before it are delivered. The last bundle carries the
    batch's cursor, which is also past what was read but delivers nothing (system messages
    left out, at the batch's end). A batch that does not move the cursor (`batch_cursor`
    None: edits, deletions, files fetched again) gives bundles that carry none."""
    if batch_cursor is None:
        return [None for _ in bundles]
    cursors: list[Cursor | None] = []
    cursor = start
    for posts in bundles:
        for post in posts:
            cursor = cursor.advance(post)
        cursors.append(cursor)
    if cursors:
        cursors[-1] = batch_cursor
    return cursors


def cut_at_window_end(
    posts: list[Post], start: Cursor, cursor: Cursor, exhausted: bool, end_ms: int | None
) -> tuple[list[Post], Cursor, bool]:
    """A backfill takes posts created before its window's `end_ms` only: once a batch reaches
    it, the posts at or after it are dropped, the cursor stops after the last one kept, and
    the pass is over. `cursor`, `exhausted`: where the read left off."""
    if end_ms is None or not any(post["create_at"] >= end_ms for post in posts):
        return posts, cursor, exhausted
    kept = [post for post in posts if post["create_at"] < end_ms]
    cut = start
    for post in kept:
        cut = cut.advance(post)
    return kept, cut, True
