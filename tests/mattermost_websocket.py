"""The simulator's WebSocket (`GET /api/v4/websocket`), as Mattermost's server runs it.

Read in the server's source (server/channels/app/platform/web_conn.go, web_hub.go,
wsapi/, api4/websocket.go, app/post.go):

- the upgrade authenticates with the `Authorization` header (an invalid token: 401 AppError,
  no upgrade) or, without one, with an `authentication_challenge` action as the first message
  (answered `{"status":"OK","seq_reply":n}`); an unauthenticated connection receives nothing;
- a fresh connection gets `hello` (`connection_id`, `server_version`) at `seq` 0; every event
  carries the connection's next `seq`; each sent event is kept in a dead queue of 128;
- only members of an event's channel receive it; `posted` carries `channel_display_name`,
  `channel_name`, `channel_type`, `sender_name`, `team_id`, `set_online` and `post` as a JSON
  string; `post_edited` the new version; `post_deleted` the post as read before the deletion
  (`delete_at` 0) and `delete_by`, once for a deleted root (its replies get no event);
- the server pings every `ping_interval` (60 s there) and answers the client's pings;
- a connection that drops stays registered, inactive, queueing what it misses (up to 256;
  more and the hub drops it), until reaped: the hub's ticker (inactiveConnReaperInterval,
  5 minutes: `reap_interval`) removes, at each tick, every inactive connection whose
  lastUserActivityAt is older than 5 minutes (`replay_seconds`) (web_hub.go, Hub.Start and
  RemoveInactiveConnections). That time is set when the WebConn is made, at each connect or
  resume (NewWebConn), and a token's reader does nothing else: so a connection up for more
  than 5 minutes can be reaped at the first tick after it drops, seconds after;
- a `seq` can skip: writePump gives an event its seq and counts it before encoding it, and
  an event that fails to encode is dropped, not sent nor kept (web_conn.go, writePump:
  "Error in encoding websocket message"): `lose_next`;
- the upgrade is an HTTP request like any: the rate limiter wraps the whole router
  (app/server.go, Server.Start: `handler = rateLimiter.RateLimitHandler(handler)`), so a
  reconnection storm meets 429s (see MattermostSimulator.rate_limit). Reconnecting with
  `connection_id` and `sequence_number` (the next seq wanted): found in the dead queue, the
  events from there are sent again with their seqs, then the queued ones; the dead queue ending
  right before it, the queued ones follow (lossless); otherwise a NEW connection id, seq 0, a
  new hello. A connection unknown (reaped, server restarted) gets a new id and hello too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.sync.server import ServerConnection

if TYPE_CHECKING:
    from tests.mattermost_sim import MattermostSimulator

DEAD_QUEUE_SIZE = 128  # web_conn.go deadQueueSize
SEND_QUEUE_SIZE = 256  # web_conn.go sendQueueSize: a fuller queue gets the connection dropped
AUTH_SECONDS = 5.0  # web_conn.go authCheckInterval: no session by then, the socket is closed
SERVER_VERSION = "10.5.0.10.5.0.abc.false"


def _new_id() -> str:
    return uuid.uuid4().hex[:26]


@dataclass
class SocketState:
    """One WebConn: its id, user, sequence and queues, with or without a socket attached."""

    connection_id: str
    user_id: str
    sequence: int = 0
    dead: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=DEAD_QUEUE_SIZE))
    pending: list[dict[str, Any]] = field(default_factory=list)
    socket: ServerConnection | None = None
    detached_at: float = 0.0
    active_at: float = field(default_factory=time.monotonic)  # lastUserActivityAt


class SocketHub:
    """Every WebSocket connection of the simulator, and the events it broadcasts."""

    def __init__(self, sim: MattermostSimulator) -> None:
        self.sim = sim
        self.ping_interval: float = 60.0
        self.replay_seconds: float = 300.0  # staleThreshold: inactive and older, reaped
        self.reap_interval: float = 300.0  # inactiveConnReaperInterval: the reaper's ticker
        self._origin = time.monotonic()  # the hub's start: its ticker ticks from there
        self._lose = 0  # events still to lose in writePump (lose_next)
        self.down_until = 0.0  # monotonic: upgrades answered 502 by the proxy until then
        self.states: dict[str, SocketState] = {}
        self.upgrades: list[dict[str, Any]] = []  # what each upgrade asked (tests)
        self._lock = threading.RLock()

    # -- faults ----------------------------------------------------------------------------

    def drop(self) -> int:
        """Cut every open socket without a close frame (a network failure); the server keeps
        each connection's queues for a resume. Returns how many were cut."""
        with self._lock:
            cut = 0
            for state in self.states.values():
                if state.socket is not None:
                    _abort(state.socket)
                    self._detach(state)
                    cut += 1
            return cut

    def down(self, seconds: float) -> None:
        """Drop every socket and refuse upgrades (502 from the proxy) for `seconds`."""
        self.down_until = time.monotonic() + seconds
        self.drop()

    def lose_next(self, events: int = 1) -> None:
        """The next `events` events sent fail to encode: their seqs are used, nothing is sent
        or kept in the dead queue, and the next event's seq skips."""
        with self._lock:
            self._lose += events

    def forget(self) -> None:
        """A server restart: every connection's queues are gone."""
        with self._lock:
            for state in self.states.values():
                if state.socket is not None:
                    _abort(state.socket)
            self.states.clear()

    @property
    def open_sockets(self) -> int:
        with self._lock:
            return sum(1 for s in self.states.values() if s.socket is not None)

    # -- events ----------------------------------------------------------------------------

    def post_event(self, name: str, post: dict[str, Any], **extra: Any) -> None:
        """Broadcast a post event to the members of its channel (ShouldSendEvent)."""
        if not self.states:
            return
        sim = self.sim
        channel = sim.state.channels[post["channel_id"]]
        data: dict[str, Any] = {"post": json.dumps(sim.with_metadata(post)), **extra}
        if name == "posted":
            author = sim.state.users.get(post["user_id"], {})
            data.update(
                channel_display_name=channel["display_name"],
                channel_name=channel["name"],
                channel_type=channel["type"],
                sender_name=f"@{author.get('username', '')}",
                team_id=channel["team_id"],
                set_online=True,
            )
        event = {
            "event": name,
            "data": data,
            "broadcast": {
                "omit_users": None,
                "user_id": "",
                "channel_id": channel["id"],
                "team_id": "",
                "connection_id": "",
                "omit_connection_id": "",
            },
        }
        members = sim.state.members.get(channel["id"], set())
        with self._lock:
            self._reap()
            for state in list(self.states.values()):
                if state.user_id in members:
                    self._deliver(state, event)

    def _deliver(self, state: SocketState, event: dict[str, Any]) -> None:
        if state.socket is None:
            state.pending.append(event)
            if len(state.pending) > SEND_QUEUE_SIZE:  # web_hub.go: the hub drops it
                self.states.pop(state.connection_id, None)
            return
        self._send(state, event)

    def _send(self, state: SocketState, event: dict[str, Any]) -> None:
        text = json.dumps({**event, "seq": state.sequence})
        state.sequence += 1
        if self._lose and event["event"] != "hello":
            self._lose -= 1
            return
        state.dead.append((state.sequence - 1, text))
        self._write(state, text)

    def _write(self, state: SocketState, text: str) -> None:
        socket = state.socket
        if socket is None:
            return
        try:
            socket.send(text)
        except (ConnectionClosed, OSError):
            self._detach(state)

    def _detach(self, state: SocketState) -> None:
        state.socket = None
        state.detached_at = time.monotonic()

    def _reap(self) -> None:
        """What the reaper's last tick removed: inactive at the tick, and made (connected or
        resumed) more than `replay_seconds` before it, however recently it dropped."""
        now = time.monotonic()
        tick = self._origin + (now - self._origin) // self.reap_interval * self.reap_interval
        for key, state in list(self.states.items()):
            inactive = state.socket is None and state.detached_at <= tick
            if inactive and tick - state.active_at > self.replay_seconds:
                del self.states[key]

    # -- connections -----------------------------------------------------------------------

    def serve(self, handler: Any, query: dict[str, list[str]]) -> None:
        """Upgrade the request `handler` (a BaseHTTPRequestHandler) holds, then serve the
        socket until it closes."""
        sim = self.sim
        handler.close_connection = True
        self.upgrades.append(
            {"path": handler.path, "headers": dict(handler.headers.items()), "query": query}
        )
        if time.monotonic() < self.down_until:
            handler._send(502, b"<html>502 Bad Gateway</html>", "text/html", {})
            return
        user_id: str | None = None
        if handler.headers.get("Authorization"):
            try:
                user_id = sim.caller(handler.headers, {})["id"]
            except Exception as error:  # AppError: the upgrade is refused, as any request
                handler._app_error(error, _new_id(), {})
                return
        try:
            socket = self._upgrade(handler)
        except (ConnectionError, OSError):
            return
        state: SocketState | None = None
        try:
            if user_id is None:
                user_id = self._challenge(socket)
                if user_id is None:
                    return
            state = self._attach(socket, user_id, query)
            while True:
                message = json.loads(socket.recv())
                if message.get("action") == "authentication_challenge":
                    reply = {"status": "OK", "seq_reply": message.get("seq")}
                    socket.send(json.dumps(reply))
        except (ConnectionClosed, OSError, ValueError):
            pass
        finally:
            with self._lock:
                if state is not None and state.socket is socket:
                    self._detach(state)
            _abort(socket)

    def _upgrade(self, handler: Any) -> ServerConnection:
        """The opening handshake on the request the HTTP server already read (given to the
        protocol again as bytes: its parser reads a request before any frame), then a
        websockets connection on its socket (pings, pongs, close)."""
        protocol = ServerProtocol()
        head = "".join(f"{name}: {value}\r\n" for name, value in handler.headers.items())
        protocol.receive_data(f"{handler.requestline}\r\n{head}\r\n".encode("latin-1"))
        (request,) = protocol.events_received()
        assert isinstance(request, Request)
        response = protocol.accept(request)
        protocol.send_response(response)
        answer = b"".join(protocol.data_to_send())
        if response.status_code != 101:
            handler.connection.sendall(answer)
            raise ConnectionError("handshake refused")
        socket = ServerConnection(
            handler.connection,
            protocol,
            ping_interval=self.ping_interval,
            ping_timeout=100.0,
        )
        socket.request = request  # read already: frames come next
        handler.connection.sendall(answer)
        return socket

    def _challenge(self, socket: ServerConnection) -> str | None:
        """Without a header, the first message must be an authentication_challenge."""
        try:
            message = json.loads(socket.recv(timeout=AUTH_SECONDS))
        except (TimeoutError, ValueError):
            return None
        token = (message.get("data") or {}).get("token", "")
        user_id = self.sim.state.tokens.get(token)
        if message.get("action") != "authentication_challenge" or not user_id:
            return None
        socket.send(json.dumps({"status": "OK", "seq_reply": message.get("seq")}))
        return user_id

    def _attach(
        self, socket: ServerConnection, user_id: str, query: dict[str, list[str]]
    ) -> SocketState:
        """PopulateWebConnConfig, then writePump's start: resume or start afresh."""
        connection_id = (query.get("connection_id") or [""])[0]
        sequence = (query.get("sequence_number") or [""])[0]
        with self._lock:
            self._reap()
            state = self.states.get(connection_id)
            if state is None or state.user_id != user_id or state.socket is not None:
                state = SocketState(_new_id(), user_id)
                self.states[state.connection_id] = state
                state.socket = socket
                self._send(state, self._hello(state))
            else:
                wanted = int(sequence) if sequence.isdigit() else -1
                state.socket = socket
                state.active_at = time.monotonic()  # a new WebConn on the old queues
                kept = [seq for seq, _ in state.dead]
                if wanted in kept:  # drainDeadQueue: sent again, same seqs
                    for seq, text in list(state.dead):
                        if seq >= wanted:
                            self._write(state, text)
                elif kept and kept[-1] != wanted - 1:  # hasMsgLoss
                    del self.states[state.connection_id]
                    state.connection_id = _new_id()
                    self.states[state.connection_id] = state
                    state.dead.clear()
                    state.sequence = 0
                    self._send(state, self._hello(state))
            pending, state.pending = state.pending, []
            for event in pending:
                self._send(state, event)
            return state

    def _hello(self, state: SocketState) -> dict[str, Any]:
        return {
            "event": "hello",
            "data": {"connection_id": state.connection_id, "server_version": SERVER_VERSION},
            "broadcast": {
                "omit_users": None,
                "user_id": state.user_id,
                "channel_id": "",
                "team_id": "",
                "connection_id": "",
                "omit_connection_id": "",
            },
        }


def _abort(socket: ServerConnection) -> None:
    """Close the TCP connection without a close frame."""
    try:
        import socket as sockets

        socket.socket.shutdown(sockets.SHUT_RDWR)
    except OSError:
        pass
