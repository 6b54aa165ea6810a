"""`mattermost-connector status`: where each channel stands and how the last runs went."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

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
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def report(store: StateStore, runs: int = 10) -> str:
    cursors = [
        (
            row["channel_id"],
            iso(row["cursor"]["boundary_ms"]),
            row["posts_delivered"],
            iso(row["cursor"]["changes_ms"]) if row["cursor"].get("changes_ms") else "",
            _when(row["updated_at"]),
        )
        for row in store.cursors()
    ]
    recent = []
    for run in store.runs(limit=runs):
        seconds = (run.ended_at - run.started_at).total_seconds() if run.ended_at else None
        recent.append(
            (
                run.id,
                run.kind,
                run.channel_id,
                _when(run.started_at),
                f"{seconds:.0f}s" if seconds is not None else "",
                run.status,
                run.posts,
                run.files,
                run.objects,
                (run.error or "")[:80],
            )
        )
    parts = [
        "Channels (cursor: every post created before it is delivered)",
        table(["channel", "cursor", "posts", "edits checked from", "updated"], cursors)
        if cursors
        else "  none synced yet",
        "",
        f"Last {runs} runs",
        table(
            [
                "run",
                "kind",
                "channel",
                "started",
                "took",
                "status",
                "posts",
                "files",
                "objects",
                "error",
            ],
            recent,
        )
        if recent
        else "  no runs yet",
    ]
    return "\n".join(parts)
