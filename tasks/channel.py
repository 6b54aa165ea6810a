"""Opening and closing a channel's run: run history, OpenCTI work, spool directory."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.delivery import Work
from mattermost_connector.mattermost.channels import channel_context
from mattermost_connector.mattermost.posts import Cursor
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retryable


@task(name="start-run", task_run_name="start-run-{channel_id}", **TASK_DEFAULTS)
def start_run(channel_id: str, kind: str) -> int:
    return resources.store().start_run(channel_id, kind, flow_run_id=flow_run.get_id())


@task(
    name="open-channel",
    task_run_name="open-{channel_id}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retryable,
    **TASK_DEFAULTS,
)
def open_channel(channel_id: str, run_id: int, kind: str) -> ChannelRun:
    """Resolve the channel and where it stands; open one OpenCTI work for this run."""
    settings = resources.settings()
    client = resources.client()
    context, channel = channel_context(client, channel_id, settings.mattermost.server_url)
    server_now = client.server_time_ms or int(datetime.now(tz=UTC).timestamp() * 1000)
    stored = resources.store().cursor(channel_id)
    cursor = stored or Cursor.start_at(settings.mattermost.start_timestamp).to_dict()
    since = datetime.fromtimestamp(cursor["boundary_ms"] / 1000, tz=UTC).isoformat()
    work = Work(channel_id, friendly_name=f"Mattermost {context.name}: {kind} from {since}")
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
        work=work,
        spool=Path(tempfile.mkdtemp(prefix=f"mattermost-{channel_id}-")),
        start_ms=settings.mattermost.start_timestamp * 1000,
        server_start_ms=server_now,
    )


@task(name="close-channel", task_run_name="close-{channel_id}", **TASK_DEFAULTS)
def close_channel(
    channel_id: str, run_id: int, run: ChannelRun | None, kind: str, error: str | None
) -> ChannelResult:
    """Record the outcome everywhere it is shown: run history, OpenCTI work, logs."""
    status = "failed" if error else "completed"
    counts = {"posts": 0, "files": 0, "objects": 0}
    if run is not None:
        counts = {"posts": run.posts, "files": run.files, "objects": run.objects}
        message = (
            f"{run.posts} posts, {run.files} files, {run.objects} objects in {run.bundles} bundles"
            + (
                f"; {run.updated} updated, {run.deleted} deleted"
                if run.updated or run.deleted
                else ""
            )
        )
        for destination in resources.outputs():
            destination.close_work(run.work, error or message, in_error=bool(error))
        shutil.rmtree(run.spool, ignore_errors=True)
    resources.store().finish_run(run_id, status, error=error, **counts)
    result = ChannelResult(
        channel_id=channel_id,
        name=run.context.name if run else None,
        kind=kind,
        status=status,
        skipped=run.skipped if run else 0,
        updated=run.updated if run else 0,
        deleted=run.deleted if run else 0,
        error=error,
        cursor_before=run.cursor_before if run else None,
        cursor_after=run.cursor if run else None,
        **counts,
    )
    logger = get_run_logger()
    (logger.error if error else logger.info)(result.summary())
    return result
