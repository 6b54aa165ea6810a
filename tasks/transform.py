"""Transform: a batch of posts into one STIX 2.1 bundle."""

from __future__ import annotations

from prefect import task

from mattermost_connector.channel_run import Batch, Bundle, ChannelRun
from mattermost_connector.stix import Attachment, build_bundle
from tasks import resources
from tasks.policy import TASK_DEFAULTS


@task(name="transform", task_run_name="transform-{run.channel_id}", **TASK_DEFAULTS)
def transform_batch(
    run: ChannelRun, batch: Batch, attachments: dict[str, list[Attachment]]
) -> Bundle:
    """Build the bundle, then drop the spooled files: the bundle now carries their bytes."""
    try:
        bundle, objects = build_bundle(
            run.context,
            batch.posts,
            batch.users,
            attachments,
            resources.settings().mattermost.tlp,
            missing_roots=batch.missing_roots,
        )
    finally:
        for files in attachments.values():
            for attachment in files:
                if attachment.path is not None:
                    attachment.path.unlink(missing_ok=True)
    embedded = sum(1 for files in attachments.values() for a in files if a.path is not None)
    return Bundle(json=bundle, objects=objects, files=embedded)
