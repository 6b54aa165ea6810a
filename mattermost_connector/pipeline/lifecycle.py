"""A channel run's two ends: its history row and OpenCTI work opened, then closed with the
outcome wherever it is shown (run history, OpenCTI work, the report row)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.delivery import Work
from mattermost_connector.errors import one_line
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.mattermost.channels import channel_as_first_imported, channel_context
from mattermost_connector.pipeline.services import Services
from mattermost_connector.pipeline.spool import new_spool, release_spool, store_identity
from mattermost_connector.retries import retry_call
from mattermost_connector.window import backfill_key, iso
from mattermost_connector.wording import amount

log = logging.getLogger("mattermost_connector.pipeline")
T = TypeVar("T")


def start_run(
    services: Services,
    channel_id: str,
    kind: RunKind,
    window: tuple[int, int] | None,
    flow_run_id: str | None,
) -> int:
    """The run's history row (its id), after writing the outcomes earlier runs could not."""
    services.unwritten.write(services.store)
    bounds = tuple(_utc(ms) for ms in window) if window else (None, None)
    return services.store.start_run(channel_id, kind, flow_run_id=flow_run_id, window=bounds)


def open_channel(
    services: Services,
    channel_id: str,
    run_id: int,
    kind: RunKind,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelRun:
    """Resolve the channel and where it stands; open one OpenCTI work for this run. A sync
    resumes the channel's cursor (a first sync starts at `start_timestamp`, else
    MATTERMOST_START_TIMESTAMP); a backfill resumes its window's own cursor."""
    client, store = services.client, services.store
    mattermost = services.settings.mattermost
    context, channel = channel_context(client, channel_id, mattermost.server_url)
    context = channel_as_first_imported(store, context)
    store.remember_name(channel_id, context.name)  # for `status`
    server_now = client.server_time_ms or int(services.clock().timestamp() * 1000)
    if window:
        key, start_ms = backfill_key(channel_id, *window), window[0]
        label = f"backfill [{iso(window[0])}, {iso(window[1])})"
    else:
        first = mattermost.start_timestamp if start_timestamp is None else start_timestamp
        key, start_ms, label = channel_id, first * 1000, str(RunKind.SYNC)
    cursor = store.cursor(key) or Cursor(boundary_ms=start_ms)
    if services.witness is not None and not window:
        services.witness.opened(channel_id)
    since = iso(cursor.boundary_ms)
    work = Work(channel_id, friendly_name=f"Mattermost {context.name}: {label} from {since}")
    posts_before = store.posts_delivered(key)
    spool = new_spool(
        channel_id, store_identity(services.settings.connector.state_database_url), run_id
    )
    # last: a retried open (the store, the disk) leaves no OpenCTI work behind unclosed
    for destination in services.destinations:
        destination.open_work(work)
    run = ChannelRun(
        channel_id=channel_id,
        kind=kind,
        run_id=run_id,
        context=context,
        cursor=cursor,
        cursor_before=cursor,
        last_post_at=int(channel.get("last_post_at") or 0),
        total_posts=int(channel.get("total_msg_count") or 0),
        work=work,
        spool=spool,
        start_ms=start_ms,
        server_start_ms=server_now,
        cursor_key=key,
        end_ms=window[1] if window else None,
        posts_before=posts_before,
    )
    log.info("channel %s (%s): %s from %s", channel_id, context.name, kind, since)
    return run


def work_message(counts: Counts) -> str:
    """What a completed run's OpenCTI work says it did."""
    by_fate = counts.fates_text()
    changed = (
        f"; {counts.updated} updated, {counts.deleted} deleted"
        if counts.updated or counts.deleted
        else ""
    )
    return (
        f"{amount(counts.posts, 'post')}, {amount(counts.files, 'file')}, "
        f"{amount(counts.objects, 'object')} in {amount(counts.bundles, 'bundle')}"
        + (f"; files: {by_fate}" if by_fate else "")
        + changed
    )


def close(
    services: Services,
    channel_id: str,
    run_id: int,
    run: ChannelRun | None,
    kind: RunKind,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome where it is shown: run history, OpenCTI work. `archived`: why
    an archived channel the server refuses to read was left alone, without failing."""
    status = RunStatus.FAILED if error else RunStatus.ARCHIVED if archived else RunStatus.COMPLETED
    counts = run.counts if run else Counts()
    unrecorded: str | None = None
    try:  # what the history row tallied: for a failed run, what it did deliver
        counts = _stored(services, lambda: _final_counts(services, run_id, counts, bool(error)))
    except Exception as fault:
        unrecorded = one_line(fault, limit=300, first_line=True)
    if run is not None:
        message = error or archived or work_message(counts)
        for destination in services.destinations:
            destination.close_work(run.work, message, in_error=bool(error))
        release_spool(run.spool)
    note = run.note if run else None
    shown = error or archived or note
    if unrecorded is None:
        try:
            _stored(
                services,
                lambda: services.store.finish_run(
                    run_id, status, None if error else counts, error=shown
                ),
            )
        except Exception as fault:
            unrecorded = one_line(fault, limit=300, first_line=True)
    if unrecorded is not None:  # the report says so; the row gets the run's own outcome
        services.unwritten.keep(run_id, (status, None if error else counts, shown))
        status = RunStatus.FAILED
        error = (error + "; " if error else "") + (
            f"state store unavailable, run history not written ({unrecorded})"
        )
    return ChannelResult(
        channel_id=channel_id,
        name=run.context.name if run else None,
        kind=kind,
        status=status,
        counts=counts,
        error=error or archived,
        cursor_before=run.cursor_before if run else None,
        cursor_after=run.cursor if run else None,
        note=note,
    )


def _stored(services: Services, action: Callable[[], T]) -> T:
    """A state-store call under the retry budget for transient faults."""
    return retry_call(action, services.settings.connector, "state store")


def _final_counts(services: Services, run_id: int, counts: Counts, failed: bool) -> Counts:
    """The run's counts with its files by fate; a failed run's delivered ones as its
    history row tallied them bundle by bundle (its passes did not all return)."""
    if failed:
        tallied = services.store.run_counts(run_id)
        counts = replace(counts, posts=tallied.posts, files=tallied.files, objects=tallied.objects)
    return replace(counts, fates=services.store.file_fates(run_id))


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
