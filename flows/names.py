"""Readable flow run names: `sync 150 channels`, `sync acme/osint-feed`,
`backfill acme/osint-feed [2024-01-01, 2024-02-01)`, and each channel's run named after it."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime

from prefect.runtime import flow_run

from mattermost_connector.errors import ConfigError
from mattermost_connector.kinds import RunKind
from mattermost_connector.window import iso, parse_window
from mattermost_connector.wording import amount
from mattermost_prefect.tasks import resources


def channel_labels(channel_ids: list[str]) -> dict[str, str]:
    """Each channel's team/channel name as the state store last saw it, else its id."""
    try:
        known = resources.store().channel_names()
    except Exception:  # a name is a nicety: never fail a run for it
        known = {}
    return {channel_id: known.get(channel_id) or channel_id for channel_id in channel_ids}


def named_before_running(channel_ids: list[str]) -> dict[str, str]:
    """Each channel's label, asking Mattermost for those the state store has never named (a
    first sync of channels listed by id): a channel's task run takes its name when it starts,
    and Prefect records a task run from its engine's events, which would overwrite a later
    rename. Two requests per unnamed channel, CONNECTOR_CHANNEL_CONCURRENCY at once."""
    labels = channel_labels(channel_ids)
    unnamed = [c for c, label in labels.items() if label == c]
    if not unnamed:
        return labels
    from concurrent.futures import ThreadPoolExecutor

    from mattermost_connector.mattermost.channels import named_channel

    client = resources.client()

    def name(channel_id: str) -> tuple[str, str | None]:
        try:
            return channel_id, named_channel(client, channel_id)[1]
        except Exception:  # a name is a nicety: the channel's run reports what is wrong
            return channel_id, None

    workers = max(1, min(resources.settings().connector.channel_concurrency, len(unnamed)))
    with ThreadPoolExecutor(workers, thread_name_prefix="name") as pool:
        found = {c: n for c, n in pool.map(name, unnamed) if n}
    with suppress(Exception):  # the channel's run remembers it too
        resources.store().remember_names(found)
    return {**labels, **found}


def _day_or_time(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    if moment.time() == datetime.min.time():
        return moment.date().isoformat()
    return iso(epoch_ms)


def window_text(window: tuple[int, int]) -> str:
    return f"[{_day_or_time(window[0])}, {_day_or_time(window[1])})"


def sync_name(channel_ids: list[str]) -> str:
    if not channel_ids:  # found on the server (MATTERMOST_TEAMS): named once selected
        return str(RunKind.SYNC)
    if len(channel_ids) == 1:
        return f"{RunKind.SYNC} {channel_labels(channel_ids)[channel_ids[0]]}"
    return f"{RunKind.SYNC} {amount(len(channel_ids), 'channel')}"


def channel_run_name(
    channel_id: str, kind: RunKind, window: tuple[int, int] | None, name: str | None = None
) -> str:
    label = name or channel_labels([channel_id])[channel_id]
    return f"{label} {kind} {window_text(window)}" if window else label


def sync_run_name() -> str:
    """flow_run_name of the sync: the channels asked for, else the configured ones."""
    requested = flow_run.get_parameters().get("channel_ids")
    try:
        return sync_name(list(requested or resources.settings().mattermost.channel_ids))
    except Exception:  # bad configuration: the run itself reports it
        return str(RunKind.SYNC)


def backfill_run_name() -> str:
    parameters = flow_run.get_parameters()
    channel_id = str(parameters.get("channel_id"))
    try:
        window = window_text(parse_window(parameters.get("start"), parameters.get("end")))
    except (ConfigError, TypeError, ValueError):
        window = f"[{parameters.get('start')}, {parameters.get('end')})"
    return f"{RunKind.BACKFILL} {channel_labels([channel_id])[channel_id]} {window}"


def channel_flow_run_name() -> str:
    parameters = flow_run.get_parameters()
    window = parameters.get("window")
    return channel_run_name(
        str(parameters.get("channel_id")),
        RunKind(parameters.get("kind") or RunKind.SYNC),
        tuple(window) if window else None,
    )


def rename_run(name: str) -> None:
    """Rename the current flow run once what it is about is known (its flow_run_name could
    only guess: the channel's name before its first run, the channels before discovery)."""
    run_id = flow_run.get_id()
    if not run_id or flow_run.get_name() == name:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(run_id, name=name)
