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

from typing import Any

from prefect.cache_policies import NO_CACHE

from mattermost_connector.config import ConnectorSettings
from mattermost_connector.retries import delays, retried

# Tasks take pages of posts and bundles: hashing them for a cache key would cost more than the
# work, and results are never reused across runs. See docs/prefect.md.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


def budget(connector: ConnectorSettings) -> dict[str, Any]:
    """Task options: the configured budget (CONNECTOR_DELIVERY_RETRIES, _RETRY_DELAY,
    doubling) for a transient or busy fault, and only for those (`retryable`)."""
    delays_s = delays(connector)
    return {
        "retries": len(delays_s),
        "retry_delay_seconds": delays_s,
        "retry_condition_fn": retryable,
    }


def with_budget(task: Any, connector: ConnectorSettings) -> Any:
    """A copy of `task` with the configured budget (tasks are declared before settings are
    read, so the budget is applied when a run calls them)."""
    return task.with_options(**budget(connector))


def retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: only a transient or busy fault is worth waiting for."""
    try:
        state.result()
    except Exception as error:
        return retried(error)
    return True
