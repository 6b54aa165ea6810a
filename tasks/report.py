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

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.config import parse_channel_ids
from mattermost_connector.errors import ConfigError
from mattermost_connector.window import iso
from tasks import resources
from tasks.policy import TASK_DEFAULTS


def channel_ids_to_sync(requested: list[str] | None) -> list[str]:
    """The requested channels, checked like MATTERMOST_CHANNEL_IDS, or the configured ones."""
    if not requested:
        return resources.settings().mattermost.channel_ids
    try:
        return parse_channel_ids(requested)
    except ValueError as error:
        raise ConfigError(f"channel_ids: {error}") from None


@task(name="start-progress", **TASK_DEFAULTS)
def start_progress(kind: str) -> UUID:
    return create_progress_artifact(
        0.0, key=f"mattermost-{kind}-progress", description=f"Channels done ({kind})"
    )


@task(name="update-progress", **TASK_DEFAULTS)
def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    update_progress_artifact(artifact_id, 100.0 * done / max(total, 1))


def _position(cursor: dict[str, Any] | None) -> str:
    if not cursor:
        return ""
    return iso(cursor["boundary_ms"])


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(report: list[dict[str, Any]], kind: str) -> None:
    """A table per run in the Prefect UI (and `prefect artifact ls`); then, unless
    MATTERMOST_KEEPALIVE, close the connections to Mattermost."""
    rows = [
        {
            "channel": row["channel_id"],
            "name": row["name"] or "",
            "status": row["status"],
            "posts": row["posts"],
            "files": row["files"],
            "files by fate": ChannelResult(**row).fates_text(),
            "objects": row["objects"],
            "updated": row["updated"],
            "deleted": row["deleted"],
            "skipped": row["skipped"],
            "error": row["error"] or "",
            "cursor before": _position(row["cursor_before"]),
            "cursor after": _position(row["cursor_after"]),
        }
        for row in report
    ]
    if rows:
        create_table_artifact(
            rows, key=f"mattermost-{kind}-report", description=f"Mattermost {kind}, per channel"
        )
    resources.release_connections()
