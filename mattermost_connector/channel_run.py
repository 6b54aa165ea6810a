"""The record of one channel's run as it moves through the pipeline's steps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mattermost_connector.delivery import Work
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.mattermost.posts import Cursor
from mattermost_connector.stix import ChannelContext, Upload


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
    msg_count: int = 0  # the channel's total_msg_count when this run opened it
    listed: int = 0  # posts listed by the new-posts pass that this count grew by (see changes)
    ahead: int = 0  # and those listed that it does not have yet: the next run's count will
    posts: int = 0
    files: int = 0
    objects: int = 0
    skipped: int = 0
    updated: int = 0
    deleted: int = 0
    bundles: int = 0
    total_posts: int = 0  # the channel's total_msg_count when the run began: an estimate
    posts_before: int = 0  # delivered by earlier runs (of this cursor)

    def delivering(self, bundles: list[BundleFile]) -> ChannelRun:
        """The run as it stands once `bundles` are delivered: at the last cursor one of them
        carries, their files, objects and bundles counted."""
        return replace(
            self,
            cursor=next((b.cursor for b in reversed(bundles) if b.cursor), self.cursor),
            files=self.files + sum(b.files for b in bundles),
            objects=self.objects + sum(b.objects for b in bundles),
            bundles=self.bundles + len(bundles),
        )


@dataclass
class Batch:
    """Posts to deliver together, oldest first, and the cursor that holds once they are."""

    posts: list[dict[str, Any]]
    users: dict[str, dict[str, Any]]
    cursor: Cursor | None  # None: delivering this batch does not move the cursor
    exhausted: bool
    skipped: int = 0
    updated: int = 0
    deleted: int = 0
    added: int = 0  # posts never delivered before, found behind the cursor
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


# What becomes of a file: in its message, an Artifact linked to it (its bytes in a message
# of their own, or uploaded), over MATTERMOST_MAX_ATTACHMENT_SIZE, not fetched or not
# uploaded after retries (tried again next run), or gone with its post.
FATES = ("embedded", "uploaded", "too_large", "failed", "gone")


@dataclass(frozen=True)
class ChannelResult:
    channel_id: str
    name: str | None
    kind: RunKind
    status: RunStatus
    posts: int = 0
    files: int = 0
    objects: int = 0
    skipped: int = 0
    updated: int = 0
    deleted: int = 0
    error: str | None = None
    cursor_before: Cursor | None = None
    cursor_after: Cursor | None = None
    fates: dict[str, int] = field(default_factory=dict)  # files by fate (FATES)

    @property
    def ok(self) -> bool:
        """Nothing for the operator to fix: done, or archived and refused (`error` says why)."""
        return self.status in (RunStatus.COMPLETED, RunStatus.ARCHIVED)

    def fates_text(self) -> str:
        """`3 embedded, 1 uploaded, 1 failed`: every fate a file of the run met."""
        return ", ".join(
            f"{self.fates[f]} {f.replace('_', ' ')}" for f in FATES if self.fates.get(f)
        )

    def summary(self) -> str:
        label = f"channel {self.channel_id}" + (f" ({self.name})" if self.name else "")
        if self.status == RunStatus.ARCHIVED:
            return f"{label}: {self.error}"
        fates = f" ({self.fates_text()})" if self.fates else ""
        if not self.ok:
            return f"{label}: FAILED: {self.error}" + (f"; files{fates}" if fates else "")
        return (
            f"{label}: ok, {self.posts} posts, {self.files} files{fates}, {self.objects} objects"
            + (f", {self.skipped} skipped" if self.skipped else "")
        )
