"""Attachments: stream a batch's files to the run's spool; fetch again what failed before."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import retrying


@task(
    name="attachments",
    task_run_name="attachments-{run.channel_id}",
    **retrying(2, 10),
)
def fetch_attachments(run: ChannelRun, posts: list[dict]) -> dict[str, list[Attachment]]:
    return pipeline().fetch_files(run, posts)


@task(
    name="missing-attachments",
    task_run_name="missing-attachments-{run.channel_id}",
    **retrying(2, 10),
)
def posts_missing_files(run: ChannelRun) -> Batch:
    """Delivered posts whose files failed (or exceeded a cap since raised), fetched afresh
    (ChannelPipeline.missing_files)."""
    return pipeline().missing_files(run)
