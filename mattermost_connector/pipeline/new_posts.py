"""The new-posts pass's read and transform: a batch of posts after the cursor, its files, and
the bounded bundles it becomes in the spool (loading.py delivers them, ordered.py overlaps
the three)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mattermost_connector.attachments import (
    download_attachments,
    first_embedded_files,
    redelivery_files,
)
from mattermost_connector.batches import complete_batch
from mattermost_connector.changes import listed_since
from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.errors import local_fault
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.mattermost import posts as walker
from mattermost_connector.observables import observer_for
from mattermost_connector.pipeline.discards import DISCARDS
from mattermost_connector.pipeline.ordered import Files
from mattermost_connector.pipeline.positions import bundle_cursors, cut_at_window_end
from mattermost_connector.pipeline.services import Services
from mattermost_connector.stix import Attachment, BundlePart, iter_bundles

BATCH_POSTS = 5000  # 25 pages: few task runs, bounded memory (bundles split it further)
DELIVERED = (Fate.EMBEDDED, Fate.UPLOADED)


def complete(services: Services, posts: list[dict], **kwargs: Any) -> Batch:
    """Shared by every pass: filter system messages, fetch old thread roots, resolve
    authors."""
    return complete_batch(
        posts,
        client=services.client,
        store=services.store,
        users=services.users,
        include_system=services.settings.mattermost.include_system_messages,
        **kwargs,
    )


def read_batch(
    services: Services,
    run: ChannelRun,
    pending: list[dict] | None = None,
    max_posts: int = BATCH_POSTS,
) -> Batch:
    """About `max_posts` posts after `run.cursor`, oldest first, cut at a backfill's
    window end. `pending`: posts being delivered meanwhile (the batch before), whose
    replies need not fetch them as roots."""
    posts, cursor, exhausted = walker.read_batch(
        services.client, run.channel_id, run.cursor, max_posts, last_post_at=run.last_post_at
    )
    posts, cursor, exhausted = cut_at_window_end(posts, run.cursor, cursor, exhausted, run.end_ms)
    batch = complete(services, posts, cursor=cursor, exhausted=exhausted, pending=pending or ())
    checked = run.cursor_before.messages if run.cursor_before else None
    batch.listed, batch.ahead = listed_since(posts, checked, run.last_post_at)
    return batch


def fetch_files(services: Services, run: ChannelRun, posts: list[dict]) -> Files:
    """The posts' files, streamed to the run's spool."""
    cap = services.settings.mattermost.max_attachment_size
    return download_attachments(services.client, posts, run.spool, cap)


def read_ahead(
    services: Services, run: ChannelRun, pending: list[dict] | None = None
) -> tuple[Batch, Files]:
    """The next batch and its files in one step, run beside the delivery of the batch
    before: reading waits on the server most of the time. Both are reads: a retry does both
    again."""
    batch = read_batch(services, run, pending)
    return batch, fetch_files(services, run, batch.posts)


def files_as_delivered(
    services: Services,
    run: ChannelRun,
    batch: Batch,
    attachments: Files,
    recent: list[dict] | None = None,
) -> Files:
    """The batch's files as its bundles must carry them, given what earlier deliveries
    did (the state store, and `recent`: the rows of bundles still being loaded): files of
    posts delivered before (redelivery_files), and the files each thread root's first
    delivery embedded, downloaded again for the copies of it that replies' bundles
    hold."""
    posts = {post["id"] for post in batch.posts}
    rows = services.store.attachments_of(posts | batch.roots.keys())
    loading: dict[str, list[dict]] = {}
    for row in recent or ():
        loading.setdefault(row["post_id"], []).append(row)
    rows.update(loading)
    settled = redelivery_files(attachments, {p: r for p, r in rows.items() if p in posts})
    cap = services.settings.mattermost.max_attachment_size
    roots = {root_id: rows[root_id] for root_id in batch.roots if root_id in rows}
    return {**settled, **first_embedded_files(services.client, roots, run.spool, cap)}


def transform(
    services: Services,
    run: ChannelRun,
    batch: Batch,
    attachments: Files,
    recent: list[dict] | None = None,
) -> list[BundleFile]:
    """The batch's files as its bundles must carry them (`files_as_delivered`), then the
    bundles (`write_bundles`). `recent`: the attachments rows of the batch still loading,
    not yet in the state store."""
    files = files_as_delivered(services, run, batch, attachments, recent)
    return write_bundles(services, run, batch, files)


def write_bundles(
    services: Services, run: ChannelRun, batch: Batch, attachments: Files
) -> list[BundleFile]:
    """Bundles bounded in objects and bytes, written to the spool, each with the cursor
    that holds once it and those before it are delivered (`bundle_cursors`); the spooled
    files are dropped once written into their bundles, except those to upload, which the
    load removes once delivered."""
    connector = services.settings.connector
    written: list[BundleFile] = []
    keep: set[Path] = set()
    try:
        parts = iter_bundles(
            run.context,
            batch.posts,
            batch.users,
            attachments,
            services.settings.mattermost.tlp,
            missing_roots=batch.missing_roots,
            roots=batch.roots,
            max_objects=connector.bundle_max_objects,
            max_bytes=connector.bundle_bytes,
            no_trigger_import=connector.no_trigger_import,
            queue=connector.send_to_queue,
            observe=observer_for(services.settings.mattermost),
        )
        for part in parts:
            sequence = run.counts.bundles + len(written) + 1
            path = _spooled(part, run.spool / f"bundle-{sequence:06d}.json", connector.bundle_bytes)
            keep.update(upload.path for upload in part.uploads)
            written.append(_bundle_file(part, path, sequence))
    finally:  # each download has a path of its own: none is written again once dropped
        DISCARDS.discard(
            *(
                attachment.path
                for files in attachments.values()
                for attachment in files
                if attachment.path is not None and attachment.path not in keep
            )
        )
    carried = bundle_cursors(run.cursor, (b.posts for b in written), batch.cursor)
    for bundle, cursor in zip(written, carried, strict=True):
        bundle.cursor = cursor
    return written


def _spooled(part: BundlePart, path: Path, bundle_bytes: int) -> Path:
    """The bundle written at `path`; a full disk is a local fault naming the spool."""
    try:
        with open(path, "w", encoding="utf-8") as handle:
            part.write(handle)
    except OSError as error:
        path.unlink(missing_ok=True)
        local = local_fault(error, path.parent, bundle_bytes)
        if local is None:
            raise
        raise local from None
    return path


def _bundle_file(part: BundlePart, path: Path, sequence: int) -> BundleFile:
    """What the load needs of a spooled bundle; its cursor is set once all are written."""
    return BundleFile(
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
        cursor=None,
        uploads=part.uploads,
        sequence=sequence,
    )


def _sent(attachment: Attachment) -> bool:
    return attachment.status in DELIVERED and attachment.path is not None
