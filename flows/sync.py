"""The scheduled sync: every configured channel, each from its own cursor."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import (
    AuthenticationError,
    ConfigError,
    MattermostError,
    one_line,
)
from mattermost_connector.kinds import RunKind
from mattermost_prefect.flows.pipeline import run_channel
from mattermost_prefect.tasks.probe import probe_all, select_channels
from mattermost_prefect.tasks.report import (
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
    """Sync the given channels (default: MATTERMOST_CHANNEL_IDS and the channels
    MATTERMOST_TEAMS finds). `start_timestamp` (epoch seconds) replaces
    MATTERMOST_START_TIMESTAMP for channels never synced before. The channels with nothing
    new are found and finished by one probe; only the others run the channel pipeline."""
    try:
        selection = select_channels(channel_ids)
        probed = probe_all(quote(selection), start_timestamp)
    except (ConfigError, MattermostError) as error:  # the token, a team, the server
        return Failed(message=one_line(error))
    results, refused = run_due_channels(probed.due, start_timestamp)
    order = {channel_id: at for at, channel_id in enumerate(selection.channel_ids)}
    merged = sorted(probed.unchanged + results, key=lambda r: order.get(r.channel_id, len(order)))
    return outcome(merged, RunKind.SYNC, refused)


def run_due_channels(
    channels: list[str], start_timestamp: int | None
) -> tuple[list[ChannelResult], str | None]:
    """The full pipeline for each channel with something to do, in turn; a refused token
    stops the run (its one-line reason returned)."""
    results: list[ChannelResult] = []
    if not channels:
        return results, None
    progress = start_progress(RunKind.SYNC, len(channels))
    for channel_id in channels:
        try:
            results.append(run_channel(channel_id, RunKind.SYNC, start_timestamp=start_timestamp))
        except AuthenticationError as error:
            return results, one_line(error)
        update_progress(progress, len(results), len(channels))
    return results, None
