"""The changes pass: posts already delivered that changed since (edited, deleted, a file
missing) and posts found behind the cursor, as batches to deliver again; `since` when it can
be trusted, else a full check (reconcile, then sweep); then the watermark moved."""

from __future__ import annotations

import logging
from typing import Any

from mattermost_connector.changes import (
    CHANGES_MARGIN_MS,
    ChangesVerdict,
    FullCheck,
    deleted_version,
    delivered_version,
    is_system,
    judge_since,
    scan_since,
    stale,
)
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.mattermost import posts as walker
from mattermost_connector.pipeline.loading import publish_state
from mattermost_connector.pipeline.new_posts import BATCH_POSTS, complete
from mattermost_connector.pipeline.services import Services
from mattermost_connector.wording import amount

log = logging.getLogger("mattermost_connector.changes")


def missing_files(services: Services, run: ChannelRun) -> Batch:
    """Delivered posts whose files failed (or exceeded a cap since raised), fetched afresh
    so that delivering them again embeds the files."""
    store, client = services.store, services.client
    cap = services.settings.mattermost.max_attachment_size
    posts, gone = [], []
    for post_id in store.posts_with_missing_files(run.channel_id, cap, before_run=run.run_id):
        try:
            posts.append(client.post(post_id))
        except AuthenticationError:
            raise
        except MattermostError as error:
            if error.status not in (403, 404):
                raise
            gone.append((post_id, str(error)))
    if gone:  # the post itself is gone: its files will not come back
        reasons = dict(gone)
        rows = [a for a in store.attachments(run.channel_id) if a["post_id"] in reasons]
        store.record_attachments(
            run.channel_id,
            [{**a, "status": Fate.GONE, "error": reasons[a["post_id"]]} for a in rows],
            run.run_id,
        )
    batch = complete(services, posts)
    batch.counts = Counts(updated=len(posts))
    return batch


def deliverable(
    services: Services,
    run: ChannelRun,
    posts: list[dict],
    added: list[dict] | None = None,
    **kwargs: Any,
) -> Batch:
    """Stale `posts` and never delivered `added` ones, oldest first. With
    MATTERMOST_DELETED_POSTS=ignore, deletions are remembered but not re-delivered."""
    added = added or []
    deleted = [post for post in posts if post.get("delete_at")]
    if deleted and services.settings.mattermost.deleted_posts == "ignore":
        services.store.record_posts(run.channel_id, deleted)
        posts = [post for post in posts if not post.get("delete_at")]
    ordered = sorted(posts + added, key=lambda post: (post["create_at"], post["id"]))
    batch = complete(services, ordered, **kwargs)
    batch.counts = Counts(
        posts=len(added),
        updated=sum(1 for post in posts if not post.get("delete_at")),
        deleted=len(deleted),
    )
    return batch


def scan_changes(services: Services, run: ChannelRun) -> tuple[Batch | None, str | None]:
    """Posts edited or deleted since the watermark, and posts `since` shows behind the
    cursor, as a batch; no batch when a full check is needed (`since` may have been cut, or
    the channel's message count grew by more than the posts seen), with why: the run's
    note."""
    opened = run.cursor_before or run.cursor
    since = run.cursor.changes_ms
    assert since is not None
    verdict = judge_since(
        changed_rows(services, run, since),
        services.store.delivered,
        since,
        opened_at=opened,
        start_ms=run.start_ms,
        include_system=services.settings.mattermost.include_system_messages,
        msg_count=run.total_posts,
        listed=run.listed,
        last_post_at=run.last_post_at,
    )
    _log_verdict(run.channel_id, verdict)
    if verdict.full_check:
        return None, verdict.note
    return deliverable(services, run, verdict.stale, verdict.behind), verdict.note


