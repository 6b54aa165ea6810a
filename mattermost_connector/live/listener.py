"""The WebSocket listener: connect, turn events into due channels, reconnect.

MATTERMOST_KEEPALIVE=true: after a disconnection, reconnect after MATTERMOST_KEEPALIVE_DELAY
seconds, then twice as long each failed attempt (at most MAX_DELAY; at least what a 429 asks:
the rate limiter wraps the upgrade too), resuming the connection
so that the server replays what was missed. When the server answers with a new connection id
(its queue for us is gone), or a `seq` skips, every channel is due ("resync": caught up over
REST). MATTERMOST_KEEPALIVE=false: the first disconnection ends the listener (`failure`), so
that `live` exits non-zero and its supervisor restarts it. A refused token ends it always.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Collection

from mattermost_connector.errors import AuthenticationError, one_line
from mattermost_connector.live.announced import AnnouncedPosts
from mattermost_connector.live.due import DueChannels
from mattermost_connector.live.events import HELLO, POST_DELETED, POST_EVENTS, POSTED, LiveEvent
from mattermost_connector.live.socket import Disconnected, MattermostSocket
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.retries import backoff

log = logging.getLogger("mattermost_connector.live")

RESYNC = "resync"
MAX_DELAY = 60.0
POLL_SECONDS = 0.5  # how often the receive loop looks at the stop flag


class Listener:
    def __init__(
        self,
        socket: MattermostSocket,
        channels: Collection[str],
        due: DueChannels,
        *,
        keepalive: bool,
        delay: float,
        stop: threading.Event,
        witness: ChangeWitness | None = None,
        announced: AnnouncedPosts | None = None,
    ) -> None:
        self.socket, self.channels, self.due = socket, frozenset(channels), due
        self.keepalive, self.delay, self.stop = keepalive, delay, stop
        self.witness = witness or ChangeWitness()
        self.announced = announced or AnnouncedPosts()
        self.failure: str | None = None  # why the listener gave up, when it did
        self.connected = threading.Event()  # set once the first hello came
        self.connections = 0  # upgrades that succeeded (tests, benchmark)
        self.resyncs = 0  # times every channel was made due after a gap

    def run(self) -> None:
        """Until `stop` is set, or the listener gives up (`failure`)."""
        attempt = 0
        try:
            while not self.stop.is_set():
                try:
                    self.socket.open()
                    self.connections += 1
                    attempt = 0
                    self._receive()
                except AuthenticationError as error:
                    self._give_up(one_line(error))
                    return
                except Disconnected as error:
                    # not a gap yet: a resume replays what was missed, else a hello says so
                    if self.stop.is_set():
                        return
                    if not self.keepalive:
                        self._give_up(f"{one_line(error)} (MATTERMOST_KEEPALIVE=false)")
                        return
                    wait = min(backoff(self.delay, attempt), max(MAX_DELAY, self.delay))
                    # a 429: the limiter refuses every attempt until its wait is over
                    wait = max(wait, error.retry_after) * random.uniform(1.0, 1.1)
                    attempt += 1
                    log.warning("%s: reconnecting in %.1f s", one_line(error), wait)
                    self.stop.wait(wait)
        finally:
            self.witness.interrupted()
            self.socket.close()
            self.due.wake()

    def _give_up(self, reason: str) -> None:
        self.failure = reason
        log.error("live: %s", reason)

    def _receive(self) -> None:
        while not self.stop.is_set():
            event = self.socket.receive(POLL_SECONDS)
            if event is not None:
                self.handle(event)

    def handle(self, event: LiveEvent) -> None:
        """A gap makes every channel due (unless this is the first hello: the catch-up at
        start covers it); a post event of a selected channel makes that channel due."""
        if event.gap:
            self.witness.interrupted()
            if self.connected.is_set():
                self.resyncs += 1
                log.warning("live: events may have been missed: catching every channel up")
                self.due.mark_all(sorted(self.channels), RESYNC)
        if event.name == HELLO:
            self.connected.set()
        if event.name in POST_EVENTS and event.channel_id in self.channels:
            self.witness.saw(event)
            self._note(event)
            self.due.mark(event.channel_id, event.name)

    def _note(self, event: LiveEvent) -> None:
        """A new post is awaited until a delivery takes it (the listing may lag the event);
        a deleted one no longer is."""
        post, channel_id = event.post or {}, event.channel_id
        if not isinstance(post.get("id"), str) or channel_id is None:
            return
        if event.name == POSTED and isinstance(post.get("create_at"), int):
            self.announced.announce(channel_id, post["id"], post["create_at"])
        elif event.name == POST_DELETED:
            self.announced.forget(channel_id, post["id"])
