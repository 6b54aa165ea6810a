"""Transform: a batch of posts into bounded STIX 2.1 bundles, written to the run's spool."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import TASK_DEFAULTS


@task(name="transform", task_run_name="transform-{run.channel_id}", **TASK_DEFAULTS)
def transform_batch(
    run: ChannelRun, batch: Batch, attachments: dict[str, list[Attachment]]
) -> list[BundleFile]:
    """Bundles bounded in objects and bytes, each with the cursor that holds once it and
    those before it are delivered (ChannelPipeline.transform)."""
    return pipeline().transform(run, batch, attachments)
