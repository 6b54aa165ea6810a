"""What a channel's run works with, handed in by its driver: nothing in the pipeline looks a
client up, so a unit test passes fakes and a driver passes the process's own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mattermost_connector.config import Settings
from mattermost_connector.counts import Counts
from mattermost_connector.delivery import Destination
from mattermost_connector.errors import one_line
from mattermost_connector.kinds import RunStatus
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.state import StateStore

log = logging.getLogger("mattermost_connector.load")

Outcome = tuple[RunStatus, Counts | None, str | None]


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


class UnwrittenOutcomes:
    """Outcomes of runs closed while the state store was down (run id -> status, counts,
    error), written by the next run this driver starts: their rows then tell the real cause
    rather than "interrupted". Shared by the runs of one process, hence the lock."""

    def __init__(self) -> None:
        self._outcomes: dict[int, Outcome] = {}
        self._lock = threading.Lock()

    def keep(self, run_id: int, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes[run_id] = outcome

    def write(self, store: StateStore) -> None:
        """Write each kept outcome; one the store still refuses is kept for the next run."""
        with self._lock:
            pending = dict(self._outcomes)
        for run_id, (status, counts, error) in pending.items():
            try:
                store.finish_run(run_id, status, counts, error=error)
            except Exception as fault:
                log.info("run %d: outcome still not written (%s)", run_id, one_line(fault))
                continue
            with self._lock:
                self._outcomes.pop(run_id, None)


@dataclass(frozen=True)
class Services:
    """The pipeline's dependencies, passed in by its driver."""

    settings: Settings
    client: MattermostClient
    store: StateStore
    destinations: list[Destination]
    users: UserDirectory
    clock: Callable[[], datetime] = field(default=utc_now)
    # live mode: the changes its listener saw, complete while it had no gap since the
    # channel's last scan (mattermost_connector/live/witness.py)
    witness: ChangeWitness | None = None
    unwritten: UnwrittenOutcomes = field(default_factory=UnwrittenOutcomes)
