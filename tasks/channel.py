"""Opening and closing a channel's run: run history, OpenCTI work, spool directory."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline import ChannelPipeline
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS, retrying


def pipeline() -> ChannelPipeline:
    """The channel pipeline over this process's resources, for the current flow run."""
    return resources.pipeline(flow_run.get_id() or "local")


@task(name="start-run", task_run_name="start-run-{channel_id}", **TASK_DEFAULTS)
def start_run(channel_id: str, kind: RunKind, window: tuple[int, int] | None = None) -> int:
    return pipeline().start_run(channel_id, kind, window, flow_run.get_id())


@task(
    name="open-channel",
    task_run_name="open-{channel_id}",
    **retrying(2, 10),
)
def open_channel(
    channel_id: str,
    run_id: int,
    kind: RunKind,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> ChannelRun:
    """Resolve the channel and where it stands; open one OpenCTI work for this run
    (ChannelPipeline.open)."""
    opened = pipeline().open(channel_id, run_id, kind, window, start_timestamp)
    get_run_logger().info(
        "channel %s (%s): %s from %s", channel_id, opened.run.context.name, kind, opened.since
    )
    return opened.run


@task(name="close-channel", task_run_name="close-{channel_id}", **TASK_DEFAULTS)
def close_channel(
    channel_id: str,
    run_id: int,
    run: ChannelRun | None,
    kind: RunKind,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome everywhere it is shown: run history, OpenCTI work, logs."""
    result = pipeline().close(channel_id, run_id, run, kind, error, archived)
    logger = get_run_logger()
    (logger.error if error else logger.info)(result.summary())
    return result
