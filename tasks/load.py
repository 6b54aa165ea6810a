"""Load: deliver a bundle to every destination, then, and only then, record it as delivered."""

from __future__ import annotations

from typing import Any

from prefect import task

from mattermost_connector.channel_run import BundleFile, ChannelRun
from mattermost_connector.cursor import Cursor
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import TASK_DEFAULTS, retrying, with_budget


@task(
    name="load",
    task_run_name="load-{run.channel_id}",
    **retrying(10, 10, 10),
)
def load_bundles(run: ChannelRun, bundles: list[BundleFile]) -> None:
    """Deliver a batch's bundles, up to CONNECTOR_DELIVERY_CONCURRENCY at once, recorded
    strictly in order (ChannelPipeline.load, pipeline.ordered.deliver_in_order). On a failure
    nothing after it is recorded; a retry skips what was recorded."""
    pipeline().load(run, bundles, record=lambda run, bundle: _record(run, bundle))


def _record(run: ChannelRun, bundle: BundleFile) -> None:
    """Record a delivered bundle (ChannelPipeline.record); a seam for tests to slow it."""
    pipeline().record(run, bundle)


def configured_load() -> Any:
    """The load task with CONNECTOR_DELIVERY_RETRIES and CONNECTOR_DELIVERY_RETRY_DELAY."""
    return with_budget(load_bundles, resources.settings().connector)


@task(name="advance-cursor", task_run_name="advance-{run.channel_id}", **TASK_DEFAULTS)
def advance_cursor(run: ChannelRun, cursor: Cursor) -> None:
    """Move past posts that deliver nothing (system messages, when skipped)."""
    pipeline().advance(run, cursor)
