"""A channel's steps as plain calls when the channel itself is a task run.

On the embedded default the sync runs each channel as a task run of its own (flows/dispatch.py):
the channel's state, logs and progress are that task run's. Its steps (open, read, transform,
load, ...) then run as plain functions inside it, with the same retries as their tasks (count,
delays, the condition that leaves local and permanent faults alone), instead of one task run
each: a task run is an API round trip or more, which costs more than a small channel's work.
Outside a channel task run (a channel's own flow run, on a work pool), `step` is the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from typing import Any

from mattermost_connector.errors import one_line
from mattermost_connector.retries import retried

log = logging.getLogger("mattermost_connector.retries")

# The executor of the steps submitted within the current channel task run; unset outside one.
_INLINE: ContextVar[ThreadPoolExecutor | None] = ContextVar("mattermost_inline", default=None)


@contextmanager
def inline_steps() -> Any:
    """Within: every `step(task)` is a plain retried call; submitted steps (read-ahead, load)
    run on a pool of this channel's own, shut down when the channel ends."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="channel-step")
    token = _INLINE.set(pool)
    try:
        yield
    finally:
        _INLINE.reset(token)
        pool.shutdown(wait=True)


def inline() -> bool:
    return _INLINE.get() is not None


def step(task: Any) -> Any:
    """The task, or, within a channel task run, the same step as a plain call."""
    pool = _INLINE.get()
    return task if pool is None else _Plain(task, pool)


class _Plain:
    """A task's function called directly, retried as the task would be."""

    def __init__(self, task: Any, pool: ThreadPoolExecutor) -> None:
        self.task, self.pool = task, pool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return run_retried(self.task, _plain(args), _plain(kwargs))

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        context = copy_context()  # the task run's logger and the run's settings
        return self.pool.submit(context.run, run_retried, self.task, _plain(args), _plain(kwargs))


def _plain(values: Any) -> Any:
    """Arguments as the task's function would get them: quote() and the like unwrapped."""
    if isinstance(values, dict):
        return {name: _unwrapped(value) for name, value in values.items()}
    return tuple(_unwrapped(value) for value in values)


def _unwrapped(value: Any) -> Any:
    """A Prefect annotation's value (quote, allow_failure), else the value itself."""
    if type(value).__module__ == "prefect.utilities.annotations":
        return value.unwrap()
    return value


def retry_delays(task: Any) -> list[float]:
    """The task's retry delays, one per retry (Prefect repeats the last, or a single one)."""
    retries = int(task.retries or 0)
    delays = task.retry_delay_seconds
    if delays is None:
        return [0.0] * retries
    if not isinstance(delays, (list, tuple)):
        return [float(delays)] * retries
    if not delays:
        return [0.0] * retries
    return [float(delays[min(i, len(delays) - 1)]) for i in range(retries)]


def run_retried(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`task.fn(*args, **kwargs)`, again after each of the task's delays while it fails with
    a fault the task would retry (transient or busy; every fault if it has no condition)."""
    waits = retry_delays(task)
    condition: Callable[..., bool] | None = task.retry_condition_fn
    for attempt in range(len(waits) + 1):
        try:
            return task.fn(*args, **kwargs)
        except Exception as error:
            if attempt == len(waits) or (condition is not None and not retried(error)):
                raise
            log.info(
                "%s: %s; again in %gs",
                task.name,
                one_line(error, limit=200, first_line=True),
                waits[attempt],
            )
            time.sleep(waits[attempt])
    raise AssertionError("unreachable")
