"""The two ends of a channel's run as Prefect tasks, written by hand because Prefect needs
more of them than the pass-through steps (tasks/steps.py): the lease and run history opened
under the flow run's id, and the close, which must give the lease back whatever happened.

No retries of their own (Retries.EACH_CALL): each state-store call in them has the run's
budget (retries.retry_call), which a task retry would multiply."""

from __future__ import annotations

from contextvars import ContextVar

from prefect import task
from prefect.runtime import flow_run

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline import steps
from mattermost_connector.pipeline.lease import HeldLease
from mattermost_connector.pipeline.services import Services
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS

# The run whose user cache a channel's tasks share: the sync's, for the channels it runs in its
# own process (set by flows.dispatch); unset, the current flow run's.
SHARED_RUN: ContextVar[str | None] = ContextVar("mattermost_shared_run", default=None)


def services() -> Services:
    """The pipeline's services in this process, for the current flow run."""
    return resources.services(SHARED_RUN.get() or flow_run.get_id() or "local")


@task(name="begin-channel", task_run_name="begin-{channel_id}", **TASK_DEFAULTS)
def begin_channel(
    channel_id: str, kind: RunKind, window: tuple[int, int] | None = None
) -> tuple[HeldLease, int]:
    """Wait for the channel's lease, take it, and open its run history row: (lease, run
    id). Without a row, the lease is given back at once."""
    return steps.begin(services(), channel_id, kind, window, flow_run.get_id())


@task(name="close-channel", task_run_name="close-{channel_id}", **TASK_DEFAULTS)
def close_channel(
    channel_id: str,
    lease: HeldLease,
    run_id: int,
    run: ChannelRun | None,
    kind: RunKind,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome everywhere it is shown (run history, OpenCTI work, logs), then
    give the channel's lease back."""
    return steps.close(services(), channel_id, lease, run_id, run, kind, error, archived)
