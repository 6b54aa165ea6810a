"""Load: deliver a bundle to every destination, then, and only then, advance the cursor."""

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
def load_bundle(run: ChannelRun, bundle: Bundle, cursor: dict[str, Any], posts: int) -> None:
    for destination in resources.outputs():
        destination.send(run.work, bundle.json)
    if run.kind == "sync":
        resources.store().save_cursor(run.channel_id, cursor, posts)
        state = {"cursor": cursor, "updated_at": datetime.now(tz=UTC).isoformat()}
        for destination in resources.outputs():
            destination.save_state(run.channel_id, state)
