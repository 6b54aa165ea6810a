"""The connector's deployments: a scheduled sync and an on-demand backfill, served together.

`mattermost-connector serve` runs both from one process (Prefect's `serve`); runs triggered
from the UI or `prefect deployment run` start within the runner's poll interval. For workers
on other machines, deployments/prefect.yaml declares the same two deployments for a work pool.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from mattermost_connector.config import Settings
from mattermost_prefect.flows.backfill import mattermost_backfill
from mattermost_prefect.flows.sync import mattermost_sync

TAGS = ["mattermost", "opencti"]


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
    from prefect import serve

    serve(*deployments(settings))
