"""`mattermost-connector status`: where each channel stands and how the last runs went."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from mattermost_connector.kinds import RunKind
from mattermost_connector.state import StateStore
from mattermost_connector.window import iso


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [
        [str(c) for c in headers],
        *[["" if c is None else str(c) for c in row] for row in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    """A moment of the run history in the same form as the cursors beside it (ISO 8601, UTC,
    `Z`), to the second: one timestamp form in the whole output. The store keeps UTC."""
    if moment is None:
        return ""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _day_or_time(epoch_ms: int) -> str:
    """A window bound as given: `2024-01-31` for a midnight, the full time otherwise."""
    text = iso(epoch_ms)
    return text.removesuffix("T00:00:00Z")


def parse_backfill_key(key: str) -> tuple[str, int, int] | None:
    """(channel id, start ms, end ms) of a backfill window's cursor key, else None."""
    parts = key.split(":")
    if len(parts) == 4 and parts[0] == RunKind.BACKFILL and (parts[2] + parts[3]).isdigit():
        return parts[1], int(parts[2]), int(parts[3])
    return None


def report(store: StateStore, runs: int = 10) -> str:
    names = store.channel_names()
    cursors, windows = [], []
    for row in store.cursors():
        cursor = row["cursor"]
        window = parse_backfill_key(row["channel_id"])
        if window:
            channel_id, start_ms, end_ms = window
            windows.append(
                (
                    channel_id,
                    names.get(channel_id, ""),
                    f"{_day_or_time(start_ms)} to {_day_or_time(end_ms)}",
                    iso(min(cursor.boundary_ms, end_ms)),
                    row["posts_delivered"],
                    _when(row["updated_at"]),
                )
            )
            continue
        cursors.append(
            (
                row["channel_id"],
                names.get(row["channel_id"], ""),
                iso(cursor.boundary_ms),
                row["posts_delivered"],
                iso(cursor.changes_ms) if cursor.changes_ms else "",
                _when(row["updated_at"]),
            )
        )
    recent = []
    for run in store.runs(limit=runs):
        seconds = (run.ended_at - run.started_at).total_seconds() if run.ended_at else None
        recent.append(
            (
                run.id,
                run.kind,
                run.channel_id,
                names.get(run.channel_id, ""),
                _when(run.started_at),
                f"{seconds:.0f}s" if seconds is not None else "",
                run.status,
                run.posts,
                run.files,
                run.objects,
                (run.error or "")[:120],
            )
        )
    parts = [
        "Channels (cursor: every post created before it is delivered)",
        table(["channel", "name", "cursor", "posts", "edits checked from", "updated"], cursors)
        if cursors
        else "  none synced yet",
    ]
    if windows:
        parts += [
            "",
            "Backfill windows (each keeps its own cursor; reached: delivered up to)",
            table(["channel", "name", "window", "reached", "posts", "updated"], windows),
        ]
    parts += [
        "",
        f"Last {runs} run{'s' if runs != 1 else ''}",
        table(
            [
                "run",
                "kind",
                "channel",
                "name",
                "started",
                "took",
                "status",
                "posts",
                "files",
                "objects",
                "error or note",
            ],
            recent,
        )
        if recent
        else "  no runs yet",
    ]
    return "\n".join(parts)
