"""Run-level steps: which channels to sync, and what to do once they are done."""

from __future__ import annotations

from typing import Any

from prefect import task

from mattermost_connector.config import parse_channel_ids
from mattermost_connector.errors import ConfigError
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


@task(name="finish-sync", **TASK_DEFAULTS)
def finish_sync(report: list[dict[str, Any]]) -> None:
    resources.release_connections()
