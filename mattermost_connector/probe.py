"""The no-op fast path of a sync: find, for many channels at once, those with nothing to do,
and finish them on the spot; only the others go through the channel pipeline.

A channel is unchanged when, with two requests at most (its metadata, which the discovery
listing may already hold, and its `since` scan):
- its `last_post_at` is not past the cursor and its `total_msg_count` did not grow since the
  last check (no new post, none created behind the cursor: the listing is skipped);
- `since` from its change watermark was not cut at 1,000 rows and shows nothing to deliver
  again (`changes.judge_since`, as the pipeline's own check);
- no file is waiting to be fetched again, and the channel was synced before.
Its change watermark then moves on (conditionally: never past a run holding its lease or
having moved its cursor), and a run-history row says "unchanged". Anything else, including an
error, sends the channel to the full pipeline, which reports it properly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mattermost_connector.changes import CHANGES_MARGIN_MS, judge_since, scan_since
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import (
    AuthenticationError,
    MattermostError,
    ServerUnavailable,
    one_line,
)
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.state import StateStore

log = logging.getLogger("mattermost_connector.probe")

PROBE_THREADS = 8  # requests in flight at once: enough to hide latency, gentle on the server

Channel = dict[str, Any]


@dataclass
class ProbeResult:
    """Channels found unchanged (id -> cursor before, cursor after) and those due for the full
    pipeline (id -> why, for the log)."""

    unchanged: dict[str, tuple[Cursor, Cursor]] = field(default_factory=dict)
    due: dict[str, str] = field(default_factory=dict)


def nothing_new(cursor: Cursor, channel: Mapping[str, Any]) -> bool:
    """No post after the cursor and none behind it: `last_post_at` (the newest post's
    `create_at`) not past the cursor's millisecond, and the message count as the last check
    left it (its count, plus the posts it listed that the count did not hold yet)."""
    if cursor.messages is None:
        return False
    count, _, ahead = cursor.messages
    return (
        int(channel.get("last_post_at") or 0) <= cursor.boundary_ms
        and int(channel.get("total_msg_count") or 0) == count + ahead
    )


def probe_one(
    client: MattermostClient,
    store: StateStore,
    channel_id: str,
    cursor: Cursor,
    channel: Channel | None,
    *,
    start_ms: int,
    include_system: bool,
) -> tuple[Channel | None, str | None]:
    """The channel as read, and None if it is unchanged, else why it is due."""
    if channel is None:
        channel = client.channel(channel_id)
    if not nothing_new(cursor, channel):
        return channel, "new posts"
    since = cursor.changes_ms
    assert since is not None
    verdict = judge_since(
        scan_since(client, channel_id, since),
        store.delivered,
        since,
        opened_at=cursor,
        start_ms=start_ms,
        include_system=include_system,
        msg_count=int(channel.get("total_msg_count") or 0),
        listed=0,
        last_post_at=int(channel.get("last_post_at") or 0),
    )
    if verdict.full_check:
        return channel, f"full check ({verdict.full_check})"
    if verdict.stale or verdict.behind:
        return channel, "edits, deletions or posts behind the cursor"
    return channel, None


def probe_channels(
    client: MattermostClient,
    store: StateStore,
    channel_ids: list[str],
    listed: Mapping[str, Channel],
    *,
    server_now_ms: int,
    start_ms: int,
    include_system: bool,
    max_attachment_size: int,
    threads: int = PROBE_THREADS,
) -> ProbeResult:
    """Probe every channel (concurrently), then finish the unchanged ones in bulk: their
    watermarks moved to `server_now_ms` less the margin (a time read before any probe)."""
    result = ProbeResult()
    cursors = store.cursors_for(channel_ids)
    waiting_files = store.channels_missing_files(channel_ids, max_attachment_size)
    candidates = []
    for channel_id in channel_ids:
        cursor = cursors.get(channel_id)
        if cursor is None or cursor.changes_ms is None:
            result.due[channel_id] = "first sync"
        elif channel_id in waiting_files:
            result.due[channel_id] = "files to fetch again"
        else:
            candidates.append((channel_id, cursor))

    def probe(item: tuple[str, Cursor]) -> tuple[str, Cursor, Channel | None, str | None]:
        channel_id, cursor = item
        try:
            channel, why = probe_one(
                client,
                store,
                channel_id,
                cursor,
                listed.get(channel_id),
                start_ms=start_ms,
                include_system=include_system,
            )
        except AuthenticationError:
            raise
        except MattermostError as error:
            if isinstance(error, ServerUnavailable):  # after the client's retries: the
                raise  # run's failure, once, not each channel's in turn
            # a refusal of this channel: the pipeline meets it again and reports it
            return channel_id, cursor, None, f"probe failed: {one_line(error)}"
        return channel_id, cursor, channel, why

    moves = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for channel_id, cursor, channel, why in pool.map(probe, candidates):
            if why is not None or channel is None:
                result.due[channel_id] = why or "unknown"
                continue
            moves.append((channel_id, cursor, watermarked(cursor, channel, server_now_ms)))
    moved = store.advance_watermarks(moves)
    for channel_id, before, after in moves:
        if channel_id in moved:
            result.unchanged[channel_id] = (before, after)
        else:
            result.due[channel_id] = "another run holds it or moved its cursor"
    return result


def watermarked(cursor: Cursor, channel: Mapping[str, Any], server_now_ms: int) -> Cursor:
    """The cursor of an unchanged channel once checked at `server_now_ms`: the same position,
    changes looked for from then (less the margin), the channel's counters as read."""
    return Cursor(
        cursor.boundary_ms,
        cursor.boundary_ids,
        cursor.anchor_id,
        changes_ms=max(server_now_ms - CHANGES_MARGIN_MS, cursor.changes_ms or 0),
        messages=(
            int(channel.get("total_msg_count") or 0),
            int(channel.get("last_post_at") or 0),
            0,
        ),
    )
