"""Extraction: the next batch of a channel's new posts, their authors and thread roots."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from mattermost_connector.batches import complete_batch
from mattermost_connector.changes import listed_since
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.mattermost.posts import Cursor, read_batch
from tasks import resources
from tasks.policy import retrying

BATCH_POSTS = 5000  # 25 pages: few task runs, bounded memory (bundles split it further)


def completed(run: ChannelRun, posts: list[dict], **kwargs) -> Batch:
    """Shared by every pass: filter system messages, fetch old thread roots, resolve authors."""
    return complete_batch(
        posts,
        client=resources.client(),
        store=resources.store(),
        users=resources.users(flow_run.get_id() or "local"),
        include_system=resources.settings().mattermost.include_system_messages,
        **kwargs,
    )


@task(
    name="extract",
    task_run_name="extract-{run.channel_id}",
    **retrying(2, 10, 30),
)
def extract_batch(
    run: ChannelRun, pending: list[dict] | None = None, max_posts: int = BATCH_POSTS
) -> Batch:
    """About `max_posts` posts after `run.cursor`, oldest first. `pending`: posts being
    delivered meanwhile (the batch before), whose replies need not fetch them as roots."""
    start = Cursor.from_dict(run.cursor)
    posts, cursor, exhausted = read_batch(
        resources.client(), run.channel_id, start, max_posts, last_post_at=run.last_post_at
    )
    if run.end_ms is not None and any(post["create_at"] >= run.end_ms for post in posts):
        posts = [post for post in posts if post["create_at"] < run.end_ms]
        cursor, exhausted = start, True  # the window's end: nothing after it is taken
        for post in posts:
            cursor = cursor.advance(post)
    batch = completed(
        run, posts, cursor=cursor.to_dict(), exhausted=exhausted, pending=pending or ()
    )
    checked = Cursor.from_dict(run.cursor_before).messages if run.cursor_before else None
    batch.listed, batch.ahead = listed_since(posts, checked, run.last_post_at)
    return batch
