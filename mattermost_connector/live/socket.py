"""One connection to Mattermost's WebSocket at a time, resumable.

The token travels in the upgrade's `Authorization` header, never in the URL. Reconnecting
sends `connection_id` and `sequence_number` (the next `seq` wanted), as the server's own
clients do (webapp websocket_client.ts, model/websocket_client.go): the server then replays
what was missed, or answers a `hello` with a new connection id when it no longer can
(server/channels/app/platform/web_conn.go). The socket notes, on each event, whether events
may have been missed before it (`LiveEvent.gap`).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Protocol
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

from mattermost_connector.config import MattermostSettings
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.live.events import HELLO, LiveEvent, parse_event


class Disconnected(MattermostError):
    """The WebSocket could not be opened, or was lost. `retry_after`: the seconds a 429 on
    the upgrade asked to wait (the server's rate limiter wraps the upgrade too)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class _Connection(Protocol):
    def recv(self, timeout: float | None = None) -> str | bytes: ...
    def close(self) -> None: ...


def websocket_url(settings: MattermostSettings) -> str:
    """`<basepath>/websocket` on the server, ws:// or wss:// as the API's scheme."""
    scheme = "wss" if settings.protocol == "https" else "ws"
    return f"{scheme}://{settings.api_url.split('://', 1)[1]}/websocket"


class MattermostSocket:
    def __init__(self, settings: MattermostSettings, connect: Any = ws_connect) -> None:
        self.settings = settings
        self._connect = connect
        self._conn: _Connection | None = None
        self.connection_id: str | None = None
        self.next_seq = 0
        self.resuming = False  # the open connection asked to resume an earlier one

    def open(self) -> None:
        """Connect (resuming the last connection if there was one)."""
        settings = self.settings
        url = websocket_url(settings)
        self.resuming = self.connection_id is not None
        if self.resuming:
            query = {"connection_id": self.connection_id, "sequence_number": self.next_seq}
            url = f"{url}?{urlencode(query)}"
        assert settings.token is not None
        options: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {settings.token.get_secret_value()}"},
            "user_agent_header": "opencti-mattermost-prefect",
            "open_timeout": settings.timeout,
            "ping_interval": settings.timeout,
            "ping_timeout": settings.timeout,
            "close_timeout": 2,
            "max_size": None,
        }
        if settings.protocol == "https" and not settings.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            options["ssl"] = context
        try:
            self._conn = self._connect(url, **options)
        except InvalidStatus as error:
            status = error.response.status_code
            if status == 401:
                raise AuthenticationError(
                    "Mattermost refused the token on the WebSocket (401)", status=401
                ) from None
            wait = _asked_wait(error.response.headers) if status == 429 else 0.0
            raise Disconnected(
                f"WebSocket upgrade answered {status}", status=status, retry_after=wait
            ) from None
        except (OSError, TimeoutError, WebSocketException) as error:
            raise Disconnected(f"WebSocket not opened: {_reason(error)}") from None

    def receive(self, timeout: float) -> LiveEvent | None:
        """The next event, None if none came within `timeout` s; Disconnected when lost."""
        if self._conn is None:
            raise Disconnected("WebSocket not open")
        try:
            text = self._conn.recv(timeout=timeout)
        except TimeoutError:
            return None
        except (ConnectionClosed, OSError) as error:
            self.close()
            raise Disconnected(f"WebSocket lost: {_reason(error)}") from None
        event = parse_event(text)
        return None if event is None else self._follow(event)

    def _follow(self, event: LiveEvent) -> LiveEvent:
        """Track the connection id and the next seq; mark a gap when a hello brings a new
        connection id (the server lost our queue) or a seq skips."""
        gap = False
        if event.name == HELLO:
            gap = event.connection_id != self.connection_id
            self.connection_id = event.connection_id
        elif event.seq is not None and event.seq != self.next_seq:
            gap = event.seq > self.next_seq
            if not gap:  # replayed again: already seen
                return LiveEvent(event.name, event.seq)
        if event.seq is not None:
            self.next_seq = event.seq + 1
        if gap:
            return LiveEvent(
                event.name, event.seq, event.channel_id, event.post, event.connection_id, True
            )
        return event

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _asked_wait(headers: Any) -> float:
    """Seconds a 429 asks to wait: Retry-After, else X-RateLimit-Reset (relative), else 1."""
    for header in ("Retry-After", "X-RateLimit-Reset"):
        try:
            return max(float(headers.get(header) or ""), 0.0)
        except ValueError:
            continue
    return 1.0


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
