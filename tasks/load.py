"""Load: deliver a bundle to every destination, then, and only then, record it as delivered."""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import task

from mattermost_connector.channel_run import BundleFile, ChannelRun
from mattermost_connector.errors import DeliveryError
from tasks import resources
from tasks.policy import TASK_DEFAULTS, retrying

log = logging.getLogger("mattermost_connector.load")


@task(
    name="load",
    task_run_name="load-{run.channel_id}",
    **retrying(10, 10, 10),
)
def load_bundles(run: ChannelRun, bundles: list[BundleFile]) -> None:
    """Deliver a batch's bundles, up to CONNECTOR_DELIVERY_CONCURRENCY at once (each waits
    for its broker confirms), but record them strictly in order: a bundle, and the cursor
    after it, only once every bundle before it is delivered. A bundle is sent only when the
    one CONNECTOR_DELIVERY_CONCURRENCY places before it is recorded, so a crash leaves at
    most that many delivered but unrecorded (sent again, same ids, by the next run). On a
    failure nothing after it is recorded; a retry skips what was recorded (its spool file is
    gone)."""
    pending = iter([bundle for bundle in bundles if bundle.path.exists()])
    window = resources.settings().connector.delivery_concurrency
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="deliver") as pool:
        sends = deque((b, pool.submit(_send, run, b)) for b in itertools.islice(pending, window))
        cursor = None
        try:
            while sends:
                bundle, sent = sends.popleft()
                sent.result()
                _record(run, bundle)
                cursor = bundle.cursor or cursor
                following = next(pending, None)
                if following is not None:
                    sends.append((following, pool.submit(_send, run, following)))
        finally:
            for _, sent in sends:
                sent.cancel()
    if cursor is not None and run.kind == "sync":
        publish_state(run.channel_id, cursor)  # once per batch: two GraphQL calls each time


def _send(run: ChannelRun, bundle: BundleFile) -> None:
    """Files too large for a message first (the bundle links them), then the bundle. An
    upload that still fails after CONNECTOR_DELIVERY_RETRIES is that file's fate, `failed`
    with its error, not the channel's: the post is delivered without it, and the next run
    fetches and uploads it again (tasks/attachments.posts_missing_files)."""
    connector = resources.settings().connector
    for destination in resources.outputs():
        for upload in bundle.uploads:
            for attempt in range(connector.delivery_retries + 1):
                try:
                    destination.upload(run.work, upload)
                    break
                except DeliveryError as error:
                    if attempt < connector.delivery_retries:
                        time.sleep(connector.delivery_retry_delay * 2**attempt)
                        continue
                    log.warning("%s: left for the next run", error)
                    for row in bundle.attachments:
                        if row["file_id"] == upload.file_id:
                            row.update(status="failed", error=str(error))
    text = bundle.path.read_text(encoding="utf-8")
    for destination in resources.outputs():
        destination.send(run.work, text, bundle.objects, bundle.sequence)


def _record(run: ChannelRun, bundle: BundleFile) -> None:
    """Record posts, attachments and (if the bundle moves it) the cursor, once delivered."""
    resources.store().record_delivery(
        run.cursor_key,
        run.channel_id,
        bundle.cursor,
        bundle.posts,
        len(bundle.posts),
        files=bundle.attachments,
        run_id=run.run_id,
    )
    if bundle.cursor is not None:  # else a retry sends it again: the run's spool keeps it
        bundle.path.unlink(missing_ok=True)
        for upload in bundle.uploads:
            upload.path.unlink(missing_ok=True)


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
