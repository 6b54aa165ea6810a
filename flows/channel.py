"""One channel's run, named after the channel: a task run of the sync or backfill that starts
it (`mattermost_channel_task`, the default, in the same process), or, with CONNECTOR_WORK_POOL,
its own flow run of the `mattermost-channel/channel` deployment on a work pool, which a
worker on any machine can take (`mattermost_channel`)."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, task
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.errors import (
    AuthenticationError,
    MattermostError,
    RunFailed,
    ServerUnavailable,
    one_line,
    stops_the_run,
)
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.pipeline.run import run_channel
from mattermost_connector.pipeline.steps import Steps
from mattermost_prefect.flows.names import channel_flow_run_name, channel_run_name
from mattermost_prefect.flows.quiet import quiet_expected_failures
from mattermost_prefect.tasks import observe, resources
from mattermost_prefect.tasks.channel_task import services
from mattermost_prefect.tasks.inline import inline_steps
from mattermost_prefect.tasks.policy import TASK_DEFAULTS
from mattermost_prefect.tasks.report import channel_progress, forget_progress
from mattermost_prefect.tasks.steps import prefect_steps

quiet_expected_failures()

CHANNEL_FLOW = "mattermost-channel"
CHANNEL_DEPLOYMENT = "channel"
# A channel as a task run of the sync that runs it (the embedded default).
CHANNEL_TASK = "mattermost-channel"
# The state names of a channel run that stops the whole run with it (errors.stops_the_run):
# the token refused, or Mattermost not answering after the retries.
TOKEN_REFUSED = "TokenRefused"
SERVER_UNREACHABLE = "ServerUnreachable"
# Where a dispatched channel run leaves its report row for the sync on another machine.
RESULT_ARTIFACT = "mattermost-channel-result"


@flow(name=CHANNEL_FLOW, flow_run_name=channel_flow_run_name, validate_parameters=True)
def mattermost_channel(
    channel_id: str,
    kind: RunKind = RunKind.SYNC,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> State[Any]:
    """One channel's sync (or a backfill's window), holding its lease. Completed with its
    report row, Failed with the row inside a RunFailed, or Failed as TokenRefused."""
    state, result = channel_outcome(prefect_steps(), channel_id, kind, window, start_timestamp)
    if result is not None and result.name:  # known now, if the state store did not know it
        name = channel_run_name(channel_id, kind, window, result.name)
        if flow_run.get_id() and flow_run.get_name() != name:
            observe.rename_flow_run(flow_run.get_id(), name)
    if result is not None and deployment.get_id():  # dispatched: the sync reads the row back
        observe.create_result_table(
            [_plain(result.row())], key=RESULT_ARTIFACT, description=result.summary()
        )
    return state


@task(name=CHANNEL_TASK, task_run_name="{channel_id}", **TASK_DEFAULTS)
def mattermost_channel_task(
    channel_id: str,
    kind: RunKind = RunKind.SYNC,
    window: tuple[int, int] | None = None,
    start_timestamp: int | None = None,
) -> State[Any]:
    """The same channel run as a task run of the sync (the embedded default: flows/dispatch),
    its steps plain calls inside it (tasks/inline.py): the channel's state, logs and progress
    are this task run's, for a fraction of a flow run's API round trips."""
    connector = resources.settings().connector
    with inline_steps(services, connector, flow_run.get_id(), channel_progress) as steps:
        state, _ = channel_outcome(steps, channel_id, kind, window, start_timestamp)
    # Named before it starts (flows/names.named_before_running): Prefect records a task run
    # from the events its engine sends, which would overwrite a rename made meanwhile.
    return state


def channel_outcome(
    steps: Steps,
    channel_id: str,
    kind: RunKind,
    window: tuple[int, int] | None,
    start_timestamp: int | None,
) -> tuple[State[Any], ChannelResult | None]:
    """The channel run's final state, and its result unless what stopped it stops the whole
    run (a refused token, a server that does not answer: a state named after it)."""
    completed = False
    try:
        result = run_channel(steps, channel_id, kind, window, start_timestamp)
        completed = result.ok
    except MattermostError as error:  # run_channel raises only what stops the whole run
        if not stops_the_run(error):
            raise
        reason = one_line(error)
        name = TOKEN_REFUSED if isinstance(error, AuthenticationError) else SERVER_UNREACHABLE
        return Failed(name=name, message=reason, data=RunFailed(reason)), None
    finally:
        forget_progress(completed)
    row = result.row()
    if result.ok:
        return Completed(message=result.summary(), data=row), result
    return Failed(message=result.summary(), data=RunFailed(result.summary(), [row])), result


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """The row as JSON has it (enums as their values), so that it reads back the same."""
    return json.loads(json.dumps(row, default=str))


def channel_result(state: State[Any], channel_id: str, kind: RunKind) -> ChannelResult:
    """The channel's result from its run's final state (in this process): raises what
    stopped it when it stops the whole run."""
    raise_if_stopping(state)
    value = state.result(raise_on_failure=False)
    if isinstance(value, RunFailed) and value.report:
        return ChannelResult.from_row(value.report[0])
    if isinstance(value, dict):
        return ChannelResult.from_row(value)
    return crashed(channel_id, kind, state)


def raise_if_stopping(state: State[Any] | None) -> None:
    """Raise again, from its state's name, what stopped a channel run and stops the whole
    run: the sync reads a dispatched run's state from the Prefect API, not its exception."""
    if state is None:
        return
    if state.name == TOKEN_REFUSED:
        raise AuthenticationError(state.message or "Mattermost refused the token")
    if state.name == SERVER_UNREACHABLE:
        raise ServerUnavailable(state.message or "Mattermost did not answer", reachable=False)


def crashed(channel_id: str, kind: RunKind, state: State[Any] | None) -> ChannelResult:
    """A channel run that ended without a result (crashed, cancelled): failed, with why."""
    reason = (state.message if state else None) or "the channel's flow run left no result"
    label = f"{state.name}: " if state is not None else ""
    return ChannelResult(channel_id, None, kind, RunStatus.FAILED, error=f"{label}{reason}")
