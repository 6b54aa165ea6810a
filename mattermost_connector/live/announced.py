"""Posts a `posted` event announced, kept until a delivery of their channel has taken them.

The event is sent from the master's data as soon as the post is written (app/post.go), while
the listings read a replica (post_store.go, GetReplicaX) that may not have the post yet: the
run the event triggers can find nothing new, and no later event need come. So each announced
post waits here until a run's cursor has passed it; a run that did not take it makes its
channel due again after `first_retry` seconds, then twice as long each time, `attempts` times
in all. Past that, the post is logged and left to the periodic check (`PeriodicCheck`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mattermost_connector.cursor import Cursor

log = logging.getLogger("mattermost_connector.live")

FIRST_RETRY_SECONDS = 1.0
ATTEMPTS = 7  # retries after 1, 2, 4, ... 64 s: about two minutes of replica lag in all


@dataclass
class _Pending:
    create_at: int
    announced_at: float  # monotonic
    tries: int = 0  # runs since the announcement that did not take it
    retry_at: float = math.inf  # when its channel is due again (inf: not scheduled)


class AnnouncedPosts:
    def __init__(
        self,
        *,
        first_retry: float = FIRST_RETRY_SECONDS,
        attempts: int = ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_retry, self.attempts = first_retry, attempts
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, _Pending]] = {}  # channel -> post id -> pending
        self.given_up = 0  # posts still not listed after every retry (tests, logs)

    def announce(self, channel_id: str, post_id: str, create_at: int) -> None:
        with self._lock:
            self._pending.setdefault(channel_id, {}).setdefault(
                post_id, _Pending(create_at, self._clock())
            )

    def forget(self, channel_id: str, post_id: str) -> None:
        """A deleted post: no listing will show it, nothing to wait for."""
        with self._lock:
            self._pending.get(channel_id, {}).pop(post_id, None)

    def waiting(self, channel_id: str) -> set[str]:
        with self._lock:
            return set(self._pending.get(channel_id, {}))

    def confirm(self, channel_id: str, cursor: Cursor | None, run_started: float) -> list[str]:
        """After a run of the channel that started at `run_started` (monotonic) and left
        `cursor` (None: the run did not get that far): forget the posts it took, and schedule
        another run for those announced before it started that it did not take. Returns the
        ids still awaited."""
        now = self._clock()
        with self._lock:
            pending = self._pending.get(channel_id, {})
            for post_id, post in list(pending.items()):
                taken = cursor is not None and not cursor.wants(
                    {"id": post_id, "create_at": post.create_at}
                )
                if taken:
                    del pending[post_id]
                elif post.announced_at <= run_started:
                    post.tries += 1
                    if post.tries > self.attempts:
                        del pending[post_id]
                        self.given_up += 1
                        log.warning(
                            "live: channel %s: post %s was announced but no listing showed it "
                            "after %d tries; the periodic check will look again",
                            channel_id,
                            post_id,
                            self.attempts,
                        )
                        continue
                    post.retry_at = now + self.first_retry * 2 ** (post.tries - 1)
            if not pending:
                self._pending.pop(channel_id, None)
            return sorted(pending)

    def due(self) -> list[str]:
        """Channels whose retry time has come (each once: the run's `confirm` schedules the
        next)."""
        now = self._clock()
        found = []
        with self._lock:
            for channel_id, pending in self._pending.items():
                ready = [post for post in pending.values() if post.retry_at <= now]
                for post in ready:
                    post.retry_at = math.inf
                if ready:
                    found.append(channel_id)
        return found

    def next_retry_in(self) -> float | None:
        """Seconds until the next scheduled retry, None when none is."""
        with self._lock:
            soonest = min(
                (p.retry_at for pending in self._pending.values() for p in pending.values()),
                default=math.inf,
            )
        return None if soonest == math.inf else max(0.0, soonest - self._clock())


class PeriodicCheck:
    """Every channel is due every `period` seconds in live mode, whatever the events: what no
    event made due (a post the replica showed too late for every retry, an event lost without a
    gap showing) is delivered within a period (MATTERMOST_LIVE_CHECK_PERIOD)."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._next = clock() + period

    def due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.period
        return True

    def next_in(self) -> float:
        return max(0.0, self._next - self._clock())
