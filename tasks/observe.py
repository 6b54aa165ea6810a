"""Every Prefect API call the connector makes itself: artifacts, run names, reads of runs.

A busy Prefect server (the temporary one on SQLite answers 503 while it writes events) must
never fail a channel. Prefect's client already retries 408/429/502/503 and dropped
connections (PREFECT_CLIENT_MAX_RETRIES, raised for the connector's processes in
mattermost_prefect/cli.py); on top of that each call here gets the run's retry budget
(CONNECTOR_DELIVERY_RETRIES, _RETRY_DELAY) for the same faults. What is only shown to the
user (a progress artifact, a run's name) is then given up with one log line and the channel
goes on; what the run needs (a dispatched channel's result) is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from mattermost_connector.errors import one_line
from mattermost_connector.retries import delays, retry_with

T = TypeVar("T")
log = logging.getLogger("mattermost_connector.prefect_api")

# What a busy or restarting Prefect API answers: worth waiting for, as Prefect's client does.
BUSY_CODES = frozenset({408, 429, 500, 502, 503, 504})


def transient(error: BaseException) -> bool:
    """A refusal or a dropped connection from the Prefect API, not a bad request."""
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in BUSY_CODES
    return isinstance(error, (httpx.TransportError, TimeoutError, ConnectionError))


def call(action: Callable[[], T], what: str, budget: list[float] | None = None) -> T:
    """`action()`, again after each delay of the run's budget while the Prefect API refuses it
    for a while; the last refusal is raised."""
    if budget is None:
        from mattermost_prefect.tasks import resources

        budget = delays(resources.settings().connector)
    return retry_with(action, budget, f"Prefect API, {what}", transient, log)


def shown(action: Callable[[], T], what: str) -> T | None:
    """A call whose only use is what the UI shows: retried like `call`, then, if the API
    still refuses it (or fails in any other way), logged once and given up (None)."""
    try:
        return call(action, what)
    except Exception as error:
        log.warning("Prefect API: %s lost (%s); the run goes on", what, _short(error))
        return None


def _short(error: BaseException) -> str:
    return one_line(error, limit=200, first_line=True)


def create_progress(description: str, key: str, progress: float = 0.0) -> UUID | None:
    from prefect.artifacts import create_progress_artifact

    return shown(
        lambda: create_progress_artifact(progress, key=key, description=description),
        f"progress artifact {key}",
    )


def update_progress(artifact_id: UUID | None, progress: float, description: str | None) -> None:
    if artifact_id is None:  # its creation was lost: nothing to update
        return
    from prefect.artifacts import update_progress_artifact

    shown(
        lambda: update_progress_artifact(artifact_id, progress, description=description),
        "progress update",
    )


def create_table(rows: list[dict[str, Any]], key: str, description: str) -> UUID | None:
    from prefect.artifacts import create_table_artifact

    return shown(
        lambda: create_table_artifact(rows, key=key, description=description),
        f"table artifact {key}",
    )


def create_result_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    """A table the run reads back (a dispatched channel's result): raised if lost."""
    from prefect.artifacts import create_table_artifact

    call(lambda: create_table_artifact(rows, key=key, description=description), key)


def rename_flow_run(run_id: UUID | str, name: str) -> None:
    from prefect.client.orchestration import get_client

    def rename() -> None:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=name)

    shown(rename, f"flow run name {name!r}")


def read_result_artifacts(flow_run_id: UUID, key: str) -> list[Any]:
    """The artifacts `key` of a flow run (a dispatched channel's result): raised if lost."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                )
            )

    return call(read, f"result of flow run {flow_run_id}")


def schedule_deployment_run(deployment_id: UUID, tags: list[str]) -> Any:
    from prefect.client.orchestration import get_client

    def create() -> Any:
        with get_client(sync_client=True) as client:
            return client.create_flow_run_from_deployment(deployment_id, tags=tags)

    return call(create, "start-up run")
