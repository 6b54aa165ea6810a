"""The kinds of run, the states a run goes through and the fates of files, as the state store
keeps them. StrEnums: each member equals its stored string, so rows written before them read
the same."""

from __future__ import annotations

from enum import StrEnum


class RunKind(StrEnum):
    SYNC = "sync"  # from the channel's cursor onwards, edits and deletions included
    BACKFILL = "backfill"  # one window [since, until), under its own cursor


class RunStatus(StrEnum):
    RUNNING = "running"  # or its process died: the next run of the channel closes it as failed
    COMPLETED = "completed"
    FAILED = "failed"
    ARCHIVED = "archived"  # skipped: the server lets no one read archived channels


class AttachmentFate(StrEnum):
    """What becomes of a file, as the attachments table stores it (in this order in reports)."""

    EMBEDDED = "embedded"  # its bytes in its message
    UPLOADED = "uploaded"  # an Artifact linked to it (bytes in a message of their own, or uploaded)
    TOO_LARGE = "too_large"  # over MATTERMOST_MAX_ATTACHMENT_SIZE
    FAILED = "failed"  # not fetched or not uploaded after retries: tried again next run
    GONE = "gone"  # its post is gone: it will not come back
