"""Edits and deletions of posts already delivered, and posts that appeared behind the cursor.

`since` finds what changed, but stops at 1000 rows picked in no order: when it may have been
cut, the caller falls back to a complete listing compared with what was delivered, then to a
sweep of the delivered posts that listing no longer returns.

A post can also appear with a `create_at` older than what was delivered (an integration or an
admin setting it, `mmctl import`, shared channels): the server keeps that time and sets
`update_at` to it (model/post.go PreSave), so the cursor is past it, and `since` sees it only if
that time is after its watermark. The channel's `total_msg_count` still grows by one for it
(post_store.go SaveMultiple), while `last_post_at` does not move (GREATEST): a count that grew by
more than the posts seen since the last check calls for the complete listing, which imports
every live post never delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mattermost_connector import integration_posts
from mattermost_connector.cursor import Cursor
from mattermost_connector.mattermost.client import MattermostClient

SINCE_CAP = 1000
# Changes are looked for from a little before the last check, by the server's clock: the
# margin covers a change the server had stamped but not yet committed when that check read.
# The server's facts: `update_at` is model.GetMillis() on the app server just before the
# store writes the row (Post.PreSave / PreUpdate), so the row becomes visible at most one
# write transaction later, and SqlSettings.QueryTimeout (30 s by default) cancels any
# statement running longer. The check's time is the server's own (its Date header, which
# HTTP truncates to the second: up to 1 s early, the safe side), so our clock plays no part.
# Application nodes of a cluster each stamp with their own clock: NTP keeps them within
# milliseconds of each other, well inside the margin. 5 minutes (before) made a channel that
# got more than 1,000 changes within 5 minutes of a run pay the full check at the next run
# too; with 30 s only a burst in the last 30 s before a run does.
# Read replicas: `since` reads a replica (post_store.go GetPostsSince, GetReplicaX), which can
# lag the master. A change stamped at T is seen by a check at C only once replicated; the next
# check reads from C - margin, so a change replicated later than T + margin is never listed by
# `since`: the margin covers a replica lag of up to about 30 s, not more (PostgreSQL streaming
# replicas lag by milliseconds to seconds when healthy). Beyond it, an edit or deletion made
# then is missed by scheduled syncs until the post changes again or a full check runs; in live
# mode the event carries it (live/witness.py), as long as no gap comes before that run.
CHANGES_MARGIN_MS = 30 * 1000

Post = dict[str, Any]


# Posts the server leaves out of a channel's total_msg_count (model/post.go IsJoinLeaveMessage,
# used by post_store.go SaveMultiple).
JOIN_LEAVE_TYPES = frozenset(
    {
        "system_join_leave",
        "system_add_remove",
        "system_join_channel",
        "system_leave_channel",
        "system_join_team",
        "system_leave_team",
        "system_add_to_channel",
        "system_remove_from_channel",
        "system_add_to_team",
        "system_remove_from_team",
    }
)


def is_system(post: Mapping[str, Any]) -> bool:
    return str(post.get("type") or "").startswith("system_")


def counted(post: Mapping[str, Any]) -> bool:
    """Whether the server counted this post in its channel's total_msg_count."""
    return (post.get("type") or "") not in JOIN_LEAVE_TYPES


def listed_since(
    posts: Iterable[Post], checked: tuple[int, int, int] | None, last_post_at: int
) -> tuple[int, int]:
    """Of the posts a run listed that the server counts: those created after the last_post_at
    of the last check and no later than the one this run read when it opened the channel (the
    count it read grew by them), and those created after it (the next run's count will have
    them, though that run will not list them)."""
    after = checked[1] if checked else None
    within = ahead = 0
    for post in posts:
        if counted(post):
            created = post["create_at"]
            if created > last_post_at:
                ahead += 1
            elif after is not None and created > after:
                within += 1
    return within, ahead


@dataclass
class SinceFindings:
    """What the rows `since` returned tell: posts to deliver again (edited, deleted), posts
    never delivered that lie behind the cursor (`behind`), and how many posts the server
    counted that the new-posts listing could not have returned (`unlisted`)."""

    stale: list[Post]
    behind: list[Post]
    unlisted: int


def examine_since(
    rows: list[Post],
    delivered: Mapping[str, Mapping[str, Any]],
    since_ms: int,
    *,
    opened_at: Cursor,
    start_ms: int,
    include_system: bool,
    checked: tuple[int, int, int] | None,
    last_post_at: int,
) -> SinceFindings:
    """Sort out `since`'s rows. Only rows changed after `since_ms` count (the others are roots
    sent along). A live row never delivered that the cursor the run `opened_at` did not want
    was created behind it: delivered now if not before `start_ms`. A deleted row never
    delivered, created after the last check, was created and deleted between two runs: the
    listing never showed it, but the count has it. System messages left out of the import are
    left out here too (the listing saw them and the count has them already)."""
    behind: list[Post] = []
    unlisted = 0
    after = checked[1] if checked else last_post_at
    for row in rows:
        if row["update_at"] <= since_ms or row.get("original_id") or row["id"] in delivered:
            continue
        if is_system(row) and not include_system:
            continue
        if row.get("delete_at"):
            unlisted += counted(row) and after < row["create_at"] <= last_post_at
        elif not opened_at.wants(row):
            unlisted += counted(row)
            if row["create_at"] >= start_ms:
                behind.append(row)
    behind.sort(key=lambda post: (post["create_at"], post["id"]))
    return SinceFindings(stale(rows, delivered), behind, unlisted)


