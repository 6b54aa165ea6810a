"""Edits and deletions witnessed on the WebSocket without a gap.

While the listener stays connected without a gap (a resumed connection whose seqs follow on
counts as no gap) since a channel's last run opened, the post events it received since are
that channel's changes: its next change scan takes them instead of `since`, whose 1,000-row
cap forces a full check of every post on a busy channel. Every gap (a new connection id, a
skipped seq, the listener stopping) starts a new epoch: a channel whose last scan was in an
earlier epoch needs the REST change scan again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mattermost_connector.live.events import POST_DELETED, POST_EVENTS, LiveEvent


@dataclass(frozen=True)
class Witnessed:
    """A channel's changes seen since its last scan (post id -> post as the event had it),
    and the epoch they were seen in."""

    channel_id: str
    epoch: int
    complete: bool  # no gap since the channel's last scan: these are all its changes
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)


def _now_ms() -> int:
    return int(time.time() * 1000)


class ChangeWitness:
    def __init__(self, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._lock = threading.Lock()
        self._clock_ms = clock_ms
        self._epoch = 0
        self._scanned: dict[str, int] = {}  # channel -> epoch of its last scan
        self._changed: dict[str, dict[str, dict[str, Any]]] = {}
        self._scanning: dict[str, Witnessed] = {}  # channel -> snapshot its run scanned with
        self._opened: dict[str, int] = {}  # channel -> epoch its run opened in

    def interrupted(self) -> None:
        """A gap: what was seen is no longer all there is (the REST scan takes over)."""
        with self._lock:
            self._epoch += 1
            self._changed.clear()

    def saw(self, event: LiveEvent) -> None:
        """Keep the post of a post event as `since` would list it: a `post_deleted` event
        carries the post as read before the deletion, so it is marked deleted now. New posts
        are kept too: one created behind the cursor is found among them, as in `since`."""
        post = event.post
        if event.name not in POST_EVENTS or not post or not event.channel_id:
            return
        if not post.get("id") or not isinstance(post.get("update_at"), int):
            return
        if event.name == POST_DELETED:
            at = max(self._clock_ms(), post["update_at"])
            post = {**post, "delete_at": at, "update_at": at}
        with self._lock:
            self._changed.setdefault(event.channel_id, {})[post["id"]] = post

    def snapshot(self, channel_id: str) -> Witnessed:
        """What was seen for the channel so far (taken before its run scans)."""
        with self._lock:
            return Witnessed(
                channel_id,
                self._epoch,
                self._scanned.get(channel_id) == self._epoch,
                dict(self._changed.get(channel_id, {})),
            )

    def opened(self, channel_id: str) -> None:
        """A channel's run opened: if no gap comes before it commits its changes, what it
        delivered and found, and the events from here on, are all the channel's changes."""
        with self._lock:
            self._opened[channel_id] = self._epoch

    def begin_scan(self, channel_id: str) -> Witnessed:
        """That run is about to scan its changes: what was seen until now."""
        seen = self.snapshot(channel_id)
        with self._lock:
            self._scanning[channel_id] = seen
        return seen

    def end_scan(self, channel_id: str) -> None:
        """That run committed its changes: what its scan saw is delivered, and, without a gap
        since it opened, the events from now on are the channel's changes."""
        with self._lock:
            seen = self._scanning.pop(channel_id, None)
            opened = self._opened.pop(channel_id, None)
            changed = self._changed.get(channel_id, {})
            for post_id, post in (seen.posts if seen else {}).items():
                if changed.get(post_id) is post:
                    del changed[post_id]
            if opened == self._epoch:
                self._scanned[channel_id] = opened
