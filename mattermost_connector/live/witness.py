"""Edits and deletions witnessed on the WebSocket without a gap.

While the listener stays connected without a gap (a resumed connection whose seqs follow on
counts as no gap) since a channel's last change scan, the `post_edited` and `post_deleted`
events it received are that channel's changes since then. Every gap (a new connection id, a
skipped seq, the listener stopping) starts a new epoch: a channel whose last scan was in an
earlier epoch needs the REST change scan again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from mattermost_connector.live.events import POST_DELETED, POST_EDITED, LiveEvent


@dataclass(frozen=True)
class Witnessed:
    """A channel's changes seen since its last scan (post id -> post as the event had it),
    and the epoch they were seen in."""

    channel_id: str
    epoch: int
    complete: bool  # no gap since the channel's last scan: these are all its changes
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)


class ChangeWitness:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._scanned: dict[str, int] = {}  # channel -> epoch of its last scan
        self._changed: dict[str, dict[str, dict[str, Any]]] = {}

    def interrupted(self) -> None:
        with self._lock:
            self._epoch += 1
            self._changed.clear()

    def saw(self, event: LiveEvent) -> None:
        if event.name not in (POST_EDITED, POST_DELETED) or not event.post:
            return
        if not event.channel_id or not event.post.get("id"):
            return
        with self._lock:
            self._changed.setdefault(event.channel_id, {})[event.post["id"]] = event.post

    def snapshot(self, channel_id: str) -> Witnessed:
        """What was seen for the channel so far (taken before its run scans)."""
        with self._lock:
            return Witnessed(
                channel_id,
                self._epoch,
                self._scanned.get(channel_id) == self._epoch,
                dict(self._changed.get(channel_id, {})),
            )

    def scanned(self, seen: Witnessed) -> None:
        """The channel's run completed its change scan after `seen` was taken: what it held is
        delivered, and, if no gap came since, the events from now on are its changes."""
        with self._lock:
            changed = self._changed.get(seen.channel_id, {})
            for post_id, post in seen.posts.items():
                if changed.get(post_id) is post:
                    del changed[post_id]
            if seen.epoch == self._epoch:
                self._scanned[seen.channel_id] = seen.epoch
