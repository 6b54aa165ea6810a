"""Backfill: one channel's posts created in [start, end), without touching the sync cursor."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Failed, State

from mattermost_connector.errors import ConfigError, RunFailed
from mattermost_connector.kinds import RunKind
from mattermost_connector.window import parse_window
from mattermost_prefect.flows.names import backfill_run_name
from mattermost_prefect.flows.sync import outcome, run_all
from mattermost_prefect.tasks.report import channel_ids_to_sync


@flow(name="mattermost-backfill", flow_run_name=backfill_run_name, validate_parameters=True)
def mattermost_backfill(
    channel_id: str, start: str | int | float, end: str | int | float
) -> State[Any]:
    """Import the channel's posts created in [start, end) (ISO 8601 or epoch seconds), with
    the same ids as a sync. Rerunning the same window continues where it stopped."""
    try:
        (channel,) = channel_ids_to_sync([channel_id])
        window = parse_window(start, end)
    except ConfigError as error:
        return Failed(message=str(error), data=RunFailed(str(error)))
    results, refused = run_all([channel], RunKind.BACKFILL, window=window)
    return outcome(results, RunKind.BACKFILL, refused)
