"""Mattermost WebSocket events, as the server sends them (server/public/model/websocket_message.go):
`{"event", "data", "broadcast", "seq"}`; a post event's `data.post` is a JSON string."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

POSTED, POST_EDITED, POST_DELETED, HELLO = "posted", "post_edited", "post_deleted", "hello"
POST_EVENTS = frozenset({POSTED, POST_EDITED, POST_DELETED})


@dataclass(frozen=True)
class LiveEvent:
    """One event: its name and `seq`; for a post event, its channel and post; for `hello`,
    the connection id. `gap`: events may have been missed right before this one."""

    name: str
    seq: int | None
    channel_id: str | None = None
    post: dict[str, Any] | None = None
    connection_id: str | None = None
    gap: bool = False


def parse_event(text: str | bytes) -> LiveEvent | None:
    """The event in a text frame; None for a reply to one of our actions (`seq_reply`) or a
    frame that is not an event."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        return None
    data = message.get("data") or {}
    seq = message.get("seq")
    seq = seq if isinstance(seq, int) else None
    name = message["event"]
    if name == HELLO:
        return LiveEvent(name, seq, connection_id=str(data.get("connection_id") or ""))
    if name in POST_EVENTS:
        post = _post(data.get("post"))
        broadcast = message.get("broadcast") or {}
        channel = (post or {}).get("channel_id") or broadcast.get("channel_id") or None
        return LiveEvent(name, seq, channel_id=channel, post=post)
    return LiveEvent(name, seq)


def _post(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
