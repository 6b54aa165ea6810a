"""Live mode: Mattermost's WebSocket makes channels due, a delivery loop runs them.

Events trigger, the cursor decides: each delivery is the channel's ordinary pipeline (REST
cursor, change scan, lease), so a missed, repeated or reordered event loses or duplicates
nothing. A live session is one flow run, `mattermost-live`; each delivery is a task run in
it, `live-delivery`, named after its channels and why they ran (events, catch-up, resync); a
burst's events coalesce into a few of them (mattermost_connector/live/due.py). Not a flow run
per delivery: creating one is an API call that the temporary Prefect server (SQLite) answers
503 while it writes the previous run's events, and Prefect's client then waits about 2 s
before trying again (measured: most of the latency's tail); task runs are reported through
events, without waiting. The session's flow run has Prefect's heartbeat, so a killed process
shows as crashed.

Deliveries run in a thread of their own, not the main one: Prefect's flow engine replaces the
SIGTERM handler of the main thread with one that crashes the flow run, and live mode must
finish the delivery in flight on SIGTERM, then exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from prefect import Flow, flow, task
from prefect.states import Completed, Failed, State

from mattermost_connector.channel_run import ChannelResult
from mattermost_connector.config import Settings
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import MattermostError, one_line, stops_the_run
from mattermost_connector.kinds import RunKind
from mattermost_connector.live.announced import AnnouncedPosts, PeriodicCheck
from mattermost_connector.live.due import DueChannel, DueChannels
from mattermost_connector.live.listener import RESYNC, Listener
from mattermost_connector.live.socket import MattermostSocket
from mattermost_connector.live.stopping import stop_on_signals
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.mattermost.discovery import discover
from mattermost_connector.pipeline.run import run_channel
from mattermost_connector.wording import amount
from mattermost_prefect.tasks import resources
from mattermost_prefect.tasks.policy import TASK_DEFAULTS
from mattermost_prefect.tasks.report import publish_report
from mattermost_prefect.tasks.steps import prefect_steps

log = logging.getLogger("mattermost_connector.live")

CATCH_UP = "catch-up"
UNCONFIRMED = "unconfirmed"  # announced posts no run has taken yet (a lagging replica)
CHECK = "check"  # the periodic catch-up (MATTERMOST_LIVE_CHECK_PERIOD)


def deliver_channel(channel_id: str) -> ChannelResult:
    """The one place live mode runs a channel's pipeline (holding its lease, like any run)."""
    return run_channel(prefect_steps(), channel_id, RunKind.SYNC)


@task(name="live-delivery", task_run_name="{label}", **TASK_DEFAULTS)
def live_delivery(channel_ids: list[str], label: str) -> list[dict[str, Any]]:
    """Deliver these channels from their cursors, one after another, and publish the run's
    report. `label` says which and why: the task run's name."""
    results: list[ChannelResult] = []
    for channel_id in channel_ids:
        try:
            results.append(deliver_channel(channel_id))
        except MattermostError as error:  # a refused token, a server that does not answer
            if not stops_the_run(error):
                raise
            log.error("%s: stopped: %s", label, one_line(error))
            break
    report = [result.row() for result in results]
    publish_report(report, RunKind.SYNC)
    for result in results:
        if not result.ok:
            log.warning("%s", result.summary())
    return report


def session_flow(session: LiveSession) -> Flow[..., State[Any]]:
    """The flow of one live session, built for it (the session is no parameter: Prefect
    would try to serialise it)."""

    @flow(
        name="mattermost-live",
        flow_run_name="live session {started}",
        validate_parameters=False,
        persist_result=False,
    )
    def mattermost_live(started: str, channels: int) -> State[Any]:
        """One flow run per live session: each delivery is a task run inside it, named
        after its channels and why (catch-up, events, resync)."""
        session.deliveries_loop()
        if session.failure:
            return Failed(message=session.failure)
        return Completed(message=f"{session.deliveries} deliveries")

    return mattermost_live


def delivery_label(due: list[DueChannel], names: dict[str, str]) -> str:
    """`live events: cti/town-square (12 posted, 1 post_edited)`, `live catch-up: 3
    channels`: which channels, and why."""
    reasons: dict[str, int] = {}
    for channel in due:
        for reason, count in channel.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    kinds = (CATCH_UP, RESYNC, UNCONFIRMED, CHECK)
    why = "+".join(sorted({r if r in kinds else "events" for r in reasons}))
    if len(due) == 1:
        channels = names.get(due[0].channel_id) or due[0].channel_id
    else:
        channels = amount(len(due), "channel")
    counts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return f"live {why}: {channels} ({counts})"


