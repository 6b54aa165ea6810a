"""Where a channel stands: the `Cursor` every layer passes along (the walk advances it, the
state store keeps it, bundles carry it). A module of its own, below both the Mattermost
client and the state store, so that neither imports it from the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Post = dict[str, Any]


@dataclass(frozen=True)
class Cursor:
    """Every post created before `boundary_ms`, and those of `boundary_ids` created at it, are
    taken; `after=anchor_id` lists everything else (no anchor: locate one by time first)."""

    boundary_ms: int
    boundary_ids: tuple[str, ...] = ()
    anchor_id: str | None = None
    # edits and deletions made after this time (server ms) are still to be looked for
    changes_ms: int | None = None
    # when changes were last checked: the channel's total_msg_count and last_post_at, and how
    # many posts that run listed after that last_post_at. A count that grew by more than the
    # posts seen since means some came in behind the cursor (see changes.py).
    messages: tuple[int, int, int] | None = None

    @classmethod
    def start_at(cls, epoch_seconds: int) -> Cursor:
        return cls(boundary_ms=epoch_seconds * 1000)

    def wants(self, post: Post) -> bool:
        created = post["create_at"]
        return created > self.boundary_ms or (
            created == self.boundary_ms and post["id"] not in self.boundary_ids
        )

    def advance(self, post: Post) -> Cursor:
        """The cursor once `post` (the newest so far) is taken too."""
        created = post["create_at"]  # run for every post: built directly, not by replace()
        if created > self.boundary_ms:
            anchor = self.boundary_ids[0] if self.boundary_ids else self.anchor_id
            return Cursor(created, (post["id"],), anchor, self.changes_ms, self.messages)
        if created == self.boundary_ms and post["id"] not in self.boundary_ids:
            return Cursor(
                created,
                (*self.boundary_ids, post["id"]),
                self.anchor_id,
                self.changes_ms,
                self.messages,
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "boundary_ms": self.boundary_ms,
            "boundary_ids": list(self.boundary_ids),
            "anchor_id": self.anchor_id,
            "changes_ms": self.changes_ms,
            "messages": list(self.messages) if self.messages else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cursor:
        messages = data.get("messages")
        return cls(
            boundary_ms=int(data["boundary_ms"]),
            boundary_ids=tuple(data.get("boundary_ids") or ()),
            anchor_id=data.get("anchor_id"),
            changes_ms=data.get("changes_ms"),
            messages=(int(messages[0]), int(messages[1]), int(messages[2])) if messages else None,
        )
