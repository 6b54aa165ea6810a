"""Load: deliver a bundle to every destination, then, and only then, record it as delivered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task

from mattermost_connector.channel_run import Bundle, ChannelRun
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retryable


@task(
    name="load",
    task_run_name="load-{run.channel_id}",
    retries=3,
    retry_delay_seconds=[5, 15, 30],
    retry_condition_fn=retryable,
    **TASK_DEFAULTS,
)
def load_bundle(
    run: ChannelRun, bundle: Bundle, cursor: dict[str, Any] | None, posts: list[dict]
) -> None:
    """`cursor` None: the bundle re-delivers known posts (edits, deletions) and moves nothing."""
    for destination in resources.outputs():
        destination.send(run.work, bundle.json)
    store = resources.store()
    if cursor is None:
        store.record_posts(run.channel_id, posts)
        return
    store.save_cursor(run.channel_id, cursor, len(posts), delivered=posts)
    publish_state(run.channel_id, cursor)


def publish_state(channel_id: str, cursor: dict[str, Any]) -> None:
    """Mirror the cursor where operators look (the connector state in OpenCTI's UI)."""
    state = {"cursor": cursor, "updated_at": datetime.now(tz=UTC).isoformat()}
    for destination in resources.outputs():
        destination.save_state(channel_id, state)


@task(name="advance-cursor", task_run_name="advance-{run.channel_id}", **TASK_DEFAULTS)
def advance_cursor(run: ChannelRun, cursor: dict[str, Any]) -> None:
    """Move past posts that deliver nothing (system messages, when skipped)."""
    resources.store().save_cursor(run.channel_id, cursor)
    publish_state(run.channel_id, cursor)
