"""Extraction: the next batch of a channel's new posts, their authors and thread roots."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.pipeline.channel import BATCH_POSTS
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import retrying

__all__ = ["BATCH_POSTS", "extract_batch"]


@task(
    name="extract",
    task_run_name="extract-{run.channel_id}",
    **retrying(2, 10, 30),
)
def extract_batch(
    run: ChannelRun, pending: list[dict] | None = None, max_posts: int = BATCH_POSTS
) -> Batch:
    """About `max_posts` posts after `run.cursor`, oldest first (ChannelPipeline.read_batch).
    `pending`: posts being delivered meanwhile (the batch before)."""
    return pipeline().read_batch(run, pending, max_posts)
