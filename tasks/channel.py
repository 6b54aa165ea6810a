"""Opening and closing a channel's run: its lease, run history, OpenCTI work, spool directory.

The bookkeeping is one task at each end (begin, close) rather than a task per step: the UI
gains nothing from separate lease and history task runs, and each costs engine time."""

from __future__ import annotations

from contextvars import ContextVar

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline import ChannelPipeline
from mattermost_connector.retries import retry_call
from mattermost_prefect.tasks import locks, resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS, retrying

# The run whose user cache a channel's tasks share: the sync's, for the channels it runs as
# subflows (set by flows.dispatch); unset, the current flow run's.
SHARED_RUN: ContextVar[str | None] = ContextVar("mattermost_shared_run", default=None)


def pipeline() -> ChannelPipeline:
    """The channel pipeline over this process's resources, for the current flow run."""
    return resources.pipeline(SHARED_RUN.get() or flow_run.get_id() or "local")


@task(name="begin-channel", task_run_name="begin-{channel_id}", **TASK_DEFAULTS)
def begin_channel(
    channel_id: str, kind: RunKind, window: tuple[int, int] | None = None
) -> tuple[str, int]:
    """Wait for the channel's lease, take it, and open its run history row: (lease holder,
    run id). Without a row, the lease is given back at once. Each state-store call has the
    run's retry budget (retries.retry_call), so this task has no retries of its own: they
    would multiply the budget."""
    holder = locks.acquire_channel(channel_id)
    try:
        run_id = retry_call(
            lambda: pipeline().start_run(channel_id, kind, window, flow_run.get_id()),
            resources.settings().connector,
            f"channel {channel_id} run history",
        )
        return holder, run_id
    except BaseException:
        locks.release_channel(channel_id, holder)
        raise


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
    holder: str,
    run_id: int,
    run: ChannelRun | None,
    kind: RunKind,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome everywhere it is shown (run history, OpenCTI work, logs), then
    give the channel's lease back."""
    try:
        result = pipeline().close(channel_id, run_id, run, kind, error, archived)
    finally:
        locks.release_channel(channel_id, holder)
    logger = get_run_logger()
    (logger.error if error else logger.info)(result.summary())
    return result
