"""How live mode stops on SIGTERM or SIGINT: the first signal lets the delivery in flight
finish; a second stops at once, as an interrupt (the CLI's exit 130), since waiting for a long
catch-up is what the operator refused. The cursor keeps what was delivered either way."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("mattermost_connector.live")

Handler = Callable[[int, object], None]


def stop_on_signals(stop: threading.Event, request_stop: Callable[[], None]) -> Handler:
    """A signal handler: `request_stop()` the first time (`stop` is then set), a
    KeyboardInterrupt raised in the main thread the second time."""

    def on_signal(signum: int, _: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("live: %s received, finishing the delivery in flight", signal.Signals(signum).name)
        request_stop()

    return on_signal
