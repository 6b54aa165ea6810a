"""Run-level steps: which channels to run, progress, and the report every run publishes."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from mattermost_connector import progress
from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.config import parse_channel_ids
from mattermost_connector.errors import ConfigError
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline.steps import log_progress
from mattermost_connector.window import iso
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS


def channel_ids_to_sync(requested: list[str] | None) -> list[str]:
    """The requested channels, checked like MATTERMOST_CHANNEL_IDS, or the configured ones."""
    if not requested:
        return resources.settings().mattermost.channel_ids
    try:
        return parse_channel_ids(requested)
    except ValueError as error:
        raise ConfigError(f"channel_ids: {error}") from None


def start_progress(kind: RunKind, channels: int = 1) -> UUID:
    """The run's progress artifact (a plain call: a task run per update would be noise)."""
    artifact = create_progress_artifact(
        0.0, key=f"mattermost-{kind}-progress", description=f"Channels done ({kind})"
    )
    resources.progress_artifacts()[flow_run.get_id() or ""] = [artifact, 0, channels]
    return artifact


def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    resources.progress_artifacts().get(flow_run.get_id() or "", [None, 0, 0])[1:] = [done, total]
    update_progress_artifact(artifact_id, progress.overall(done, total, 0.0))


def channel_progress(run: ChannelRun) -> None:
    """Within a channel: posts done of about how many, in the log (steps.log_progress) and
    the progress artifact of the channel's flow run, made at its first batch (a channel
    with nothing new costs no artifact). A plain call, not a task: a task run per batch
    would only add noise."""
    text = log_progress(run)
    runs = resources.progress_artifacts()
    run_id = flow_run.get_id()
    if run_id and run_id not in runs:
        artifact = create_progress_artifact(
            0.0, key="mattermost-channel-progress", description=text
        )
        runs[run_id] = [artifact, 0, 1]
    entry = runs.get(run_id or "")
    if entry is not None:
        artifact, channels_done, channels = entry
        done = run.posts_before + run.counts.posts
        current = progress.share(done, run.total_posts) if run.kind == RunKind.SYNC else 0.0
        update_progress_artifact(
            artifact, progress.overall(channels_done, channels, current), description=text
        )


def forget_progress(completed: bool = False) -> None:
    """The end of a channel's flow run: its progress entry is no longer needed; a completed
    run's artifact reads 100% (a backfill's has no total to count towards, and a sync's
    total, `total_msg_count`, also counts deleted posts and system messages)."""
    entry = resources.progress_artifacts().pop(flow_run.get_id() or "", None)
    if completed and entry is not None:
        update_progress_artifact(entry[0], 100.0)


def nothing_to_run_progress(kind: RunKind) -> None:
    """A run whose channels were all found unchanged (no channel run): its progress artifact,
    done, as every run has one."""
    create_progress_artifact(
        100.0, key=f"mattermost-{kind}-progress", description=f"Channels done ({kind})"
    )


def _position(cursor: dict[str, Any] | None) -> str:
    if not cursor:
        return ""
    return iso(cursor["boundary_ms"])


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(report: list[dict[str, Any]], kind: RunKind) -> None:
    """A table per run in the Prefect UI (and `prefect artifact ls`); then, unless a live
    session reuses them, close the connections to Mattermost."""
    rows = [
        {
            "channel": row["channel_id"],
            "name": row["name"] or "",
            "status": row["status"],
            "posts": row["posts"],
            "files": row["files"],
            "files by fate": ChannelResult.from_row(row).counts.fates_text(),
            "objects": row["objects"],
            "updated": row["updated"],
            "deleted": row["deleted"],
            "skipped": row["skipped"],
            "error": row["error"] or "",
            "note": row.get("note") or "",
            "cursor before": _position(row["cursor_before"]),
            "cursor after": _position(row["cursor_after"]),
        }
        for row in report
    ]
    resources.progress_artifacts().pop(flow_run.get_id() or "", None)
    if rows:
        create_table_artifact(
            rows, key=f"mattermost-{kind}-report", description=f"Mattermost {kind}, per channel"
        )
    resources.release_connections()