def _log_verdict(channel_id: str, verdict: ChangesVerdict) -> None:
    """Why every post is checked, or how many were found behind the cursor."""
    if verdict.full_check == FullCheck.CAPPED:
        log.warning(
            "channel %s: 1000 or more changes since the last run; checking every post",
            channel_id,
        )
    elif verdict.full_check == FullCheck.UNCOUNTED:
        log.warning(
            "channel %s: %d more posts counted by the server than listed since the last run "
            "(created with an earlier time, or imported); checking every post",
            channel_id,
            verdict.missing,
        )
    elif verdict.behind:
        log.info(
            "channel %s: %d posts found behind the cursor (created with an earlier time)",
            channel_id,
            len(verdict.behind),
        )


def changed_rows(services: Services, run: ChannelRun, since: int) -> list[dict] | None:
    """`since`'s rows (None: maybe cut at 1000). In live mode, when the listener saw the
    channel without a gap since its last scan, the posts it saw instead, uncapped, with
    the replies a deleted root takes along (the server sends no event for them)."""
    witness = services.witness
    if witness is not None:
        seen = witness.begin_scan(run.channel_id)
        if seen.complete:
            rows = list(seen.posts.values())
            deleted = {r["id"]: r["delete_at"] for r in rows if r.get("delete_at")}
            roots = [i for i, r in seen.posts.items() if i in deleted and not r["root_id"]]
            for reply in services.store.delivered_replies(run.channel_id, roots):
                at = deleted[reply["root_id"]]
                rows.append({**delivered_version(reply), "delete_at": at, "update_at": at})
            log.info(
                "channel %s: %s seen live since the last scan (no `since` scan)",
                run.channel_id,
                amount(len(rows), "change"),
            )
            return rows
    return scan_since(services.client, run.channel_id, since)


def reconcile_batch(services: Services, run: ChannelRun, position: Cursor) -> Batch:
    """One stretch of the complete listing, compared with what was delivered: the stale
    posts and those never delivered (created behind the cursor, or before schema v2), and
    in `cursor` where the listing stands. It stops at the delivered cursor, since what
    is newer is the new-posts pass's."""
    walked, cursor, exhausted = walker.read_batch(
        services.client, run.channel_id, position, BATCH_POSTS
    )
    boundary = run.cursor.boundary_ms
    listed = [post for post in walked if post["create_at"] <= boundary]
    exhausted = exhausted or len(listed) < len(walked)
    delivered = services.store.delivered(post["id"] for post in listed)
    services.store.mark_seen(run.channel_id, delivered.keys(), run.run_id)
    include_system = services.settings.mattermost.include_system_messages
    never = [
        post
        for post in listed
        if post["id"] not in delivered and (include_system or not is_system(post))
    ]
    batch = deliverable(
        services, run, stale(listed, delivered), never, cursor=cursor, exhausted=exhausted
    )
    batch.seen = [post["id"] for post in never]
    return batch


def mark_listed(services: Services, run: ChannelRun, post_ids: list[str]) -> None:
    """Posts the complete listing returned and this run delivered for the first time:
    seen by it, so its sweep does not take them for deleted ones."""
    services.store.mark_seen(run.channel_id, post_ids, run.run_id)


def sweep_batch(services: Services, run: ChannelRun) -> Batch:
    """Delivered posts the complete listing no longer returned: deleted (or purged)."""
    gone = services.store.unseen(run.channel_id, run.run_id, created_from=run.start_ms)
    posts = [deleted_version(row, run.server_start_ms) for row in gone]
    return deliverable(services, run, posts, exhausted=not posts)


def commit_changes(services: Services, run: ChannelRun) -> Cursor:
    """Every change up to this run's start is delivered: move the watermark there, and
    keep the channel's message count and last_post_at read then, to compare with the
    next run's."""
    cursor = run.cursor
    cursor = Cursor(
        cursor.boundary_ms,
        cursor.boundary_ids,
        cursor.anchor_id,
        changes_ms=max(run.server_start_ms - CHANGES_MARGIN_MS, cursor.changes_ms or 0),
        messages=(run.total_posts, run.last_post_at, run.ahead),
    )
    services.store.save_cursor(run.channel_id, cursor)
    publish_state(services, run.channel_id, cursor)
    if services.witness is not None:
        services.witness.end_scan(run.channel_id)
    return cursor
