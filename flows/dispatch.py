"""Run a list of channels, up to CONNECTOR_CHANNEL_CONCURRENCY at once: in this process, each
as a `mattermost-channel` task run of the current flow run (the default), or on the workers of
CONNECTOR_WORK_POOL, each as its own flow run (`run_deployment` of
`mattermost-channel/channel`). Each channel run still takes its channel's lease, so two runs
never work on one channel at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextvars import copy_context

from prefect.runtime import flow_run

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import MattermostError, RunStopped, one_line, stops_the_run
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_prefect.flows.channel import (
    CHANNEL_DEPLOYMENT,
    CHANNEL_FLOW,
    RESULT_ARTIFACT,
    channel_result,
    crashed,
    mattermost_channel_task,
    raise_if_stopping,
)
from mattermost_prefect.flows.names import channel_labels, channel_run_name, named_before_running
from mattermost_prefect.tasks import observe, resources
from mattermost_prefect.tasks.channel_task import SHARED_RUN
from mattermost_prefect.tasks.report import start_progress, update_progress

Window = tuple[int, int] | None
RunOne = Callable[[str, str, RunKind, Window, int | None], ChannelResult]


def run_channels(
    channel_ids: list[str],
    kind: RunKind = RunKind.SYNC,
    start_timestamp: int | None = None,
    window: Window = None,
) -> list[ChannelResult]:
    """Every channel's result, in the order given. A refused token or a server that does not
    answer (errors.stops_the_run) lets the channels already running finish, starts no other,
    and raises RunStopped with the results so far."""
    connector = resources.settings().connector
    run_one = dispatched if connector.work_pool else in_process
    progress = start_progress(kind, len(channel_ids))
    # one read for all (each run is named after one); on this process, channels never named
    # are asked for: a task run keeps the name it starts with
    labels = (
        channel_labels(channel_ids) if connector.work_pool else named_before_running(channel_ids)
    )
    stopped = threading.Event()
    results: dict[str, ChannelResult] = {}
    refused: str | None = None

    def one(channel_id: str) -> ChannelResult | None:
        if stopped.is_set():
            return None
        SHARED_RUN.set(flow_run.get_id())  # one user cache for all the channels of this run
        try:
            name = channel_run_name(channel_id, kind, window, labels[channel_id])
            return run_one(channel_id, name, kind, window, start_timestamp)
        except Exception as error:
            if stops_the_run(error):
                stopped.set()
                raise
            # the run could not be started or followed: this channel
            return ChannelResult(
                channel_id, None, kind, RunStatus.FAILED, error=one_line(error, first_line=True)
            )

    workers = max(1, min(connector.channel_concurrency, len(channel_ids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="channel") as pool:
        # each channel runs in a copy of this flow run's context: its run is a subflow
        futures = {
            pool.submit(copy_context().run, one, channel_id): channel_id
            for channel_id in channel_ids
        }
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except MattermostError as error:  # only what stops the run gets here
                    refused = refused or one_line(error)
                    continue
                if result is not None:
                    results[futures[future]] = result
                    update_progress(progress, len(results), len(channel_ids))
        except BaseException:  # interrupted: no other channel starts; those running finish
            stopped.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    ordered = [results[c] for c in channel_ids if c in results]
    if refused:
        raise RunStopped(refused, ordered)
    return ordered


def in_process(
    channel_id: str, name: str, kind: RunKind, window: Window, start_timestamp: int | None
) -> ChannelResult:
    """The channel as a task run of the current flow run, in this process."""
    state = mattermost_channel_task.with_options(task_run_name=name)(
        channel_id=channel_id,
        kind=kind,
        window=window,
        start_timestamp=start_timestamp,
        return_state=True,
    )
    return channel_result(state, channel_id, kind)


def dispatched(
    channel_id: str, name: str, kind: RunKind, window: Window, start_timestamp: int | None
) -> ChannelResult:
    """The channel as a run of the per-channel deployment, executed by a worker of
    CONNECTOR_WORK_POOL; waits for it, then reads its report row from the Prefect API."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        f"{CHANNEL_FLOW}/{CHANNEL_DEPLOYMENT}",
        parameters={
            "channel_id": channel_id,
            "kind": str(kind),
            "window": list(window) if window else None,
            "start_timestamp": start_timestamp,
        },
        flow_run_name=name,
        timeout=None,
        poll_interval=2,
        as_subflow=True,
    )
    state = run.state
    raise_if_stopping(state)
    artifacts = observe.read_result_artifacts(run.id, RESULT_ARTIFACT)
    for artifact in artifacts:
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if data:
            return ChannelResult.from_row(data[0])
    return crashed(channel_id, kind, state)
