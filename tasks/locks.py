"""One run at a time per channel, across processes and machines: a lease in the state store.

A Prefect global concurrency limit would do while a Prefect server's repossessor runs, but
temporary (ephemeral) servers run no repossessor: a run killed there would keep its channel
locked for good. A lease in the state store expires on its own, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from prefect import get_run_logger
from prefect.runtime import flow_run

from mattermost_connector.errors import LeaseError, one_line
from mattermost_prefect.tasks import resources

log = logging.getLogger("mattermost_connector.locks")

LEASE_SECONDS = 60  # a run killed outright keeps its channel this long at most
POLL_SECONDS = 2.0
_renewals: dict[str, threading.Event] = {}


def _renew(channel_id: str, holder: str, stop: threading.Event) -> None:
    """Renew until told to stop; a failed renewal is tried again at the next period (two
    more chances before the lease can lapse) rather than ending the thread."""
    while not stop.wait(LEASE_SECONDS / 3):
        try:
            resources.store().try_lease(channel_id, holder, LEASE_SECONDS)
        except Exception as error:
            log.warning("channel %s: lease not renewed (%s)", channel_id, _reason(error))


def _reason(error: Exception) -> str:
    """The store's error, without the statement SQLAlchemy appends."""
    return one_line(error, limit=300, first_line=True)


def acquire_channel(channel_id: str) -> str:
    """Wait until the channel is free, take it, and keep renewing the lease meanwhile. Called
    within the channel's first task (tasks.channel.begin_channel): no task run of its own."""
    holder = f"{flow_run.get_id() or 'local'}/{uuid.uuid4().hex[:8]}"
    store, logger, waited = resources.store(), get_run_logger(), False
    while not _try_lease(channel_id, holder):
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


def _try_lease(channel_id: str, holder: str) -> bool:
    try:
        return resources.store().try_lease(channel_id, holder, LEASE_SECONDS)
    except Exception as error:
        raise LeaseError(
            f"channel {channel_id} not started: the state store refused its lease "
            f"({_reason(error)})"
        ) from None


def release_channel(channel_id: str, holder: str) -> None:
    """Best effort: a lease left behind expires on its own within LEASE_SECONDS."""
    stop = _renewals.pop(holder, None)
    if stop:
        stop.set()
    try:
        resources.store().release_lease(channel_id, holder)
    except Exception as error:
        get_run_logger().warning("channel %s: lease not released (%s)", channel_id, _reason(error))
