"""Extraction: the next batch of a channel's posts, and their authors."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.mattermost.posts import Cursor, walk_posts
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retryable

BATCH_POSTS = 200


@task(
    name="extract",
    task_run_name="extract-{run.channel_id}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retryable,
    **TASK_DEFAULTS,
)
def extract_batch(run: ChannelRun, max_posts: int = BATCH_POSTS) -> Batch:
    """Up to about `max_posts` posts after the delivered cursor, oldest first."""
    cursor = Cursor.from_dict(run.cursor)
    posts: list[dict] = []
    exhausted = True
    for page in walk_posts(
        resources.client(), run.channel_id, cursor, last_post_at=run.last_post_at
    ):
        posts.extend(page.posts)
        cursor = page.cursor
        if len(posts) >= max_posts:
            exhausted = False
            break
    users = resources.users(flow_run.get_id() or "local").resolve(p["user_id"] for p in posts)
    return Batch(posts=posts, users=users, cursor=cursor.to_dict(), exhausted=exhausted)
