"""Run-level steps: which channels to run, progress, and the report every run publishes."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import task
from prefect.runtime import flow_run

from mattermost_connector import progress
from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.config import parse_channel_ids
from mattermost_connector.errors import ConfigError
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline.steps import log_progress
from mattermost_connector.window import iso
from mattermost_prefect.tasks import observe, resources
from mattermost_prefect.tasks.inline import inline
from mattermost_prefect.tasks.policy import TASK_DEFAULTS


def channel_ids_to_sync(requested: list[str] | None) -> list[str]:
    """The requested channels, checked like MATTERMOST_CHANNEL_IDS, or the configured ones."""
    if not requested:
        return resources.settings().mattermost.channel_ids
    try:
        return parse_channel_ids(requested)
    except ValueError as error:
        raise ConfigError(f"channel_ids: {error}") from None


_FIRST_BATCH = object()  # a channel's entry before its second batch: no artifact yet


def _run_key() -> str:
    """Whose progress: the channel's task run when the channel is one (tasks/inline.py),
    else the current flow run (a sync's or a channel's)."""
    from prefect.runtime import task_run

    return (task_run.get_id() if inline() else None) or flow_run.get_id() or ""


def start_progress(kind: RunKind, channels: int = 1) -> UUID | None:
    """The run's progress artifact (a plain call: a task run per update would be noise)."""
    artifact = observe.create_progress(f"Channels done ({kind})", key=f"mattermost-{kind}-progress")
    resources.progress_artifacts()[flow_run.get_id() or ""] = [artifact, 0, channels]
    return artifact


def update_progress(artifact_id: UUID | None, done: int, total: int) -> None:
    resources.progress_artifacts().get(flow_run.get_id() or "", [None, 0, 0])[1:] = [done, total]
    observe.update_progress(artifact_id, progress.overall(done, total, 0.0), None)


def channel_progress(run: ChannelRun) -> None:
    """Within a channel: posts done of about how many, in the log (steps.log_progress) and
    the progress artifact of the channel's run (its task run or flow run), made at its second
    batch: a channel done in one batch costs no artifact, nor the API calls one takes. A
    plain call, not a task: a task run per batch would only add noise."""
    text = log_progress(run)
    key = _run_key()
    if not key:
        return
    runs = resources.progress_artifacts()
    entry = runs.get(key)
    if entry is None:  # the first batch: remembered, no artifact yet
        runs[key] = [_FIRST_BATCH, 0, 1]
        return
    if entry[0] is _FIRST_BATCH:
        entry[0] = observe.create_progress(text, key="mattermost-channel-progress")
    artifact, channels_done, channels = entry
    done = run.posts_before + run.counts.posts
    current = progress.share(done, run.total_posts) if run.kind == RunKind.SYNC else 0.0
    observe.update_progress(artifact, progress.overall(channels_done, channels, current), text)


def forget_progress(completed: bool = False) -> None:
    """The end of a channel's run: its progress entry is no longer needed; a completed run's
    artifact reads 100% (a backfill's has no total to count towards, and a sync's total,
    `total_msg_count`, also counts deleted posts and system messages)."""
    entry = resources.progress_artifacts().pop(_run_key(), None)
    if completed and entry is not None and entry[0] is not _FIRST_BATCH:
        observe.update_progress(entry[0], 100.0, None)


def nothing_to_run_progress(kind: RunKind) -> None:
    """A run whose channels were all found unchanged (no channel run): its progress artifact,
    done, as every run has one."""
    observe.create_progress(
        f"Channels done ({kind})", key=f"mattermost-{kind}-progress", progress=100.0
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
        observe.create_table(
            rows, key=f"mattermost-{kind}-report", description=f"Mattermost {kind}, per channel"
        )
    resources.release_connections()
