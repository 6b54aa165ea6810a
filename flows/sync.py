"""The scheduled sync: every configured channel, each from its own cursor."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import (
    RunFailed,
    RunStopped,
    one_line,
)
from mattermost_connector.kinds import RunKind
from mattermost_connector.wording import amount
from mattermost_prefect.flows.dispatch import run_channels
from mattermost_prefect.flows.names import rename_run, sync_name, sync_run_name
from mattermost_prefect.flows.quiet import quiet_expected_failures
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import with_budget
from mattermost_prefect.tasks.probe import probe_all, select_channels
from mattermost_prefect.tasks.report import nothing_to_run_progress, publish_report

quiet_expected_failures()


def outcome(results: list[ChannelResult], kind: RunKind, refused: str | None = None) -> State[Any]:
    """Publish the report, then end Completed with it, or Failed with its one-line reason when
    the token was refused or any channel failed (the others still completed and kept their
    progress). A Failed state carries the report inside a RunFailed: Prefect resolves a
    failed state's data as an exception, and logs a traceback for anything else."""
    report = [result.row() for result in results]
    publish_report(report, kind)
    failed = [r for r in results if not r.ok]
    if refused:
        message = f"run stopped: {refused}"
        return Failed(message=message, data=RunFailed(message, report))
    if failed:
        names = ", ".join(r.channel_id for r in failed)
        message = f"{len(failed)} of {amount(len(results), 'channel')} failed: {names}"
        return Failed(message=message, data=RunFailed(message, report))
    return Completed(message=f"{amount(len(results), 'channel')} done", data=report)


def run_all(
    channels: list[str],
    kind: RunKind,
    start_timestamp: int | None = None,
    window: tuple[int, int] | None = None,
) -> tuple[list[ChannelResult], str | None]:
    """The channels' results, and why the run stopped early (a refused token), if it did."""
    if not channels:  # every channel unchanged
        nothing_to_run_progress(kind)
        return [], None
    try:
        return run_channels(channels, kind, start_timestamp, window), None
    except RunStopped as stopped:
        return stopped.results, stopped.reason


@flow(name="mattermost-sync", flow_run_name=sync_run_name, validate_parameters=True)
def mattermost_sync(
    channel_ids: list[str] | None = None, start_timestamp: int | None = None
) -> State[Any]:
    """Sync the given channels (default: MATTERMOST_CHANNEL_IDS and the channels
    MATTERMOST_TEAMS finds). The channels with nothing new are found and finished by one
    probe; each of the others runs as a task run of this sync (or, on CONNECTOR_WORK_POOL, its
    own flow run), CONNECTOR_CHANNEL_CONCURRENCY at once.
    `start_timestamp` (epoch seconds) replaces MATTERMOST_START_TIMESTAMP for channels never
    synced before."""
    # the same budget for transient and busy faults as every task of a channel's run
    connector = resources.settings().connector
    try:
        selection = with_budget(select_channels, connector)(channel_ids)
        rename_run(sync_name(selection.channel_ids))
        probed = with_budget(probe_all, connector)(quote(selection), start_timestamp)
    except Exception as error:  # the token, a team, the server, the state store: the run's
        message = one_line(error)
        return Failed(message=message, data=RunFailed(message))
    results, refused = run_all(probed.due, RunKind.SYNC, start_timestamp)
    rename_run(sync_name(selection.channel_ids))  # names a channel's first run has learnt
    order = {channel_id: at for at, channel_id in enumerate(selection.channel_ids)}
    merged = sorted(probed.unchanged + results, key=lambda r: order.get(r.channel_id, len(order)))
    return outcome(merged, RunKind.SYNC, refused)
