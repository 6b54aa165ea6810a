"""The scheduled sync: every configured channel, each from its own cursor."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import AuthenticationError, ConfigError, one_line
from mattermost_connector.kinds import RunKind
from mattermost_prefect.flows.pipeline import run_channel
from mattermost_prefect.tasks.report import (
    channel_ids_to_sync,
    publish_report,
    start_progress,
    update_progress,
)


def outcome(results: list[ChannelResult], kind: RunKind, refused: str | None = None) -> State[Any]:
    """Publish the report, then end Completed, or Failed without a traceback when any
    channel failed (the others still completed and kept their progress)."""
    report = [result.row() for result in results]
    publish_report(report, kind)
    failed = [r for r in results if not r.ok]
    if refused:
        return Failed(message=f"run stopped: {refused}", data=report)
    if failed:
        names = ", ".join(r.channel_id for r in failed)
        return Failed(
            message=f"{len(failed)} of {len(results)} channels failed: {names}", data=report
        )
    return Completed(message=f"{len(results)} channels done", data=report)


@flow(name="mattermost-sync", flow_run_name="sync-{channel_ids}", validate_parameters=True)
def mattermost_sync(
    channel_ids: list[str] | None = None, start_timestamp: int | None = None
) -> State[Any]:
    """Sync the given channels (default: MATTERMOST_CHANNEL_IDS). `start_timestamp` (epoch
    seconds) replaces MATTERMOST_START_TIMESTAMP for channels never synced before."""
    try:
        channels = channel_ids_to_sync(channel_ids)
    except ConfigError as error:
        return Failed(message=str(error))
    results: list[ChannelResult] = []
    refused: str | None = None
    progress = start_progress(RunKind.SYNC, len(channels))
    for channel_id in channels:
        try:
            results.append(run_channel(channel_id, RunKind.SYNC, start_timestamp=start_timestamp))
        except AuthenticationError as error:
            refused = one_line(error)
            break
        update_progress(progress, len(results), len(channels))
    return outcome(results, RunKind.SYNC, refused)
