"""Read-ahead: the next batch and its files, fetched while the flow delivers the current one."""

from __future__ import annotations

from prefect import task
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.attachments import fetch_attachments
from mattermost_prefect.tasks.extract import extract_batch
from mattermost_prefect.tasks.policy import TASK_DEFAULTS


@task(name="read-ahead", task_run_name="read-ahead-{run.channel_id}", **TASK_DEFAULTS)
def read_ahead(
    run: ChannelRun, pending: list[dict] | None = None
) -> tuple[Batch, dict[str, list[Attachment]]]:
    """Both steps keep their own task runs and retries; this one only groups them so that
    they run in order, off the flow's thread. Reading waits on the server most of the time:
    done meanwhile, it hides behind the delivery of the batch before."""
    batch = extract_batch(run, quote(pending))  # unquoted, Prefect walks every post twice
    return batch, fetch_attachments(run, quote(batch.posts))
