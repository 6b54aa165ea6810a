"""The scheduled sync: every configured channel, each from its own cursor."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.pipeline import run_channel
from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import AuthenticationError
from tasks.policy import describe
from tasks.report import channel_ids_to_sync, finish_sync


@flow(name="mattermost-sync", log_prints=False, validate_parameters=True)
def mattermost_sync(channel_ids: list[str] | None = None) -> State[Any]:
    """Sync the given channels (default: MATTERMOST_CHANNEL_IDS).

    The run ends Failed, without a traceback, when any channel failed; the others still
    complete and keep their progress.
    """
    results: list[ChannelResult] = []
    refused: str | None = None
    for channel_id in channel_ids_to_sync(channel_ids):
        try:
            results.append(run_channel(channel_id, "sync"))
        except AuthenticationError as error:
            refused = describe(error)
            break
    report = [asdict(result) for result in results]
    finish_sync(report)
    failed = [r for r in results if not r.ok]
    if refused:
        return Failed(message=f"run stopped: {refused}", data=report)
    if failed:
        names = ", ".join(r.channel_id for r in failed)
        return Failed(
            message=f"{len(failed)} of {len(results)} channels failed: {names}", data=report
        )
    return Completed(message=f"{len(results)} channels synced", data=report)
