"""Edits and deletions of delivered posts, and posts found behind the cursor: `since` when it
can be trusted, else a full check."""

from __future__ import annotations

from prefect import get_run_logger, task

from mattermost_connector.changes import (
    CHANGES_MARGIN_MS,
    deleted_version,
    examine_since,
    is_system,
    scan_since,
    stale,
    unaccounted,
)
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.mattermost.posts import Cursor, read_batch
from tasks import resources
from tasks.extract import BATCH_POSTS, completed
from tasks.load import publish_state
from tasks.policy import TASK_DEFAULTS, retrying

RETRIES = retrying(2, 10, 30)


def _deliverable(
    run: ChannelRun, posts: list[dict], added: list[dict] | None = None, **kwargs
) -> Batch:
    """Stale `posts` and never delivered `added` ones, oldest first. With
    MATTERMOST_DELETED_POSTS=ignore, deletions are remembered but not re-delivered."""
    added = added or []
    deleted = [post for post in posts if post.get("delete_at")]
    if deleted and resources.settings().mattermost.deleted_posts == "ignore":
        resources.store().record_posts(run.channel_id, deleted)
        posts = [post for post in posts if not post.get("delete_at")]
    ordered = sorted(posts + added, key=lambda post: (post["create_at"], post["id"]))
    batch = completed(run, ordered, **kwargs)
    batch.deleted = len(deleted)
    batch.updated = sum(1 for post in posts if not post.get("delete_at"))
    batch.added = len(added)
    return batch


@task(name="scan-changes", task_run_name="changes-{run.channel_id}", **RETRIES)
def scan_changes(run: ChannelRun) -> Batch | None:
    """Posts edited or deleted since the watermark, and posts `since` shows behind the cursor;
    None when a full check is needed: `since` may have been cut, or the channel's message
    count grew by more than the posts seen."""
    opened = Cursor.from_dict(run.cursor_before)
    since = Cursor.from_dict(run.cursor).changes_ms
    assert since is not None
    rows = scan_since(resources.client(), run.channel_id, since)
    if rows is None:
        get_run_logger().warning(
            "channel %s: 1000 or more changes since the last run; checking every post",
            run.channel_id,
        )
        return None
    found = examine_since(
        rows,
        resources.store().delivered(row["id"] for row in rows),
        since,
        opened_at=opened,
        start_ms=run.start_ms,
        include_system=resources.settings().mattermost.include_system_messages,
        checked=opened.messages,
        last_post_at=run.last_post_at,
    )
    missing = unaccounted(opened.messages, run.msg_count, run.listed + found.unlisted)
    if missing > 0:
        get_run_logger().warning(
            "channel %s: %d more posts counted by the server than listed since the last run "
            "(created with an earlier time, or imported); checking every post",
            run.channel_id,
            missing,
        )
        return None
    if found.behind:
        get_run_logger().info(
            "channel %s: %d posts found behind the cursor (created with an earlier time)",
            run.channel_id,
            len(found.behind),
        )
    return _deliverable(run, found.stale, found.behind)


@task(name="reconcile", task_run_name="reconcile-{run.channel_id}", **RETRIES)
def reconcile_batch(run: ChannelRun, position: dict) -> Batch:
    """One stretch of the complete listing, compared with what was delivered.

    Returns the stale posts and those never delivered (created behind the cursor, or before
    schema v2), and in `cursor` where the listing stands: it stops at the delivered cursor,
    since what is newer is the new-posts pass's.
    """
    walked, cursor, exhausted = read_batch(
        resources.client(), run.channel_id, Cursor.from_dict(position), BATCH_POSTS
    )
    boundary = Cursor.from_dict(run.cursor).boundary_ms
    listed = [post for post in walked if post["create_at"] <= boundary]
    exhausted = exhausted or len(listed) < len(walked)
    store = resources.store()
    delivered = store.delivered(post["id"] for post in listed)
    store.mark_seen(run.channel_id, delivered.keys(), run.run_id)
    include_system = resources.settings().mattermost.include_system_messages
    never = [
        post
        for post in listed
        if post["id"] not in delivered and (include_system or not is_system(post))
    ]
    batch = _deliverable(
        run, stale(listed, delivered), never, cursor=cursor.to_dict(), exhausted=exhausted
    )
    batch.seen = [post["id"] for post in never]
    return batch


@task(name="mark-listed", task_run_name="mark-listed-{run.channel_id}", **TASK_DEFAULTS)
def mark_listed(run: ChannelRun, post_ids: list[str]) -> None:
    """Posts the complete listing returned and this run delivered for the first time: seen
    by it, so its sweep does not take them for deleted ones."""
    resources.store().mark_seen(run.channel_id, post_ids, run.run_id)


@task(name="sweep", task_run_name="sweep-{run.channel_id}", **RETRIES)
def sweep_batch(run: ChannelRun) -> Batch:
    """Delivered posts the complete listing no longer returned: deleted (or purged)."""
    gone = resources.store().unseen(run.channel_id, run.run_id, created_from=run.start_ms)
    posts = [deleted_version(row, run.server_start_ms) for row in gone]
    return _deliverable(run, posts, exhausted=not posts)


@task(name="commit-changes", task_run_name="commit-{run.channel_id}", **TASK_DEFAULTS)
def commit_changes(run: ChannelRun) -> dict:
    """Every change up to this run's start is delivered: move the watermark there, and keep
    the channel's message count and last_post_at read then, to compare with the next run's."""
    cursor = Cursor.from_dict(run.cursor)
    cursor = Cursor(
        cursor.boundary_ms,
        cursor.boundary_ids,
        cursor.anchor_id,
        changes_ms=max(run.server_start_ms - CHANGES_MARGIN_MS, cursor.changes_ms or 0),
        messages=(run.msg_count, run.last_post_at, run.ahead),
    ).to_dict()
    resources.store().save_cursor(run.channel_id, cursor)
    publish_state(run.channel_id, cursor)
    return cursor
