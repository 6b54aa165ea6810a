"""The load: a batch's bundles delivered to every destination, then, and only then, recorded
as delivered, strictly in order, the cursor following (and mirrored in OpenCTI)."""

from __future__ import annotations

import logging

from mattermost_connector.channel_run import BundleFile, ChannelRun
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.delivery import Destination
from mattermost_connector.errors import DeliveryError
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.kinds import RunKind
from mattermost_connector.memory import release_free_memory
from mattermost_connector.pipeline.discards import DISCARDS
from mattermost_connector.pipeline.ordered import deliver_in_order
from mattermost_connector.pipeline.services import Services
from mattermost_connector.pipeline.spool import recorded_marker, sent_marker
from mattermost_connector.retries import retry_call
from mattermost_connector.stix import Upload

log = logging.getLogger("mattermost_connector.load")


def load(services: Services, run: ChannelRun, bundles: list[BundleFile]) -> None:
    """Deliver a batch's bundles, up to CONNECTOR_DELIVERY_CONCURRENCY at once, recorded
    strictly in order (`deliver_in_order`). A retry skips what was recorded (its spool
    file is gone). The cursor is mirrored once per batch (two GraphQL calls each time)."""
    recorded: list[BundleFile] = []

    def record_in_order(bundle: BundleFile) -> None:
        record(services, run, bundle)
        recorded.append(bundle)

    deliver_in_order(
        [b for b in bundles if not DISCARDS.gone(b.path) and not recorded_marker(b.path).exists()],
        lambda bundle: send(services, run, bundle),
        record_in_order,
        services.settings.connector.delivery_concurrency,
    )
    cursor = next((b.cursor for b in reversed(recorded) if b.cursor is not None), None)
    if cursor is not None and run.kind == RunKind.SYNC:
        publish_state(services, run.channel_id, cursor)
    release_free_memory()  # the batch is done with: its pages back, not a growing heap


def send(services: Services, run: ChannelRun, bundle: BundleFile) -> None:
    """Files too large for a message first (the bundle links them), then the bundle, to every
    destination not already holding it."""
    for destination in services.destinations:
        for upload in bundle.uploads:
            upload_file(services, destination, run, bundle, upload)
    text = bundle.path.read_text(encoding="utf-8")
    for destination in services.destinations:
        sent = sent_marker(bundle.path, destination.name)
        if sent.exists():  # delivered there by an attempt whose batch failed later
            continue
        destination.send(run.work, text, bundle.objects, bundle.sequence)
        sent.touch()


def upload_file(
    services: Services,
    destination: Destination,
    run: ChannelRun,
    bundle: BundleFile,
    upload: Upload,
) -> None:
    """One file to upload, under the retry budget. An upload that still fails is that
    file's fate, `failed` with its error, not the channel's: the post is delivered without
    it, and the next run fetches and uploads it again (changed_posts.missing_files)."""
    try:
        retry_call(
            lambda: destination.upload(run.work, upload),
            services.settings.connector,
            f"file {upload.file_id}",
            retry_on=lambda error: isinstance(error, DeliveryError),
        )
    except DeliveryError as error:
        log.warning("%s: left for the next run", error)
        for row in bundle.attachments:
            if row["file_id"] == upload.file_id:
                row.update(status=Fate.FAILED, error=str(error))


def record(services: Services, run: ChannelRun, bundle: BundleFile) -> None:
    """Record posts, attachments and (if the bundle moves it) the cursor, once
    delivered."""
    services.store.record_delivery(
        run.cursor_key,
        run.channel_id,
        bundle.cursor,
        bundle.posts,
        len(bundle.posts),
        files=bundle.attachments,
        run_id=run.run_id,
        tally=Counts(posts=len(bundle.posts), files=bundle.files, objects=bundle.objects),
    )
    if bundle.cursor is None:  # a post's first parts: kept until its last part moves it
        recorded_marker(bundle.path).touch()
        return
    DISCARDS.discard(  # the bundle first: gone for a retried load from now on
        bundle.path,
        *(upload.path for upload in bundle.uploads),
        *(sent_marker(bundle.path, d.name) for d in services.destinations),
    )


def publish_state(services: Services, channel_id: str, cursor: Cursor) -> None:
    """Mirror the cursor where operators look (the connector state in OpenCTI's UI)."""
    state = {"cursor": cursor.to_dict(), "updated_at": services.clock().isoformat()}
    for destination in services.destinations:
        destination.save_state(channel_id, state)


def advance(services: Services, run: ChannelRun, cursor: Cursor) -> None:
    """Move past posts that deliver nothing (system messages, when skipped)."""
    services.store.save_cursor(run.cursor_key, cursor)
    if run.kind == RunKind.SYNC:
        publish_state(services, run.channel_id, cursor)
