"""The connector's deployments: a scheduled sync and an on-demand backfill, served together.

`mattermost-connector serve` runs both from one process (Prefect's `serve`); runs triggered
from the UI or `prefect deployment run` start within the runner's poll interval. For workers
on other machines, deployments/prefect.yaml declares the same two deployments for a work pool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from mattermost_connector.config import Settings
from mattermost_prefect.deployments.forked_runs import start_runs_forked
from mattermost_prefect.flows.backfill import mattermost_backfill
from mattermost_prefect.flows.sync import mattermost_sync

TAGS = ["mattermost", "opencti"]
log = logging.getLogger("mattermost_connector.serve")


def deployments(settings: Settings) -> list[Any]:
    sync = mattermost_sync.to_deployment(
        name="sync",
        interval=settings.connector.run_every,
        parameters={"channel_ids": None, "start_timestamp": None},
        # a sync still running when the next one is due: the next one is dropped, not stacked
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        description="Every configured channel from its cursor: new posts, edits, deletions.",
        tags=TAGS,
    )
    backfill = mattermost_backfill.to_deployment(
        name="backfill",
        description="One channel's posts created in [start, end): ISO 8601 or epoch seconds.",
        tags=TAGS,
    )
    return [sync, backfill]


def serve_all(settings: Settings) -> None:
    """Prefect's `serve`, plus a sync at start-up: the schedule's first run would otherwise
    come a whole CONNECTOR_RUN_EVERY later."""
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    start_runs_forked()  # each run forks from a process that imported the connector once
    runner = Runner(pause_on_shutdown=True)
    sync, *others = deployments(settings)
    sync_id = runner.add_deployment(sync)
    for deployment in others:
        runner.add_deployment(deployment)
    start_up_sync(sync_id)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        log.info("serve: stopped")


def start_up_sync(deployment_id: UUID) -> None:
    """A run of the sync deployment due now, which the runner starts at once."""
    from mattermost_prefect.tasks import observe

    run = observe.schedule_deployment_run(deployment_id, tags=["start-up"])
    log.info("serve: start-up sync scheduled (flow run %s)", run.id)
