"""The retry policy, one per kind of fault (mattermost_connector.errors.Fault), for every task:

- transient (a connection refused, reset or timed out: Mattermost, OpenCTI, RabbitMQ, the state
  store) and busy (a server answering 429/5xx, a broker refusing a message): retried
  CONNECTOR_DELIVERY_RETRIES times, CONNECTOR_DELIVERY_RETRY_DELAY apart, doubling (10, 20,
  40 s by default: 70 s for a service to come back), then the channel fails and the next run
  resumes from its cursor;
- local (disk full, quota, open files): never retried by waiting; the channel fails at once
  with the path and the space needed;
- permanent (a refused token, an inaccessible channel, a 400/403/404, bad configuration):
  never retried.

The Mattermost client first retries its own requests (429 with Retry-After, 5xx, dropped
connections: 5 attempts, with jitter); a task's retries come on top, with the same budget as
every other step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.cache_policies import NO_CACHE

from mattermost_connector.config import ConnectorSettings
from mattermost_connector.retries import delays, retried

# Tasks take pages of posts and bundles: hashing them for a cache key would cost more than the
# work, and results are never reused across runs. See docs/prefect.md.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


def retrying(*delays: float) -> dict[str, Any]:
    """Task options: one retry per delay (seconds) for a transient or busy fault, no caching.
    `with_budget` replaces the delays with the configured budget when the task is called."""
    return {
        "retries": len(delays),
        "retry_delay_seconds": list(delays),
        "retry_condition_fn": retryable,
        **TASK_DEFAULTS,
    }


def with_budget(task: Any, connector: ConnectorSettings) -> Any:
    """`task` with the configured budget (CONNECTOR_DELIVERY_RETRIES, _RETRY_DELAY)."""
    budget = delays(connector)
    return task.with_options(retries=len(budget), retry_delay_seconds=budget)


def retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: only a transient or busy fault is worth waiting for."""
    try:
        state.result()
    except Exception as error:
        return retried(error)
    return True


def apply_budget(connector: ConnectorSettings, tasks: Iterable[Any]) -> None:
    """Give every task of a channel's run the configured budget for transient and busy
    faults, and the retry condition that leaves local and permanent ones alone. Tasks are
    declared before settings are read, so the budget is set when a run starts."""
    budget = delays(connector)
    for each in tasks:
        each.retries = len(budget)
        each.retry_delay_seconds = list(budget)
        each.retry_condition_fn = retryable
