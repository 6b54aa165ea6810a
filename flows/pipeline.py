"""One channel's pipeline: extract -> attachments -> transform -> load, batch after batch.

First the posts created since the cursor, then the edits and deletions of posts already
delivered. Only orchestration lives here: every read, write and request happens in a task.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

from prefect.futures import PrefectFuture
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import Batch, BundleFile, ChannelResult, ChannelRun
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import ChannelArchived, MattermostError, stops_the_run
from mattermost_connector.errors import one_line as describe
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.pipeline import ordered
from mattermost_connector.stix import Attachment
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.attachments import (
    fetch_attachments,
    posts_missing_files,
)
from mattermost_prefect.tasks.changes import (
    commit_changes,
    mark_listed,
    reconcile_batch,
    scan_changes,
    sweep_batch,
)
from mattermost_prefect.tasks.channel import begin_channel, close_channel, open_channel
from mattermost_prefect.tasks.inline import step
from mattermost_prefect.tasks.load import advance_cursor, configured_load
from mattermost_prefect.tasks.locks import LeaseError, release_channel
from mattermost_prefect.tasks.policy import apply_budget
from mattermost_prefect.tasks.prefetch import read_ahead
from mattermost_prefect.tasks.report import channel_progress
from mattermost_prefect.tasks.transform import transform_batch

# Every task of a channel's run that reaches a service: one budget for transient and busy
# faults, set from the configuration when a run starts (tasks/policy.py). Not begin_channel:
# its state-store calls each have the budget already (retries.retry_call).
BUDGETED = (
    open_channel,
    read_ahead,
    fetch_attachments,
    transform_batch,
    posts_missing_files,
    commit_changes,
    mark_listed,
    reconcile_batch,
    scan_changes,
    sweep_batch,
    advance_cursor,
)


def run_channel(
    channel_id: str,
    kind: RunKind = RunKind.SYNC,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelResult:
    """Deliver everything after the channel's cursor (a sync) or within a window (a
    backfill), holding the channel's lease: no other run works on it meanwhile. Whatever
    fails, the run is closed (history, OpenCTI work, spool, lease) and a result returned;
    only what ends the whole run (errors.stops_the_run: a refused token, a server that does
    not answer) is raised, after closing."""
    apply_budget(resources.settings().connector, BUDGETED)
    try:
        holder, run_id = step(begin_channel)(channel_id, kind, window)
    except LeaseError as error:  # before any run history could be written
        return ChannelResult(channel_id, None, kind, RunStatus.FAILED, error=describe(error))
    except Exception as error:  # the state store, after its retries: no history row to close
        return ChannelResult(
            channel_id, None, kind, RunStatus.FAILED, error=f"state store: {describe(error)}"
        )
    run: ChannelRun | None = None
    stopping: MattermostError | None = None
    archived: str | None = None
    failure: str | None = None
    try:
        run = step(open_channel)(channel_id, run_id, kind, window, start_timestamp)
        run = take_new_posts(run)
        if kind == RunKind.SYNC:
            run = take_missing_files(run)
            run = take_changes(run)
    except ChannelArchived as error:  # skipped, not failed: nothing to retry until allowed
        archived = describe(error)
    except Exception as error:
        failure = describe(error)
        if stops_the_run(error):
            stopping = error  # type: ignore[assignment]
    except BaseException:  # interrupted: the run stays unfinished in the history, as a kill's
        release_channel(channel_id, holder)
        raise
    try:
        result = step(close_channel)(
            channel_id, holder, run_id, run, kind, failure, archived=archived
        )
    except Exception as error:  # closing itself failed (the lease is released): say why
        result = ChannelResult(
            channel_id,
            run.context.name if run else None,
            kind,
            RunStatus.FAILED,
            error="; ".join(filter(None, [failure, f"closing the run: {describe(error)}"])),
        )
    if stopping is not None:
        raise stopping
    return result


def deliver(
    run: ChannelRun, batch: Batch, attachments: dict[str, list[Attachment]] | None = None
) -> ChannelRun:
    """Attachments (unless fetched ahead), bundles, then each bundle delivered in order, the
    cursor following."""
    run, bundles = transform(run, batch, attachments)
    step(configured_load())(run, quote(bundles))
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
        attachments = step(fetch_attachments)(run, quote(batch.posts))
    bundles = step(transform_batch)(run, quote(batch), quote(attachments), quote(recent))
    return run.delivering(bundles), bundles


class _Stages:
    """The new-posts pass's stages as Prefect tasks (pipeline.ordered.take_new_posts runs
    them). Large values cross as quote(): unquoted, Prefect walks every post."""

    def read(self, run: ChannelRun, pending: list[dict]) -> PrefectFuture | Future:
        return step(read_ahead).submit(run, quote(pending))

    def transform(
        self, run: ChannelRun, batch: Batch, files: dict[str, list[Attachment]], recent: list[dict]
    ) -> tuple[ChannelRun, list[BundleFile]]:
        return transform(run, batch, files, recent)

    def load(self, run: ChannelRun, bundles: list[BundleFile]) -> PrefectFuture | Future:
        return step(configured_load()).submit(run, quote(bundles))

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        step(advance_cursor)(run, cursor)

    def progress(self, run: ChannelRun) -> None:
        channel_progress(run)


def take_new_posts(run: ChannelRun) -> ChannelRun:
    """Three batches at once: the next read, this one transformed, the one before loaded,
    in the order pipeline.ordered.take_new_posts guarantees."""
    return ordered.take_new_posts(run, _Stages())


def take_missing_files(run: ChannelRun) -> ChannelRun:
    """One pass over posts delivered without some file: a failed download is tried again."""
    return deliver_changes(run, step(posts_missing_files)(run))


def take_changes(run: ChannelRun) -> ChannelRun:
    """Re-deliver edited and deleted posts, deliver posts found behind the cursor, then move
    the change watermark to this run."""
    if run.cursor.changes_ms is not None:
        batch, note = step(scan_changes)(run)
        # None: `since` was cut at 1000 rows, or the channel counts posts no listing returned:
        # every post is checked instead, and the report says why
        run = reconcile(replace(run, note=note)) if batch is None else deliver_changes(run, batch)
    return replace(run, cursor=step(commit_changes)(run))


def reconcile(run: ChannelRun) -> ChannelRun:
    position = Cursor(boundary_ms=run.start_ms)
    while True:
        batch = step(reconcile_batch)(run, position)
        run = deliver_changes(run, batch)
        if batch.seen:  # delivered for the first time: listed, so no sweep calls them deleted
            step(mark_listed)(run, batch.seen)
        position = batch.cursor
        if batch.exhausted:
            break
    while True:
        batch = step(sweep_batch)(run)
        run = deliver_changes(run, batch)
        if batch.exhausted:
            return run


def deliver_changes(run: ChannelRun, batch: Batch) -> ChannelRun:
    """Deliver what is stale (if anything) and count what was noticed."""
    if batch.posts:
        run = deliver(run, replace(batch, cursor=None))
    return replace(run, counts=run.counts + batch.counts)
