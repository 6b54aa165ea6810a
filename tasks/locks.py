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
from collections.abc import Callable
from typing import TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run

from mattermost_connector.errors import LeaseError, one_line
from mattermost_connector.retries import retry_call
from mattermost_prefect.tasks import resources

log = logging.getLogger("mattermost_connector.locks")

LEASE_SECONDS = 60  # a run killed outright keeps its channel this long at most
POLL_SECONDS = 2.0
_renewals: dict[str, tuple[threading.Event, threading.Thread]] = {}
T = TypeVar("T")


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
    logger, waited = get_run_logger(), False
    while not _try_lease(channel_id, holder):
        if not waited:
            current = _patiently(channel_id, lambda: resources.store().lease_holder(channel_id))
            logger.info(
                "channel %s is busy (%s): waiting for it", channel_id, current and current[0]
            )
            waited = True
        time.sleep(POLL_SECONDS)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(channel_id, holder, stop), daemon=True)
    _renewals[holder] = (stop, renewer)
    renewer.start()
    return holder


def _try_lease(channel_id: str, holder: str) -> bool:
    return _patiently(
        channel_id, lambda: resources.store().try_lease(channel_id, holder, LEASE_SECONDS)
    )


def _patiently(channel_id: str, action: Callable[[], T]) -> T:
    """A lease query under the retry budget: a blip of the state store as a channel starts
    delays it; a longer outage fails this channel only."""
    try:
        return retry_call(action, resources.settings().connector, f"channel {channel_id} lease")
    except Exception as error:
        raise LeaseError(
            f"channel {channel_id} not started: the state store refused its lease "
            f"({_reason(error)})"
        ) from None


def release_channel(channel_id: str, holder: str) -> None:
    """Retried like any transient fault; a lease left behind still expires on its own
    within LEASE_SECONDS."""
    renewal = _renewals.pop(holder, None)
    if renewal:  # stopped first: a renewal finishing after the release would take it again
        renewal[0].set()
        renewal[1].join(timeout=LEASE_SECONDS)
    try:
        retry_call(
            lambda: resources.store().release_lease(channel_id, holder),
            resources.settings().connector,
            f"channel {channel_id} lease release",
        )
    except Exception as error:
        get_run_logger().warning(
            "channel %s: lease not released, it expires within %ds (%s)",
            channel_id,
            LEASE_SECONDS,
            _reason(error),
        )
