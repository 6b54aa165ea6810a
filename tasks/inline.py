"""A channel's steps as plain calls when the channel itself is a task run.

On the embedded default the sync runs each channel as a task run of its own (flows/dispatch.py):
the channel's state, logs and progress are that task run's. Its steps (the rows of
pipeline.steps.STEPS) then run as plain calls inside it, with the same retries as their tasks
(the run's budget for transient and busy faults, none for the others), instead of one task run
each: a task run is an API round trip or more, which costs more than a small channel's work.
A channel run as its own flow run (on a work pool) keeps the tasks (tasks/steps.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from typing import Any

from mattermost_connector.channel_run import ChannelRun
from mattermost_connector.config import ConnectorSettings
from mattermost_connector.pipeline import steps
from mattermost_connector.pipeline.ordered import Pending
from mattermost_connector.pipeline.services import Services
from mattermost_connector.pipeline.steps import STEPS, Retries, Step, Steps
from mattermost_connector.retries import retry_call

# Set while a channel runs inline (the pool its submitted steps run on): whose progress is
# whose (tasks/report.py) depends on it.
_RUNNING: ContextVar[ThreadPoolExecutor | None] = ContextVar("mattermost_inline", default=None)


def inline() -> bool:
    """Whether the current code runs within a channel's task run, its steps inline."""
    return _RUNNING.get() is not None


@contextmanager
def inline_steps(
    services: Callable[[], Services],
    connector: ConnectorSettings,
    flow_run_id: str | None,
    progress: Callable[[ChannelRun], None],
) -> Iterator[Steps]:
    """The steps of one channel's run as retried plain calls; the submitted ones (the read
    ahead, the load) on a pool of the channel's own, shut down when the channel ends."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="channel-step")
    token = _RUNNING.set(pool)
    try:
        yield Steps(
            **{step.name: Inline(step, services, connector, pool) for step in STEPS},
            begin=lambda channel_id, kind, window: steps.begin(
                services(), channel_id, kind, window, flow_run_id
            ),
            close=lambda *args: steps.close(services(), *args),
            progress=progress,
        )
    finally:
        _RUNNING.reset(token)
        pool.shutdown(wait=True)


class Inline:
    """A step called in place, retried as its task would be (Retries.BUDGET: the run's budget
    for a transient or busy fault; Retries.EACH_CALL: no retry of its own)."""

    def __init__(
        self,
        step: Step,
        services: Callable[[], Services],
        connector: ConnectorSettings,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.step, self.services, self.connector, self.pool = step, services, connector, pool

    def __call__(self, *args: Any) -> Any:
        def action() -> Any:
            return self.step.function(self.services(), *args)

        if self.step.retries == Retries.BUDGET:
            return retry_call(action, self.connector, self.step.name.replace("_", "-"))
        return action()

    def submit(self, *args: Any) -> Pending:
        """Run beside the caller, in its context (the task run's logger, the run's ids)."""
        return self.pool.submit(copy_context().run, self, *args)
