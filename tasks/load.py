"""Load: deliver a bundle to every destination, then, and only then, record it as delivered."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import task

from mattermost_connector.channel_run import BundleFile, ChannelRun
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retrying


@task(
    name="load",
    task_run_name="load-{run.channel_id}",
    **retrying(10, 10, 10),
)
def load_bundles(run: ChannelRun, bundles: list[BundleFile]) -> None:
    """Deliver a batch's bundles, up to CONNECTOR_DELIVERY_CONCURRENCY at once (each waits
    for its broker confirms), but record them strictly in order: a bundle, and the cursor
    after it, only once every bundle before it is delivered. On a failure nothing after it
    is recorded; a retry skips what was recorded (its spool file is gone)."""
    pending = [bundle for bundle in bundles if bundle.path.exists()]
    workers = min(resources.settings().connector.delivery_concurrency, len(pending)) or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
        sends = [pool.submit(_send, run, bundle) for bundle in pending]
        try:
            for bundle, sent in zip(pending, sends, strict=True):
                sent.result()
                _record(run, bundle)
        finally:
            for sent in sends:
                sent.cancel()


def _send(run: ChannelRun, bundle: BundleFile) -> None:
    text = bundle.path.read_text(encoding="utf-8")
    for destination in resources.outputs():
        destination.send(run.work, text)


def _record(run: ChannelRun, bundle: BundleFile) -> None:
    """Record posts, attachments and (if the bundle moves it) the cursor, once delivered."""
    store = resources.store()
    store.record_attachments(run.channel_id, bundle.attachments, run.run_id)
    if bundle.cursor is None:
        store.record_posts(run.channel_id, bundle.posts)
        return
    store.save_cursor(
        run.cursor_key,
        bundle.cursor,
        len(bundle.posts),
        delivered=bundle.posts,
        channel_id=run.channel_id,
    )
    if run.kind == "sync":
        publish_state(run.channel_id, bundle.cursor)
    bundle.path.unlink(missing_ok=True)


def configured_load() -> Any:
    """The load task with CONNECTOR_DELIVERY_RETRIES and CONNECTOR_DELIVERY_RETRY_DELAY."""
    connector = resources.settings().connector
    delays = [connector.delivery_retry_delay * 2**n for n in range(connector.delivery_retries)]
    return load_bundles.with_options(retries=connector.delivery_retries, retry_delay_seconds=delays)


def publish_state(channel_id: str, cursor: dict[str, Any]) -> None:
    """Mirror the cursor where operators look (the connector state in OpenCTI's UI)."""
    state = {"cursor": cursor, "updated_at": datetime.now(tz=UTC).isoformat()}
    for destination in resources.outputs():
        destination.save_state(channel_id, state)


@task(name="advance-cursor", task_run_name="advance-{run.channel_id}", **TASK_DEFAULTS)
def advance_cursor(run: ChannelRun, cursor: dict[str, Any]) -> None:
    """Move past posts that deliver nothing (system messages, when skipped)."""
    resources.store().save_cursor(run.cursor_key, cursor)
    if run.kind == "sync":
        publish_state(run.channel_id, cursor)
