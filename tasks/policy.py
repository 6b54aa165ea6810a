"""Retry policy shared by the tasks: never retry what cannot get better by waiting."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from mattermost_connector.errors import (
    AuthenticationError,
    ChannelNotAccessible,
    ConfigError,
    MalformedPost,
    MattermostError,
)

FINAL_ERRORS = (AuthenticationError, ChannelNotAccessible, ConfigError, MalformedPost)
# Answers that asking again cannot change: a malformed request, refused access, nothing there.
FINAL_STATUSES = frozenset({400, 403, 404})

# Tasks take pages of posts and bundles: hashing them for a cache key would cost more than the
# work, and results are never reused across runs. See docs/prefect.md.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


def retrying(*delays: float) -> dict[str, Any]:
    """Task options: one retry per delay (seconds), never for a final error, no caching."""
    return {
        "retries": len(delays),
        "retry_delay_seconds": list(delays),
        "retry_condition_fn": retryable,
        **TASK_DEFAULTS,
    }


def retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: a bad token, an inaccessible channel or any 400/403/404 fails
    at once (the client already retried what may pass: 5xx, 429, dropped connections)."""
    try:
        state.result()
    except FINAL_ERRORS:
        return False
    except MattermostError as error:
        return error.status not in FINAL_STATUSES
    except Exception:
        return True
    return True