def unaccounted(checked: tuple[int, int, int] | None, total_msg_count: int, seen: int) -> int:
    """How many posts the channel's count grew by since it was `checked`, beyond the `seen`
    ones and those the checking run listed ahead: more than zero means some came in where no
    listing looked."""
    if checked is None:
        return 0
    return total_msg_count - checked[0] - checked[2] - seen


def deleted_version(stored: Mapping[str, Any], delete_at: int) -> Post:
    """A deleted post as we last delivered it: the server now answers an empty message (and
    no priority), so its text and an integration's attachments are the ones kept."""
    post = {
        "id": stored["post_id"],
        "root_id": stored.get("root_id") or "",
        "user_id": stored["user_id"],
        "create_at": stored["create_at"],
        "update_at": delete_at,
        "edit_at": stored.get("edit_at") or 0,
        "delete_at": delete_at,
        "message": stored["message"],
        "type": "",
        "file_ids": [],
        "metadata": {},
    }
    return integration_posts.restored(post, integration_posts.decode(stored.get("integration")))


def delivered_version(stored: Mapping[str, Any]) -> Post:
    """A post as we last delivered it (deleted or not), e.g. a thread root that a reply's
    bundle must hold: its text and times, not its files."""
    post = deleted_version(stored, int(stored.get("delete_at") or 0))
    post["update_at"] = stored["update_at"]
    return post


def stale(rows: Iterable[Post], delivered: Mapping[str, Mapping[str, Any]]) -> list[Post]:
    """The rows whose delivered version is out of date: edited text or attachments (or
    priority, or webhook name: integration_posts.digest), or deleted since.

    Edit-history rows (`original_id` set) are copies of old versions, never messages; a bump
    of `update_at` alone (reaction, pin, new reply) changes nothing we deliver. An attachment
    changed through the API sets `edit_at` on current servers (app/post.go UpdatePost:
    `AttachmentsEqual`), not on older ones nor through a plugin's SafeUpdate: the digest
    sees it either way.
    """
    found: dict[str, Post] = {}
    for row in rows:
        if row.get("original_id"):
            continue
        stored = delivered.get(row["id"])
        if stored is None:
            continue
        if row.get("delete_at"):
            if not stored["delete_at"]:
                found[row["id"]] = deleted_version(stored, int(row["delete_at"]))
        elif (
            int(row.get("edit_at") or 0) != stored["edit_at"]
            or integration_posts.digest(row) != stored["message_sha256"]
        ):
            found[row["id"]] = row
    return sorted(found.values(), key=lambda post: (post["create_at"], post["id"]))


def scan_since(client: MattermostClient, channel_id: str, since_ms: int) -> list[Post] | None:
    """Rows changed after `since_ms`, or None when the answer may have been cut at 1000."""
    rows = client.posts(channel_id, since=since_ms)
    changed = sum(1 for row in rows if row["update_at"] > since_ms)
    if changed >= SINCE_CAP:
        return None
    return rows


class FullCheck(StrEnum):
    """Why `since` cannot be trusted this run, and every post is checked instead."""

    CAPPED = "capped"  # `since` may have been cut at 1000 rows
    UNCOUNTED = "uncounted"  # the channel counts posts that no listing returned


FULL_CHECK_REASONS = {
    FullCheck.CAPPED: (
        "full check: 1,000 or more posts changed since the last run (Mattermost's `since` "
        "returns 1,000 at most); a shorter CONNECTOR_RUN_EVERY (or live mode, where available) "
        "keeps a busy channel under it"
    ),
    FullCheck.UNCOUNTED: (
        "full check: the server counts posts no listing returned (created with an earlier "
        "time, or imported)"
    ),
}


@dataclass(frozen=True)
class ChangesVerdict:
    """The edits/deletions decision: trust `since` (deliver `stale` again and the posts found
    `behind` the cursor), or do the full check and the sweep (`full_check` says why)."""

    full_check: FullCheck | None
    stale: list[Post] = field(default_factory=list)
    behind: list[Post] = field(default_factory=list)
    missing: int = 0  # posts counted by the server beyond those listed (UNCOUNTED)

    @property
    def note(self) -> str | None:
        """Why every post was checked, and what would avoid it: for the report and `status`."""
        return FULL_CHECK_REASONS[self.full_check] if self.full_check else None


def judge_since(
    rows: list[Post] | None,
    delivered: Callable[[Iterable[str]], Mapping[str, Mapping[str, Any]]],
    since_ms: int,
    *,
    opened_at: Cursor,
    start_ms: int,
    include_system: bool,
    msg_count: int,
    listed: int,
    last_post_at: int,
) -> ChangesVerdict:
    """`since`'s rows (None: possibly cut, `scan_since`) trusted or not. Trusted only if the
    channel's message count, read when the run opened it, grew by no more than the posts
    the run listed (`listed`) and those `since` shows that no listing could return."""
    if rows is None:
        return ChangesVerdict(FullCheck.CAPPED)
    found = examine_since(
        rows,
        delivered(row["id"] for row in rows),
        since_ms,
        opened_at=opened_at,
        start_ms=start_ms,
        include_system=include_system,
        checked=opened_at.messages,
        last_post_at=last_post_at,
    )
    missing = unaccounted(opened_at.messages, msg_count, listed + found.unlisted)
    if missing > 0:
        return ChangesVerdict(FullCheck.UNCOUNTED, missing=missing)
    return ChangesVerdict(None, found.stale, found.behind)
