"""Channels due for a delivery: events mark them, the delivery loop takes them.

Events only trigger: what a run delivers comes from the channel's REST cursor and change scan.
So events for one channel coalesce into one run: a channel is taken `settle` seconds after its
first event (the rest of a burst's first moment joins it), and events arriving while it runs
make one more run, not one per event. A busy channel (its last run was caused by `busy_events`
events or more) is taken at most every `busy_interval` seconds: a burst of 1,000 posts in
10 s makes a handful of runs, while a post a second still goes out within `settle`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SETTLE_SECONDS = 0.1
BUSY_EVENTS = 10
BUSY_INTERVAL = 2.0


@dataclass
class _Mark:
    since: float  # monotonic time of the first event not yet taken
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> events


@dataclass(frozen=True)
class DueChannel:
    channel_id: str
    reasons: dict[str, int]  # e.g. {"posted": 12, "post_edited": 1}, {"resync": 1}

    @property
    def events(self) -> int:
        return sum(self.reasons.values())


class DueChannels:
    def __init__(
        self,
        *,
        settle: float = SETTLE_SECONDS,
        busy_events: int = BUSY_EVENTS,
        busy_interval: float = BUSY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle, self.busy_events, self.busy_interval = settle, busy_events, busy_interval
        self._clock = clock
        self._marks: dict[str, _Mark] = {}
        self._last: dict[str, tuple[float, int]] = {}  # channel -> (taken at, events then)
        self._woken = False
        self._cond = threading.Condition()

    def mark(self, channel_id: str, reason: str, events: int = 1) -> None:
        with self._cond:
            mark = self._marks.setdefault(channel_id, _Mark(self._clock()))
            mark.reasons[reason] = mark.reasons.get(reason, 0) + events
            self._cond.notify_all()

    def mark_all(self, channel_ids: Iterable[str], reason: str) -> None:
        for channel_id in channel_ids:
            self.mark(channel_id, reason)

    def wake(self) -> None:
        """Return from `take` now (the listener stopped, or the process is stopping)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._marks)

    def _ready_at(self, channel_id: str, mark: _Mark) -> float:
        ready = mark.since + self.settle
        last = self._last.get(channel_id)
        if last is not None and last[1] >= self.busy_events:
            ready = max(ready, last[0] + self.busy_interval)
        return ready

    def take(self, timeout: float) -> list[DueChannel]:
        """The channels ready now, waiting up to `timeout` s for one; [] on timeout or
        `wake`. Taken channels are unmarked: events from now on mark them again."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                now = self._clock()
                ready = {c: m for c, m in self._marks.items() if self._ready_at(c, m) <= now}
                if ready:
                    taken = []
                    for channel_id, mark in ready.items():
                        del self._marks[channel_id]
                        due = DueChannel(channel_id, dict(mark.reasons))
                        self._last[channel_id] = (now, due.events)
                        taken.append(due)
                    return taken
                if self._woken or now >= deadline:
                    self._woken = False
                    return []
                soonest = min(
                    (self._ready_at(c, m) for c, m in self._marks.items()), default=deadline
                )
                self._cond.wait(max(0.0, min(soonest, deadline) - now))