def live_channels(settings: Settings) -> list[str]:
    """The channels a sync would cover (MATTERMOST_CHANNEL_IDS, then those MATTERMOST_TEAMS
    finds, less the excluded ones), found once when the session starts. Mattermost sends
    events only for channels the account is a member of: a public channel it reads without
    joining is delivered at the catch-up and at each resync, not within seconds."""
    selection = discover(resources.client(), settings.mattermost)
    if selection.listed:
        resources.store().remember_names(
            {c: n for c in selection.channel_ids if (n := selection.name(c))}
        )
    return selection.channel_ids


class LiveSession:
    """The listener thread and the delivery thread of one live process."""

    def __init__(self, settings: Settings) -> None:
        mattermost = settings.mattermost
        self.channels = live_channels(settings)
        self.stop = threading.Event()
        self.due = DueChannels()
        self.witness = ChangeWitness()
        self.announced = AnnouncedPosts()
        self.check = PeriodicCheck(mattermost.live_check_period.total_seconds())
        self.listener = Listener(
            MattermostSocket(mattermost),
            self.channels,
            self.due,
            keepalive=mattermost.keepalive,
            delay=mattermost.keepalive_delay,
            stop=self.stop,
            witness=self.witness,
            announced=self.announced,
        )
        self.connect_timeout = mattermost.timeout
        self.deliveries = 0  # flow runs started (benchmark, tests)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        resources.keep_connections(True)  # deliveries come seconds apart: reuse HTTP
        resources.use_witness(self.witness)
        for name, target in (("listener", self.listener.run), ("delivery", self._session)):
            thread = threading.Thread(target=target, name=f"mattermost-live-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _session(self) -> None:
        """The session's flow run, in this thread."""
        started = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        try:
            session_flow(self)(started, len(self.channels), return_state=True)
        except Exception as error:
            log.error("live session failed: %s", one_line(error))
        finally:
            self.stop.set()

    def deliveries_loop(self) -> None:
        """Catch every channel up (once the WebSocket is up, so that no event falls between
        the two), then deliver what events make due, until stopped."""
        try:
            self.listener.connected.wait(self.connect_timeout)
            if not self.stop.is_set() and self.listener.failure is None:
                self.due.mark_all(self.channels, CATCH_UP)
            while not self.stop.is_set() and self.listener.failure is None:
                self._mark_scheduled()
                wait = min(1.0, self.check.next_in(), self.announced.next_retry_in() or 1.0)
                due = self.due.take(timeout=wait)
                if due and not self.stop.is_set():
                    self.deliver(due)
        finally:
            self.stop.set()

    def _mark_scheduled(self) -> None:
        """Channels due without an event: announced posts to look for again, and every
        channel at each periodic check."""
        for channel_id in self.announced.due():
            self.due.mark(channel_id, UNCONFIRMED)
        if self.check.due():
            self.due.mark_all(self.channels, CHECK)

    def deliver(self, due: list[DueChannel]) -> None:
        names = resources.store().channel_names()
        label = delivery_label(due, names)
        log.info("%s", label)
        self.deliveries += 1
        started = time.monotonic()
        report: list[dict[str, Any]] = []
        try:
            report = live_delivery([channel.channel_id for channel in due], label)
        except Exception as error:  # a delivery that crashed: the next event tries again
            log.error("%s failed: %s", label, one_line(error))
        self._confirm(due, report, started)

    def _confirm(self, due: list[DueChannel], report: list[dict[str, Any]], started: float) -> None:
        """Which announced posts each channel's run took; the others are looked for again."""
        cursors = {row["channel_id"]: row["cursor_after"] or row["cursor_before"] for row in report}
        for channel in due:
            cursor = cursors.get(channel.channel_id)
            self.announced.confirm(
                channel.channel_id, Cursor.from_dict(cursor) if cursor else None, started
            )

    def request_stop(self) -> None:
        self.stop.set()
        self.due.wake()

    def wait(self) -> None:
        """Until stopped (or the listener gave up); the delivery in flight completes."""
        while not self.stop.wait(0.5):
            pass
        self.due.wake()
        for thread in self._threads:
            thread.join()
        resources.keep_connections(False)
        resources.use_witness(None)

    @property
    def failure(self) -> str | None:
        return self.listener.failure


def run_live(settings: Settings) -> int:
    """`mattermost-connector live`: 0 when stopped by SIGTERM or SIGINT (the delivery in
    flight finished), 1 when the listener gave up (disconnected with
    MATTERMOST_KEEPALIVE=false, token refused). A second signal stops without waiting (the
    CLI's interrupted exit, 130): the cursor keeps what was delivered."""
    session = LiveSession(settings)
    on_signal = stop_on_signals(session.stop, session.request_stop)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        session.start()
        session.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if session.failure else 0


def start_beside_serve(settings: Settings) -> LiveSession:
    """`serve` with MATTERMOST_LIVE=true: the same listener and deliveries, in threads beside
    the deployments (stopped with the process)."""
    session = LiveSession(settings)
    session.start()
    return session
