"""One run at a time per channel, across processes and machines: a lease in the state store.

A Prefect global concurrency limit would do while a Prefect server's repossessor runs, but
temporary (ephemeral) servers run no repossessor: a run killed there would keep its channel
locked for good. A lease in the state store expires on its own, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from tasks import resources
from tasks.policy import TASK_DEFAULTS

LEASE_SECONDS = 60  # a run killed outright keeps its channel this long at most
POLL_SECONDS = 2.0
_renewals: dict[str, threading.Event] = {}


def _renew(channel_id: str, holder: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_SECONDS / 3):
        resources.store().try_lease(channel_id, holder, LEASE_SECONDS)


@task(name="acquire-channel", task_run_name="acquire-{channel_id}", **TASK_DEFAULTS)
def acquire_channel(channel_id: str) -> str:
    """Wait until the channel is free, take it, and keep renewing the lease meanwhile."""
    holder = f"{flow_run.get_id() or 'local'}/{uuid.uuid4().hex[:8]}"
    store, logger, waited = resources.store(), get_run_logger(), False
    while not store.try_lease(channel_id, holder, LEASE_SECONDS):
        if not waited:
            current = store.lease_holder(channel_id)
            logger.info(
                "channel %s is busy (%s): waiting for it", channel_id, current and current[0]
            )
            waited = True
        time.sleep(POLL_SECONDS)
    stop = threading.Event()
    _renewals[holder] = stop
    threading.Thread(target=_renew, args=(channel_id, holder, stop), daemon=True).start()
    return holder


@task(name="release-channel", task_run_name="release-{channel_id}", **TASK_DEFAULTS)
def release_channel(channel_id: str, holder: str) -> None:
    stop = _renewals.pop(holder, None)
    if stop:
        stop.set()
    resources.store().release_lease(channel_id, holder)


@contextmanager
def channel_lock(channel_id: str) -> Iterator[None]:
    """Hold the channel for the length of a run; another run of it waits its turn."""
    holder = acquire_channel(channel_id)
    try:
        yield
    finally:
        release_channel(channel_id, holder)
