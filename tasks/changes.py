"""Edits and deletions of delivered posts, and posts found behind the cursor: `since` when it
can be trusted, else a full check (ChannelPipeline.scan_changes and the steps after it)."""

from __future__ import annotations

from prefect import get_run_logger, task

from mattermost_connector.changes import FullCheck
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.cursor import Cursor
from mattermost_prefect.tasks.channel import pipeline
from mattermost_prefect.tasks.policy import TASK_DEFAULTS, retrying

RETRIES = retrying(2, 10, 30)


@task(name="scan-changes", task_run_name="changes-{run.channel_id}", **RETRIES)
def scan_changes(run: ChannelRun) -> tuple[Batch | None, str | None]:
    """Posts edited or deleted since the watermark, and posts `since` shows behind the cursor;
    no batch when a full check is needed (`since` may have been cut, or the channel's message
    count grew by more than the posts seen), with why and what would avoid it."""
    verdict, batch = pipeline().scan_changes(run)
    logger = get_run_logger()
    if verdict.full_check == FullCheck.CAPPED:
        logger.warning(
            "channel %s: 1000 or more changes since the last run; checking every post",
            run.channel_id,
        )
    elif verdict.full_check == FullCheck.UNCOUNTED:
        logger.warning(
            "channel %s: %d more posts counted by the server than listed since the last run "
            "(created with an earlier time, or imported); checking every post",
            run.channel_id,
            verdict.missing,
        )
    elif verdict.behind:
        logger.info(
            "channel %s: %d posts found behind the cursor (created with an earlier time)",
            run.channel_id,
            len(verdict.behind),
        )
    return batch, verdict.note


@task(name="reconcile", task_run_name="reconcile-{run.channel_id}", **RETRIES)
def reconcile_batch(run: ChannelRun, position: Cursor) -> Batch:
    """One stretch of the complete listing, compared with what was delivered
    (ChannelPipeline.reconcile_batch)."""
    return pipeline().reconcile_batch(run, position)


@task(name="mark-listed", task_run_name="mark-listed-{run.channel_id}", **TASK_DEFAULTS)
def mark_listed(run: ChannelRun, post_ids: list[str]) -> None:
    """Posts the complete listing returned and this run delivered for the first time: seen
    by it, so its sweep does not take them for deleted ones."""
    pipeline().mark_listed(run, post_ids)


@task(name="sweep", task_run_name="sweep-{run.channel_id}", **RETRIES)
def sweep_batch(run: ChannelRun) -> Batch:
    """Delivered posts the complete listing no longer returned: deleted (or purged)."""
    return pipeline().sweep_batch(run)


@task(name="commit-changes", task_run_name="commit-{run.channel_id}", **TASK_DEFAULTS)
def commit_changes(run: ChannelRun) -> Cursor:
    """Move the change watermark to this run's start (ChannelPipeline.commit_changes)."""
    return pipeline().commit_changes(run)
