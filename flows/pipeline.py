"""One channel's pipeline: extract -> attachments -> transform -> load, batch after batch.

First the posts created since the cursor, then the edits and deletions of posts already
delivered. Only orchestration lives here: every read, write and request happens in a task.
"""

from __future__ import annotations

from dataclasses import replace

from prefect.futures import PrefectFuture
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import Batch, BundleFile, ChannelResult, ChannelRun
from mattermost_connector.errors import AuthenticationError, ChannelArchived
from mattermost_connector.errors import one_line as describe
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.mattermost.posts import Cursor
from mattermost_connector.pipeline import ordered
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks.attachments import (
    fetch_attachments,
    files_as_delivered,
    posts_missing_files,
)
from mattermost_prefect.tasks.changes import (
    commit_changes,
    mark_listed,
    reconcile_batch,
    scan_changes,
    sweep_batch,
)
from mattermost_prefect.tasks.channel import close_channel, open_channel, start_run
from mattermost_prefect.tasks.load import advance_cursor, configured_load
from mattermost_prefect.tasks.locks import LeaseError, channel_lock
from mattermost_prefect.tasks.prefetch import read_ahead
from mattermost_prefect.tasks.report import channel_progress
from mattermost_prefect.tasks.transform import transform_batch


def run_channel(
    channel_id: str,
    kind: RunKind = RunKind.SYNC,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelResult:
    """Deliver everything after the channel's cursor (a sync) or within a window (a
    backfill), holding the channel's lock: no other run works on it meanwhile. A failure
    stays within this channel, except a refused token, which ends the whole run."""
    try:
        with channel_lock(channel_id):
            return _run_locked(channel_id, kind, window, start_timestamp)
    except LeaseError as error:  # before any run history could be written
        return ChannelResult(channel_id, None, kind, RunStatus.FAILED, error=describe(error))


def _run_locked(
    channel_id: str, kind: RunKind, window: tuple[int, int] | None, start_timestamp: int | None
) -> ChannelResult:
    """The run itself, once the channel is held: its history row, then every pass."""
    run_id = start_run(channel_id, kind, window)
    run: ChannelRun | None = None
    try:
        run = open_channel(channel_id, run_id, kind, window, start_timestamp)
        run = take_new_posts(run)
        if kind == RunKind.SYNC:
            run = take_missing_files(run)
            run = take_changes(run)
    except AuthenticationError as error:
        close_channel(channel_id, run_id, run, kind, describe(error))
        raise
    except ChannelArchived as error:  # skipped, not failed: nothing to retry until allowed
        return close_channel(channel_id, run_id, run, kind, None, archived=describe(error))
    except Exception as error:
        return close_channel(channel_id, run_id, run, kind, describe(error))
    return close_channel(channel_id, run_id, run, kind, None)


def deliver(
    run: ChannelRun, batch: Batch, attachments: dict[str, list[Attachment]] | None = None
) -> ChannelRun:
    """Attachments (unless fetched ahead), bundles, then each bundle delivered in order, the
    cursor following."""
    run, bundles = transform(run, batch, attachments)
    configured_load()(run, quote(bundles))
    return run


def transform(
    run: ChannelRun,
    batch: Batch,
    attachments: dict[str, list[Attachment]] | None = None,
    recent: list[dict] | None = None,
) -> tuple[ChannelRun, list[BundleFile]]:
    """The batch's bundles, and the run as it stands once they are delivered. `recent`: the
    attachments rows of the batch still loading, not yet in the state store."""
    if attachments is None:
        attachments = fetch_attachments(run, quote(batch.posts))
    attachments = files_as_delivered(run, quote(batch), quote(attachments), quote(recent))
    bundles = transform_batch(run, quote(batch), quote(attachments))
    return run.delivering(bundles), bundles


class _Stages:
    """The new-posts pass's stages as Prefect tasks (pipeline.ordered.take_new_posts runs
    them). Large values cross as quote(): unquoted, Prefect walks every post."""

    def read(self, run: ChannelRun, pending: list[dict]) -> PrefectFuture:
        return read_ahead.submit(run, quote(pending))

    def transform(
        self, run: ChannelRun, batch: Batch, files: dict[str, list[Attachment]], recent: list[dict]
    ) -> tuple[ChannelRun, list[BundleFile]]:
        return transform(run, batch, files, recent)

    def load(self, run: ChannelRun, bundles: list[BundleFile]) -> PrefectFuture:
        return configured_load().submit(run, quote(bundles))

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        advance_cursor(run, cursor)

    def progress(self, run: ChannelRun) -> None:
        channel_progress(run)


def take_new_posts(run: ChannelRun) -> ChannelRun:
    """Three batches at once: the next read, this one transformed, the one before loaded,
    in the order pipeline.ordered.take_new_posts guarantees."""
    return ordered.take_new_posts(run, _Stages())


def take_missing_files(run: ChannelRun) -> ChannelRun:
    """One pass over posts delivered without some file: a failed download is tried again."""
    return deliver_changes(run, posts_missing_files(run))


def take_changes(run: ChannelRun) -> ChannelRun:
    """Re-deliver edited and deleted posts, deliver posts found behind the cursor, then move
    the change watermark to this run."""
    if run.cursor.changes_ms is not None:
        batch, note = scan_changes(run)
        # None: `since` was cut at 1000 rows, or the channel counts posts no listing returned:
        # every post is checked instead, and the report says why
        run = reconcile(replace(run, note=note)) if batch is None else deliver_changes(run, batch)
    return replace(run, cursor=commit_changes(run))


def reconcile(run: ChannelRun) -> ChannelRun:
    position = Cursor(boundary_ms=run.start_ms)
    while True:
        batch = reconcile_batch(run, position)
        run = deliver_changes(run, batch)
        if batch.seen:  # delivered for the first time: listed, so no sweep calls them deleted
            mark_listed(run, batch.seen)
        position = batch.cursor
        if batch.exhausted:
            break
    while True:
        batch = sweep_batch(run)
        run = deliver_changes(run, batch)
        if batch.exhausted:
            return run


def deliver_changes(run: ChannelRun, batch: Batch) -> ChannelRun:
    """Deliver what is stale (if anything) and count what was noticed."""
    if batch.posts:
        run = deliver(run, replace(batch, cursor=None))
    return replace(run, counts=run.counts + batch.counts)
