"""Edits and deletions of posts already delivered.

`since` finds what changed, but stops at 1000 rows picked in no order: when it may have been
cut, the caller falls back to a complete listing compared with what was delivered, then to a
sweep of the delivered posts that listing no longer returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.state import message_digest

SINCE_CAP = 1000
# Edits are looked for from a little before the last run started, by the server's clock:
# a post edited while that run was reading it must not fall between two runs.
CHANGES_MARGIN_MS = 5 * 60 * 1000

Post = dict[str, Any]


@dataclass
class ChangeScan:
    posts: list[Post]
    capped: bool


def is_system(post: Mapping[str, Any]) -> bool:
    return str(post.get("type") or "").startswith("system_")


def deleted_version(stored: Mapping[str, Any], delete_at: int) -> Post:
    """A deleted post as we last delivered it: the server now answers an empty message."""
    return {
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


def delivered_version(stored: Mapping[str, Any]) -> Post:
    """A post as we last delivered it (deleted or not), e.g. a thread root that a reply's
    bundle must hold: its text and times, not its files."""
    post = deleted_version(stored, int(stored.get("delete_at") or 0))
    post["update_at"] = stored["update_at"]
    return post


def stale(rows: Iterable[Post], delivered: Mapping[str, Mapping[str, Any]]) -> list[Post]:
    """The rows whose delivered version is out of date: edited text, or deleted since.

    Edit-history rows (`original_id` set) are copies of old versions, never messages; a bump
    of `update_at` alone (reaction, pin, new reply) changes nothing we deliver.
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
            or message_digest(row.get("message") or "") != stored["message_sha256"]
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
