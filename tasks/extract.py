"""Extraction: the next batch of a channel's new posts, their authors and thread roots."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from mattermost_connector.batches import complete_batch
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.mattermost.posts import Cursor, read_batch
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retryable

BATCH_POSTS = 1000  # five pages: few task runs, bounded memory (bundles split it further)


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
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retryable,
    **TASK_DEFAULTS,
)
def extract_batch(run: ChannelRun, max_posts: int = BATCH_POSTS) -> Batch:
    """About `max_posts` posts after the delivered cursor, oldest first."""
    posts, cursor, exhausted = read_batch(
        resources.client(),
        run.channel_id,
        Cursor.from_dict(run.cursor),
        max_posts,
        last_post_at=run.last_post_at,
    )
    return completed(run, posts, cursor=cursor.to_dict(), exhausted=exhausted)
