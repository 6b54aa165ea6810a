"""One channel's run, start to end, over any `Steps` (pipeline/steps.py): the new posts after
the cursor, then (a sync) the files missing from delivered posts and the changes to them.
Whatever fails, the run is closed (history, OpenCTI work, spool, lease) and a result
returned."""

from __future__ import annotations

from dataclasses import replace

from mattermost_connector.channel_run import Batch, BundleFile, ChannelResult, ChannelRun
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import (
    ChannelArchived,
    LeaseError,
    MattermostError,
    stops_the_run,
)
from mattermost_connector.errors import one_line as describe
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.pipeline import ordered
from mattermost_connector.pipeline.ordered import Files, Pending
from mattermost_connector.pipeline.steps import Steps


def run_channel(
    steps: Steps,
    channel_id: str,
    kind: RunKind = RunKind.SYNC,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelResult:
    """Deliver everything after the channel's cursor (a sync) or within a window (a
    backfill), holding the channel's lease: no other run works on it meanwhile. Only what
    ends the whole run (errors.stops_the_run: a refused token, a server that does not
    answer) is raised, after closing."""
    try:
        lease, run_id = steps.begin(channel_id, kind, window)
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
        run = steps.open_channel(channel_id, run_id, kind, window, start_timestamp)
        run = take_new_posts(steps, run)
        if kind == RunKind.SYNC:
            run = take_missing_files(steps, run)
            run = take_changes(steps, run)
    except ChannelArchived as error:  # skipped, not failed: nothing to retry until allowed
        archived = describe(error)
    except Exception as error:
        failure = describe(error)
        if stops_the_run(error):
            stopping = error  # type: ignore[assignment]
    except BaseException:  # interrupted: the run stays unfinished in the history, as a kill's
        lease.release()
        raise
    try:
        result = steps.close(channel_id, lease, run_id, run, kind, failure, archived)
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


class NewPostStages:
    """The new-posts pass's stages (ordered.take_new_posts overlaps them) from `Steps`."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def read(self, run: ChannelRun, pending: list[dict]) -> Pending:
        return self.steps.read_ahead.submit(run, pending)

    def transform(
        self, run: ChannelRun, batch: Batch, files: Files, recent: list[dict]
    ) -> tuple[ChannelRun, list[BundleFile]]:
        bundles = self.steps.transform(run, batch, files, recent)
        return run.delivering(bundles), bundles

    def load(self, run: ChannelRun, bundles: list[BundleFile]) -> Pending:
        return self.steps.load.submit(run, bundles)

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        self.steps.advance(run, cursor)

    def progress(self, run: ChannelRun) -> None:
        self.steps.progress(run)


def take_new_posts(steps: Steps, run: ChannelRun) -> ChannelRun:
    """Three batches at once: the next read, this one transformed, the one before loaded,
    in the order ordered.take_new_posts guarantees."""
    return ordered.take_new_posts(run, NewPostStages(steps))


def take_missing_files(steps: Steps, run: ChannelRun) -> ChannelRun:
    """One pass over posts delivered without some file: a failed download is tried again."""
    return deliver_changes(steps, run, steps.missing_files(run))


def take_changes(steps: Steps, run: ChannelRun) -> ChannelRun:
    """Re-deliver edited and deleted posts, deliver posts found behind the cursor, then move
    the change watermark to this run."""
    if run.cursor.changes_ms is not None:
        batch, note = steps.scan_changes(run)
        # None: `since` was cut at 1000 rows, or the channel counts posts no listing returned:
        # every post is checked instead, and the report says why
        if batch is None:
            run = reconcile(steps, replace(run, note=note))
        else:
            run = deliver_changes(steps, run, batch)
    return replace(run, cursor=steps.commit_changes(run))


def reconcile(steps: Steps, run: ChannelRun) -> ChannelRun:
    """The complete listing compared with what was delivered, stretch by stretch, then the
    delivered posts it no longer returned swept as deleted."""
    position = Cursor(boundary_ms=run.start_ms)
    while True:
        batch = steps.reconcile_batch(run, position)
        run = deliver_changes(steps, run, batch)
        if batch.seen:  # delivered for the first time: listed, so no sweep calls them deleted
            steps.mark_listed(run, batch.seen)
        position = batch.cursor
        if batch.exhausted:
            break
    while True:
        batch = steps.sweep_batch(run)
        run = deliver_changes(steps, run, batch)
        if batch.exhausted:
            return run


def deliver_changes(steps: Steps, run: ChannelRun, batch: Batch) -> ChannelRun:
    """Deliver what is stale (if anything): its files, bundles, then each bundle in order,
    moving no cursor; and count what was noticed."""
    if batch.posts:
        batch = replace(batch, cursor=None)
        files = steps.fetch_files(run, batch.posts)
        bundles = steps.transform(run, batch, files, None)
        run = run.delivering(bundles)
        steps.load(run, bundles)
    return replace(run, counts=run.counts + batch.counts)
