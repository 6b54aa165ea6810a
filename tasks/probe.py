"""Run-level steps of a sync before any channel's pipeline: which channels (found again at
each run), then one probe of them all that finishes the unchanged ones on the spot.

Two task runs for the whole sync, whatever the number of channels: the Prefect cost of a
channel with nothing to do is a share of them, not the 8-9 task runs of its pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import UNCHANGED, ChannelResult
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.mattermost.discovery import Selection, discover
from mattermost_connector.probe import probe_channels
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS
from mattermost_prefect.tasks.report import channel_ids_to_sync


@dataclass
class Probed:
    """The channels found unchanged, already finished, and those due for the pipeline."""

    unchanged: list[ChannelResult]
    due: list[str]


@task(name="select-channels", **TASK_DEFAULTS)
def select_channels(requested: list[str] | None) -> Selection:
    """The requested channels, else MATTERMOST_CHANNEL_IDS and the channels of
    MATTERMOST_TEAMS (and direct messages) found now, less MATTERMOST_EXCLUDE_CHANNEL_IDS.
    Asks for the token's account first: a refused token or an unreachable server ends the
    run here, in one line, before any channel."""
    client = resources.client()
    client.me()
    if requested:
        return Selection(channel_ids_to_sync(requested))
    selection = discover(client, resources.settings().mattermost)
    names = {c: n for c in selection.channel_ids if (n := selection.name(c))}
    resources.store().remember_names(names)
    found = len(selection.listed)
    if found:
        get_run_logger().info(
            "%d channels to sync (%d found on the server)", len(selection.channel_ids), found
        )
    return selection


@task(name="probe-channels", **TASK_DEFAULTS)
def probe_all(selection: Selection, start_timestamp: int | None = None) -> Probed:
    """Every selected channel's metadata and `since` scan, concurrently; the unchanged ones
    are finished here (watermark, run history, report row), the others returned as due."""
    settings, client, store = resources.settings(), resources.client(), resources.store()
    mattermost = settings.mattermost
    first = mattermost.start_timestamp if start_timestamp is None else start_timestamp
    server_now = client.server_time_ms
    assert server_now is not None  # select_channels asked the server already
    probed = probe_channels(
        client,
        store,
        selection.channel_ids,
        selection.listed,
        server_now_ms=server_now,
        start_ms=first * 1000,
        include_system=mattermost.include_system_messages,
        max_attachment_size=mattermost.max_attachment_size,
    )
    unchanged = list(probed.unchanged)
    store.record_unchanged(unchanged, flow_run.get_id(), note=UNCHANGED)
    stored = store.channel_names() if unchanged else {}
    results = [
        ChannelResult(
            channel_id,
            selection.name(channel_id) or stored.get(channel_id),
            RunKind.SYNC,
            RunStatus.COMPLETED,
            cursor_before=before,
            cursor_after=after,
            note=UNCHANGED,
        )
        for channel_id, (before, after) in probed.unchanged.items()
    ]
    due = [c for c in selection.channel_ids if c in probed.due]
    logger = get_run_logger()
    logger.info("%d channels unchanged, %d to run", len(results), len(due))
    for channel_id in due:
        logger.debug("channel %s: %s", channel_id, probed.due[channel_id])
    return Probed(results, due)
