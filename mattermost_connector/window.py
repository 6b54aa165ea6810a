"""Backfill windows: [start, end) given as ISO 8601 or epoch seconds, checked with clear errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from mattermost_connector.errors import ConfigError
from mattermost_connector.kinds import RunKind

_EPOCH = re.compile(r"^\d+(\.\d+)?$")
# Epoch seconds from here on are past the year 5000: such a number is milliseconds
# (Mattermost's own unit, as in create_at), not a time anyone backfills.
MILLISECONDS_FROM = 10**11


def parse_instant(value: object, name: str) -> int:
    """Epoch milliseconds from epoch seconds or ISO 8601 (a date, or a time; UTC if no offset)."""
    text = str(value).strip() if value is not None else ""
    if _EPOCH.match(text):
        seconds = float(text)
        if seconds >= MILLISECONDS_FROM:
            raise ConfigError(
                f"{name}: {text} looks like epoch milliseconds (Mattermost's unit): give epoch "
                f"seconds ({int(seconds) // 1000}) or ISO 8601"
            )
        return int(seconds * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{name}: {text!r} is not a time: use ISO 8601 (2024-01-31 or 2024-01-31T12:00:00Z) "
            "or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_window(start: object, end: object) -> tuple[int, int]:
    start_ms, end_ms = parse_instant(start, "start"), parse_instant(end, "end")
    if end_ms <= start_ms:
        raise ConfigError(
            f"end ({iso(end_ms)}) must be after start ({iso(start_ms)}): the window is [start, end)"
        )
    return start_ms, end_ms


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def backfill_key(channel_id: str, start_ms: int, end_ms: int) -> str:
    """Where a backfill keeps its own cursor: rerunning the same window continues it."""
    return f"{RunKind.BACKFILL}:{channel_id}:{start_ms}:{end_ms}"
