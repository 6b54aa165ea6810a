"""Ordered delivery, the invariant every driver of the channel pipeline relies on: a cursor
never moves past a post that is not delivered and recorded.

Two levels. Within a batch, `deliver_in_order` sends a few bundles at once but records them
strictly in order. Across batches, `OrderedLoads` keeps one batch's load in flight while the
next is read and transformed, and `take_new_posts` runs those three stages. Both take their
work as callables (a Prefect task's `.submit` in the flow, a plain executor in unit tests), so
they hold the invariant whatever runs them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.cursor import Cursor
from mattermost_connector.stix import Attachment

T = TypeVar("T")


class Pending(Protocol):
    """What a submitted step hands back: a PrefectFuture or a concurrent.futures.Future."""

    def result(self) -> Any: ...


def deliver_in_order(
    items: Iterable[T], send: Callable[[T], None], record: Callable[[T], None], concurrency: int
) -> None:
    """Send up to `concurrency` items at once, but record them strictly in order: an item only
    once every item before it is sent and recorded. An item is sent only when the one
    `concurrency` places before it is recorded, so a crash leaves at most that many sent but
    unrecorded. On a failure nothing after it is recorded, and sends not started are
    cancelled."""
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="deliver") as pool:
        sends = deque(
            (item, pool.submit(send, item)) for item in itertools.islice(pending, concurrency)
        )
        try:
            while sends:
                item, sent = sends.popleft()
                sent.result()
                record(item)
                following = next(pending, None)
                if following is not None:
                    sends.append((following, pool.submit(send, following)))
        finally:
            for _, sent in sends:
                sent.cancel()


def settle(pending: Pending | None) -> None:
    """Wait for a step whose outcome no longer matters (the run is already failing)."""
    if pending is not None:
        with contextlib.suppress(Exception):
            pending.result()


class OrderedLoads:
    """At most one load in flight, each started only once the one before landed: cursors
    move in order. A load's failure is raised by the next call that waits for it."""

    def __init__(self, submit: Callable[..., Pending]) -> None:
        self._submit = submit
        self._loading: Pending | None = None

    def load(self, *args: Any) -> None:
        self.landed()
        self._loading = self._submit(*args)

    def landed(self) -> None:
        """Wait for the load in flight; its failure is the caller's."""
        loading, self._loading = self._loading, None
        if loading is not None:
            loading.result()

    def drain(self) -> None:
        """On a failure: let the load in flight finish (it sends from the spool, which closing
        the channel clears), without raising its outcome over the failure being handled."""
        loading, self._loading = self._loading, None
        settle(loading)


Files = dict[str, list[Attachment]]


class NewPostStages(Protocol):
    """The steps `take_new_posts` overlaps, as a driver runs them."""

    def read(self, run: ChannelRun, pending: list[dict]) -> Pending:
        """Submit: the batch after `run.cursor` and its files, `(Batch, Files)`."""

    def transform(
        self, run: ChannelRun, batch: Batch, files: Files, recent: list[dict]
    ) -> tuple[ChannelRun, list[BundleFile]]:
        """The batch's bundles, and the run as it stands once they are delivered."""

    def load(self, run: ChannelRun, bundles: list[BundleFile]) -> Pending:
        """Submit: deliver and record the bundles, in order."""

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        """Move the cursor past posts that deliver nothing."""

    def progress(self, run: ChannelRun) -> None: ...


def take_new_posts(run: ChannelRun, stages: NewPostStages) -> ChannelRun:
    """Three batches at once: the next read, this one transformed, the one before loaded.
    A batch is loaded only once the one before is, and the cursor moves alone (past posts
    that deliver nothing) only once nothing is in flight. A failed load ends the pass: what
    was read or built after it is dropped, and the cursor still stands before it. On any
    failure the read ahead and the load in flight are waited for, so that closing the run
    does not clear the spool under them."""
    ahead = stages.read(run, [])
    loads = OrderedLoads(stages.load)
    in_flight: list[dict] = []  # posts of the batch being loaded
    recent: list[dict] = []  # and the rows of their files
    try:
        while True:
            batch, files = ahead.result()
            current = batch.posts
            if not batch.exhausted:
                # roots in this batch and the one loading count as delivered: they are,
                # before the next batch is used (and its bundles copy them from here)
                ahead = stages.read(replace(run, cursor=batch.cursor), in_flight + current)
            if batch.posts:
                after, bundles = stages.transform(run, batch, files, recent)
                loads.load(run, bundles)
                in_flight = current
                recent = [row for bundle in bundles for row in bundle.attachments]
                run = replace(after, counts=after.counts + batch.counts)
                stages.progress(run)
            else:
                if batch.cursor is not None and batch.cursor != run.cursor:
                    loads.landed()  # nothing moves past what is still in flight
                    stages.advance(run, batch.cursor)
                    run = replace(run, cursor=batch.cursor)
                run = replace(run, counts=run.counts + batch.counts)  # skipped, if any
            run = replace(run, listed=run.listed + batch.listed, ahead=run.ahead + batch.ahead)
            if batch.exhausted:
                loads.landed()
                return run
    except BaseException:
        settle(ahead)  # its downloads land in the spool before closing the channel clears it
        loads.drain()  # nor is the spool cleared under a load still sending from it
        raise
