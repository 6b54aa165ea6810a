"""The channel pipeline's steps as Prefect tasks, built from its one table
(mattermost_connector.pipeline.steps.STEPS): one task per row, named after it, with the
configured retry budget applied here, where it is built. Each task passes its arguments
through to the domain function with the run's `Services`; nothing else happens in it. The
two ends of a run, which need more of Prefect, are in tasks/channel_task.py."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import Batch
from mattermost_connector.config import ConnectorSettings
from mattermost_connector.pipeline.ordered import Pending
from mattermost_connector.pipeline.steps import STEPS, Retries, Step, Steps
from mattermost_prefect.tasks import channel_task, report, resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS, budget


def prefect_steps() -> Steps:
    """The steps as Prefect tasks with the configured budget, built once per process (and
    configuration: tasks/resources.py); each runs over this flow run's `Services`."""
    connector = resources.settings().connector
    built = resources.step_tasks(lambda: {step.name: build(step, connector) for step in STEPS})
    return Steps(
        **{name: PrefectCall(each) for name, each in built.items()},
        begin=lambda channel_id, kind, window: channel_task.begin_channel(channel_id, kind, window),
        close=channel_task.close_channel,
        progress=report.channel_progress,
    )


def build(step: Step, connector: ConnectorSettings) -> Task[..., Any]:
    """The task of `step`: its name dashed, each run named after its channel."""
    name = step.name.replace("_", "-")
    parameters = list(inspect.signature(step.function).parameters.values())[1:]
    channel = "run.channel_id" if parameters[0].name == "run" else parameters[0].name
    return task(
        pass_through(step, parameters),
        name=name,
        task_run_name=f"{name}-{{{channel}}}",
        **options(step.retries, connector),
    )


def options(retries: Retries, connector: ConnectorSettings) -> dict[str, Any]:
    """Task options for a retry class: the budget for transient and busy faults (only those:
    `retryable`), or none of its own."""
    if retries == Retries.BUDGET:
        return {**budget(connector), **TASK_DEFAULTS}
    return dict(TASK_DEFAULTS)


def pass_through(step: Step, parameters: list[inspect.Parameter]) -> Callable[..., Any]:
    """`step.function` over the flow run's services, under the step's name and signature
    (less the services): Prefect names task runs and binds arguments by it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return step.function(channel_task.services(), *args, **kwargs)

    call.__name__ = call.__qualname__ = step.name  # Prefect's task key: one per step
    call.__doc__ = step.function.__doc__
    call.__signature__ = inspect.signature(step.function).replace(  # type: ignore[attr-defined]
        parameters=parameters
    )
    return call


class PrefectCall:
    """A step's task as run_channel calls it. Posts, batches, files and bundles cross
    quoted: unquoted, Prefect walks every post of them."""

    def __init__(self, built: Task[..., Any]) -> None:
        self.task = built

    def __call__(self, *args: Any) -> Any:
        return self.task(*_quoted(args))

    def submit(self, *args: Any) -> Pending:
        return self.task.submit(*_quoted(args))


def _quoted(args: tuple[Any, ...]) -> list[Any]:
    return [quote(a) if isinstance(a, list | dict | Batch) else a for a in args]
