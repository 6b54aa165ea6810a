"""Walk a channel's posts oldest first, completely, in pages, from a resumable cursor.

The server's `after=<post id>` returns posts strictly newer than the anchor's `create_at`, so a
naive "anchor on the last post" skips posts sharing that millisecond. The cursor therefore keeps
the millisecond it has reached and the ids already taken in it, and anchors on a post of the
millisecond before. `since` is never used to list posts: it silently stops at 1000 rows.
A millisecond holding more than a page is read whole, until two reads agree (`read_millisecond`):
the order of tied posts changes while they are read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from mattermost_connector.cursor import Cursor
from mattermost_connector.mattermost.client import PER_PAGE, MattermostClient

log = logging.getLogger("mattermost_connector.mattermost")

MAX_PASSES = 6  # reads of one millisecond until two agree (read_millisecond)
# Without it the server adds to each page every post of every thread the page touches
# (post_store.go getPostsAround: `Id IN rootIds OR RootId IN rootIds`), which the walk does
# not read: one long thread makes each page touching it that much larger.
NO_THREADS = {"skipFetchThreads": "true"}

Post = dict[str, Any]


@dataclass
class Page:
    """New posts, oldest first, and the cursor that holds once they are all delivered."""

    posts: list[Post]
    cursor: Cursor


def _ascending(posts: list[Post]) -> list[Post]:
    return sorted(posts, key=lambda post: (post["create_at"], post["id"]))


def walk_posts(
    client: MattermostClient,
    channel_id: str,
    cursor: Cursor,
    *,
    last_post_at: int | None = None,
    per_page: int = PER_PAGE,
) -> Iterator[Page]:
    """Yield every post not yet taken, page by page, oldest first, until the channel's end.

    `last_post_at` (from the channel) lets a resumed walk notice that its anchor post was
    purged: the server then answers an empty list instead of an error.
    """
    resumed = cursor.anchor_id is not None
    if not resumed:
        cursor, first = _locate(client, channel_id, cursor, per_page)
        if first:
            yield Page(first, cursor)
        if cursor.anchor_id is None:
            return
    page_index = 0
    while True:
        batch = client.posts(
            channel_id, after=cursor.anchor_id, page=page_index, per_page=per_page, **NO_THREADS
        )
        if resumed and not batch and last_post_at is not None and last_post_at > cursor.boundary_ms:
            log.warning(
                "channel %s: anchor post %s is gone; locating the position by time instead",
                channel_id,
                cursor.anchor_id,
            )
            cursor, first = _locate(client, channel_id, cursor, per_page)
            if first:
                yield Page(first, cursor)
            if cursor.anchor_id is None:
                return
            resumed = False
            continue
        resumed = False
        fresh = [post for post in _ascending(batch) if cursor.wants(post)]
        for post in fresh:
            cursor = cursor.advance(post)
        if fresh:
            yield Page(fresh, cursor)
        if len(batch) < per_page:
            return
        if fresh or page_index:
            # page 0 again from the anchor; past a millisecond read whole, page on from there
            page_index = 0 if fresh else page_index + 1
            continue
        # A full page with nothing new: the cursor's millisecond holds more posts than a page.
        group, end = read_millisecond(client, channel_id, cursor, per_page)
        fresh = [post for post in group if cursor.wants(post)]
        for post in fresh:
            cursor = cursor.advance(post)
        if fresh:
            yield Page(fresh, cursor)
        # the page holding the millisecond's end, and what follows it (posts of the
        # millisecond in it are taken now)
        page_index = max(end // per_page, 1)


def read_millisecond(
    client: MattermostClient, channel_id: str, cursor: Cursor, per_page: int
) -> tuple[list[Post], int]:
    """Every post of the cursor's millisecond, exactly, and the offset (after the anchor)
    where the posts after it begin.

    Inside a millisecond the server's order is not stable: it sorts on CreateAt alone, and an
    update moves a row among its ties (post_store.go, getPostsAround; PostgreSQL), so paging
    by offset through it can skip a post and see another twice. A pass reads the millisecond
    page by page; the passes are repeated until one sees no post twice and the same posts as
    the pass before it. Every post seen in any pass is kept, even if they never agree."""
    seen: dict[str, Post] = {}
    previous: set[str] | None = None
    end = 0
    for _ in range(MAX_PASSES):
        reads, end = _millisecond_pass(client, channel_id, cursor, per_page)
        ids = [post["id"] for post in reads]
        seen.update((post["id"], post) for post in reads)
        if len(set(ids)) == len(ids) and set(ids) == previous:
            break
        previous = set(ids)
    else:
        log.warning(
            "channel %s: the posts of millisecond %d kept moving while read; every post seen "
            "in %d passes is taken",
            channel_id,
            cursor.boundary_ms,
            MAX_PASSES,
        )
    return _ascending(list(seen.values())), end


def _millisecond_pass(
    client: MattermostClient, channel_id: str, cursor: Cursor, per_page: int
) -> tuple[list[Post], int]:
    """One read of the cursor's millisecond, from the anchor, page by page: the posts read
    in it (repeats included) and how many rows up to its end."""
    reads: list[Post] = []
    end, index = 0, 0
    while True:
        batch = client.posts(
            channel_id, after=cursor.anchor_id, page=index, per_page=per_page, **NO_THREADS
        )
        inside = [post for post in batch if post["create_at"] <= cursor.boundary_ms]
        reads += [post for post in inside if post["create_at"] == cursor.boundary_ms]
        end += len(inside)
        if len(inside) < len(batch) or len(batch) < per_page:
            return reads, end
        index += 1


def _locate(
    client: MattermostClient, channel_id: str, cursor: Cursor, per_page: int
) -> tuple[Cursor, list[Post]]:
    """Find an anchor post created before the cursor's millisecond.

    Pages of the default listing (newest first) are probed at 0, 1, 3, 7, ... then bisected:
    about 2*log2(N/per_page) requests, whatever the channel's size. When no post is older
    than the cursor, the walk starts at the channel's oldest millisecond, whose posts are
    returned as a first batch.
    """
    pages: dict[int, list[Post]] = {}

    def page(index: int) -> list[Post]:
        if index not in pages:
            pages[index] = client.posts(channel_id, page=index, per_page=per_page, **NO_THREADS)
        return pages[index]

    def reaches_before(index: int) -> bool:
        found = page(index)
        return not found or found[-1]["create_at"] < cursor.boundary_ms

    low, high = 0, 0
    while not reaches_before(high):
        low, high = high + 1, high * 2 + 1
    while low < high:
        middle = (low + high) // 2
        if reaches_before(middle):
            high = middle
        else:
            low = middle + 1
    found = page(high)
    if found:
        anchor = next(post for post in found if post["create_at"] < cursor.boundary_ms)
        return replace(cursor, anchor_id=anchor["id"]), []
    if high == 0:
        return cursor, []  # an empty channel: nothing to anchor on yet
    # Start at the oldest millisecond; its posts may spill over several pages backwards.
    index = high - 1
    oldest_ms = page(index)[-1]["create_at"]
    cluster = {p["id"]: p for p in page(index) if p["create_at"] == oldest_ms}
    while index > 0 and page(index)[0]["create_at"] == oldest_ms:
        index -= 1
        cluster.update({p["id"]: p for p in page(index) if p["create_at"] == oldest_ms})
    ordered = _ascending(list(cluster.values()))
    first = [post for post in ordered if cursor.wants(post)]
    located = replace(
        cursor,
        boundary_ms=oldest_ms,
        boundary_ids=tuple(p["id"] for p in ordered),
        anchor_id=ordered[0]["id"],
    )
    return located, first


def read_batch(
    client: MattermostClient,
    channel_id: str,
    cursor: Cursor,
    max_posts: int,
    *,
    last_post_at: int | None = None,
    per_page: int = PER_PAGE,
) -> tuple[list[Post], Cursor, bool]:
    """Whole pages of posts after `cursor`, the cursor after them, and whether the channel's
    end was reached. A batch stops once it holds half of `max_posts` and another page could
    overflow it: pages are never split, and a short first page is topped up."""
    posts: list[Post] = []
    walk = walk_posts(client, channel_id, cursor, last_post_at=last_post_at, per_page=per_page)
    for page in walk:
        posts.extend(page.posts)
        cursor = page.cursor
        if len(posts) * 2 >= max_posts and len(posts) + per_page > max_posts:
            return posts, cursor, False
    return posts, cursor, True
