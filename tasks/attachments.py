"""Attachments: stream a batch's files to the run's spool directory."""

from __future__ import annotations

from prefect import task

from mattermost_connector.attachments import download_attachments
from mattermost_connector.channel_run import ChannelRun
from mattermost_connector.stix import Attachment
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retryable


@task(
    name="attachments",
    task_run_name="attachments-{run.channel_id}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retryable,
    **TASK_DEFAULTS,
)
def fetch_attachments(run: ChannelRun, posts: list[dict]) -> dict[str, list[Attachment]]:
    return download_attachments(resources.client(), posts, run.spool)
