"""Transform: a batch of posts into bounded STIX 2.1 bundles, written to the run's spool."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.mattermost.posts import Cursor
from mattermost_connector.stix import EMBEDDED, UPLOADED, Attachment, iter_bundles
from tasks import resources
from tasks.policy import TASK_DEFAULTS

DELIVERED = (EMBEDDED, UPLOADED)


def _sent(attachment: Attachment) -> bool:
    return attachment.status in DELIVERED and attachment.path is not None


@task(name="transform", task_run_name="transform-{run.channel_id}", **TASK_DEFAULTS)
def transform_batch(
    run: ChannelRun, batch: Batch, attachments: dict[str, list[Attachment]]
) -> list[BundleFile]:
    """Bundles bounded in objects and bytes, each with the cursor that holds once it and
    those before it are delivered; the spooled files are dropped once written into their
    bundles, except those to upload, which the load removes once delivered."""
    settings = resources.settings()
    connector = settings.connector
    cursor = Cursor.from_dict(run.cursor)
    written: list[BundleFile] = []
    keep: set[Path] = set()
    try:
        parts = iter_bundles(
            run.context,
            batch.posts,
            batch.users,
            attachments,
            settings.mattermost.tlp,
            missing_roots=batch.missing_roots,
            roots=batch.roots,
            max_objects=connector.bundle_max_objects,
            max_bytes=connector.bundle_bytes,
            no_trigger_import=connector.no_trigger_import,
            queue=connector.send_to_queue,
        )
        for part in parts:
            for post in part.posts:
                cursor = cursor.advance(post)
            sequence = run.bundles + len(written) + 1
            path = run.spool / f"bundle-{sequence:06d}.json"
            with open(path, "w", encoding="utf-8") as handle:
                part.write(handle)
            keep.update(upload.path for upload in part.uploads)
            written.append(
                BundleFile(
                    path=path,
                    objects=part.objects,
                    files=sum(1 for _, a in part.attachments if _sent(a)),
                    posts=part.posts,
                    # a file stored by an earlier delivery, not sent again, keeps its row
                    attachments=[
                        a.record(post_id)
                        for post_id, a in part.attachments
                        if _sent(a) or a.status not in DELIVERED
                    ],
                    cursor=cursor.to_dict() if batch.cursor is not None else None,
                    uploads=part.uploads,
                    sequence=sequence,
                )
            )
    finally:
        for files in attachments.values():
            for attachment in files:
                if attachment.path is not None and attachment.path not in keep:
                    attachment.path.unlink(missing_ok=True)
    if written and batch.cursor is not None:
        written[-1].cursor = batch.cursor  # also past what was read but not delivered (skipped)
    return written
