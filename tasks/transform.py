"""Transform: a batch of posts into bounded STIX 2.1 bundles, written to the run's spool."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import retrying


@task(name="transform", task_run_name="transform-{run.channel_id}", **retrying(2, 10))
def transform_batch(
    run: ChannelRun,
    batch: Batch,
    attachments: dict[str, list[Attachment]],
    recent: list[dict] | None = None,
) -> list[BundleFile]:
    """The batch's files as its bundles must carry them, given what earlier deliveries did
    (ChannelPipeline.files_as_delivered), then bundles bounded in objects and bytes, each
    with the cursor that holds once it and those before it are delivered
    (ChannelPipeline.transform). `recent`: the attachments rows of the batch still loading."""
    services = pipeline()
    attachments = services.files_as_delivered(run, batch, attachments, recent)
    return services.transform(run, batch, attachments)
