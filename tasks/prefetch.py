"""Read-ahead: the next batch and its files, fetched while the flow delivers the current one."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import retrying


@task(name="read-ahead", task_run_name="read-ahead-{run.channel_id}", **retrying(2, 10, 30))
def read_ahead(
    run: ChannelRun, pending: list[dict] | None = None
) -> tuple[Batch, dict[str, list[Attachment]]]:
    """The next batch (ChannelPipeline.read_batch) and its files, in one task run, off the
    flow's thread: reading waits on the server most of the time, so done meanwhile it hides
    behind the delivery of the batch before. Both are reads: a retry does both again. One
    task run rather than three: the UI learns nothing from the split."""
    services = pipeline()
    batch = services.read_batch(run, pending)
    return batch, services.fetch_files(run, batch.posts)
