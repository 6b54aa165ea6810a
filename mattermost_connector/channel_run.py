"""The record of one channel's run as it moves through the pipeline's steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.delivery import Work
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.stix import ChannelContext, Upload
from mattermost_connector.wording import amount


@dataclass
class ChannelRun:
    channel_id: str
    kind: RunKind
    run_id: int
    context: ChannelContext
    cursor: Cursor
    last_post_at: int
    work: Work
    spool: Path
    start_ms: int = 0
    server_start_ms: int = 0
    cursor_key: str = ""  # the channel id for a sync; a backfill keeps its own per window
    end_ms: int | None = None  # a backfill stops before this creation time
    cursor_before: Cursor | None = None  # where the run opened
    # the channel's total_msg_count when the run opened it: an estimate of its posts, and what
    # the changes pass compares with the next run's count
    total_posts: int = 0
    listed: int = 0  # posts listed by the new-posts pass that this count grew by (see changes)
    ahead: int = 0  # and those listed that it does not have yet: the next run's count will
    counts: Counts = field(default_factory=Counts)
    posts_before: int = 0  # delivered by earlier runs (of this cursor)
    note: str | None = None  # why every post was checked (changes.FULL_CHECK_REASONS)

    def delivering(self, bundles: list[BundleFile]) -> ChannelRun:
        """The run as it stands once `bundles` are delivered: at the last cursor one of them
        carries, their files, objects and bundles counted."""
        delivered = Counts(
            files=sum(b.files for b in bundles),
            objects=sum(b.objects for b in bundles),
            bundles=len(bundles),
        )
        return replace(
            self,
            cursor=next((b.cursor for b in reversed(bundles) if b.cursor), self.cursor),
            counts=self.counts + delivered,
        )


@dataclass
class Batch:
    """Posts to deliver together, oldest first, and the cursor that holds once they are."""

    posts: list[dict[str, Any]]
    users: dict[str, dict[str, Any]]
    cursor: Cursor | None  # None: delivering this batch does not move the cursor
    exhausted: bool
    # what delivering it adds to the run's counts, beyond its bundles' files and objects:
    # new posts and skipped ones, or posts found behind the cursor, edited, deleted
    counts: Counts = field(default_factory=Counts)
    listed: int = 0  # new posts the channel's message count grew by (changes.listed_since)
    ahead: int = 0  # new posts created after the count was read
    seen: list[str] = field(default_factory=list)  # to mark as listed once delivered
    missing_roots: list[str] = field(default_factory=list)
    # roots of replies in `posts` that are not in it, as last delivered (or being delivered)
    roots: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class BundleFile:
    """A bundle written to the run's spool, and what delivering it settles."""

    path: Path
    objects: int
    files: int  # attachments delivered (embedded or uploaded)
    posts: list[dict[str, Any]]  # as delivered, for the delivered_posts table
    attachments: list[dict[str, Any]]  # attachments rows (embedded, too large, failed)
    cursor: Cursor | None  # where the channel stands once this bundle is delivered
    uploads: list[Upload] = field(default_factory=list)  # sent to the platform before it
    sequence: int | None = None  # its place among the channel run's bundles, from 1


@dataclass(frozen=True)
class ChannelResult:
    channel_id: str
    name: str | None
    kind: RunKind
    status: RunStatus
    counts: Counts = field(default_factory=Counts)  # with the run's files by fate
    error: str | None = None
    cursor_before: Cursor | None = None
    cursor_after: Cursor | None = None
    # what the operator should know of a run that went well: "unchanged" (found so by the
    # probe, no pipeline run), or why every post was checked and what would avoid it
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing for the operator to fix: done, or archived and refused (`error` says why)."""
        return self.status in (RunStatus.COMPLETED, RunStatus.ARCHIVED)

    def summary(self) -> str:
        label = f"channel {self.channel_id}" + (f" ({self.name})" if self.name else "")
        if self.status == RunStatus.ARCHIVED:
            return f"{label}: {self.error}"
        counts = self.counts
        fates = f" ({counts.fates_text()})" if counts.fates else ""
        if not self.ok:
            return f"{label}: FAILED: {self.error}" + (f"; files{fates}" if fates else "")
        if self.note == UNCHANGED:
            return f"{label}: unchanged"
        return (
            f"{label}: ok, {amount(counts.posts, 'post')}, {amount(counts.files, 'file')}{fates}, "
            f"{amount(counts.objects, 'object')}"
            + (f", {counts.skipped} skipped" if counts.skipped else "")
            + (f"; {self.note}" if self.note else "")
        )

    def row(self) -> dict[str, Any]:
        """The result as the flow's report holds it: plain values, one key per count."""
        counts = self.counts
        return {
            "channel_id": self.channel_id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            **{name: getattr(counts, name) for name in REPORTED},
            "error": self.error,
            "cursor_before": self.cursor_before.to_dict() if self.cursor_before else None,
            "cursor_after": self.cursor_after.to_dict() if self.cursor_after else None,
            "fates": dict(counts.fates),
            "note": self.note,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ChannelResult:
        def cursor(data: Mapping[str, Any] | None) -> Cursor | None:
            return Cursor.from_dict(dict(data)) if data else None

        return cls(
            channel_id=row["channel_id"],
            name=row["name"],
            kind=RunKind(row["kind"]),
            status=RunStatus(row["status"]),
            counts=Counts(**{name: row[name] for name in REPORTED}, fates=row.get("fates") or {}),
            error=row["error"],
            cursor_before=cursor(row["cursor_before"]),
            cursor_after=cursor(row["cursor_after"]),
            note=row.get("note"),
        )


UNCHANGED = "unchanged"  # the note of a channel the probe found with nothing to do

# the counts a report shows per channel (bundles only in the OpenCTI work's message)
REPORTED = ("posts", "files", "objects", "skipped", "updated", "deleted")
