"""Opening and closing a channel's run: run history, OpenCTI work, spool directory."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import ARCHIVED, ChannelResult, ChannelRun
from mattermost_connector.delivery import Work
from mattermost_connector.mattermost.channels import channel_context, first_imported
from mattermost_connector.mattermost.posts import Cursor
from mattermost_connector.window import backfill_key, iso
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retrying


@task(name="start-run", task_run_name="start-run-{channel_id}", **TASK_DEFAULTS)
def start_run(channel_id: str, kind: str, window: tuple[int, int] | None = None) -> int:
    bounds = tuple(_utc(ms) for ms in window) if window else (None, None)
    return resources.store().start_run(
        channel_id, kind, flow_run_id=flow_run.get_id(), window=bounds
    )


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


@task(
    name="open-channel",
    task_run_name="open-{channel_id}",
    **retrying(2, 10),
)
def open_channel(
    channel_id: str,
    run_id: int,
    kind: str,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelRun:
    """Resolve the channel and where it stands; open one OpenCTI work for this run.

    A sync resumes the channel's cursor (a first sync starts at `start_timestamp`, else
    MATTERMOST_START_TIMESTAMP); a backfill resumes its window's own cursor.
    """
    settings = resources.settings()
    client = resources.client()
    context, channel = channel_context(client, channel_id, settings.mattermost.server_url)
    context = first_imported(resources.store(), context)
    resources.store().remember_name(channel_id, context.name)  # for `status`
    server_now = client.server_time_ms or int(datetime.now(tz=UTC).timestamp() * 1000)
    if window:
        key, start_ms = backfill_key(channel_id, *window), window[0]
        label = f"backfill [{iso(window[0])}, {iso(window[1])})"
    else:
        first = settings.mattermost.start_timestamp if start_timestamp is None else start_timestamp
        key, start_ms, label = channel_id, first * 1000, "sync"
    cursor = resources.store().cursor(key) or Cursor(boundary_ms=start_ms).to_dict()
    since = iso(cursor["boundary_ms"])
    work = Work(channel_id, friendly_name=f"Mattermost {context.name}: {label} from {since}")
    for destination in resources.outputs():
        destination.open_work(work)
    get_run_logger().info("channel %s (%s): %s from %s", channel_id, context.name, kind, since)
    return ChannelRun(
        channel_id=channel_id,
        kind=kind,
        run_id=run_id,
        context=context,
        cursor=cursor,
        cursor_before=cursor,
        last_post_at=int(channel.get("last_post_at") or 0),
        msg_count=int(channel.get("total_msg_count") or 0),
        work=work,
        spool=Path(tempfile.mkdtemp(prefix=f"mattermost-{channel_id}-")),
        start_ms=start_ms,
        server_start_ms=server_now,
        cursor_key=key,
        end_ms=window[1] if window else None,
        total_posts=int(channel.get("total_msg_count") or 0),
        posts_before=resources.store().posts_delivered(key),
    )


@task(name="close-channel", task_run_name="close-{channel_id}", **TASK_DEFAULTS)
def close_channel(
    channel_id: str,
    run_id: int,
    run: ChannelRun | None,
    kind: str,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome everywhere it is shown: run history, OpenCTI work, logs. `archived`:
    why an archived channel the server refuses to read was left alone, without failing."""
    status = "failed" if error else ARCHIVED if archived else "completed"
    counts = {"posts": 0, "files": 0, "objects": 0}
    fates = resources.store().file_fates(run_id)
    if run is not None:
        counts = {"posts": run.posts, "files": run.files, "objects": run.objects}
        by_fate = ChannelResult(channel_id, None, kind, status, fates=fates).fates_text()
        message = (
            f"{run.posts} posts, {run.files} files, {run.objects} objects in {run.bundles} bundles"
            + (f"; files: {by_fate}" if by_fate else "")
            + (
                f"; {run.updated} updated, {run.deleted} deleted"
                if run.updated or run.deleted
                else ""
            )
        )
        for destination in resources.outputs():
            destination.close_work(run.work, error or archived or message, in_error=bool(error))
        shutil.rmtree(run.spool, ignore_errors=True)
    resources.store().finish_run(run_id, status, error=error or archived, **counts)
    result = ChannelResult(
        channel_id=channel_id,
        name=run.context.name if run else None,
        kind=kind,
        status=status,
        skipped=run.skipped if run else 0,
        updated=run.updated if run else 0,
        deleted=run.deleted if run else 0,
        error=error or archived,
        cursor_before=run.cursor_before if run else None,
        cursor_after=run.cursor if run else None,
        fates=fates,
        **counts,
    )
    logger = get_run_logger()
    (logger.error if error else logger.info)(result.summary())
    return result
