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

from mattermost_connector.config import ConnectorSettings
from mattermost_connector.errors import LeaseError, one_line
from mattermost_connector.retries import retry_call
from mattermost_connector.state import StateStore

log = logging.getLogger("mattermost_connector.locks")

LEASE_SECONDS = 60  # a run killed outright keeps its channel this long at most
POLL_SECONDS = 2.0
T = TypeVar("T")


class HeldLease:
    """A channel's lease while its run holds it, renewed every third of it by a thread of
    its own until released."""

    def __init__(
        self, store: StateStore, connector: ConnectorSettings, channel_id: str, holder: str
    ) -> None:
        self.store, self.connector = store, connector
        self.channel_id, self.holder = channel_id, holder
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Renew until told to stop; a failed renewal is tried again at the next period (two
        more chances before the lease can lapse) rather than ending the thread."""
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self.store.try_lease(self.channel_id, self.holder, LEASE_SECONDS)
            except Exception as error:
                log.warning("channel %s: lease not renewed (%s)", self.channel_id, _reason(error))

    def release(self) -> None:
        """Retried like any transient fault; a lease left behind still expires on its own
        within LEASE_SECONDS."""
        # the renewal stopped first: one finishing after the release would take it again
        self._stop.set()
        self._renewer.join(timeout=LEASE_SECONDS)
        try:
            retry_call(
                lambda: self.store.release_lease(self.channel_id, self.holder),
                self.connector,
                f"channel {self.channel_id} lease release",
            )
        except Exception as error:
            log.warning(
                "channel %s: lease not released, it expires within %ds (%s)",
                self.channel_id,
                LEASE_SECONDS,
                _reason(error),
            )


def acquire(
    store: StateStore, connector: ConnectorSettings, channel_id: str, owner: str
) -> HeldLease:
    """Wait until the channel is free, take it, and keep renewing the lease meanwhile.
    `owner`: who holds it (a flow run's id), for the log of a run waiting for it."""
    holder = f"{owner}/{uuid.uuid4().hex[:8]}"

    def patiently(action: Callable[[], T]) -> T:
        """A lease query under the retry budget: a blip of the state store as a channel
        starts delays it; a longer outage fails this channel only."""
        try:
            return retry_call(action, connector, f"channel {channel_id} lease")
        except Exception as error:
            raise LeaseError(
                f"channel {channel_id} not started: the state store refused its lease "
                f"({_reason(error)})"
            ) from None

    waited = False
    while not patiently(lambda: store.try_lease(channel_id, holder, LEASE_SECONDS)):
        if not waited:
            current = patiently(lambda: store.lease_holder(channel_id))
            log.info("channel %s is busy (%s): waiting for it", channel_id, current and current[0])
            waited = True
        time.sleep(POLL_SECONDS)
    return HeldLease(store, connector, channel_id, holder)


def _reason(error: Exception) -> str:
    """The store's error, without the statement SQLAlchemy appends."""
    return one_line(error, limit=300, first_line=True)
