"""The kinds of run and the states a run goes through, as run history stores them. StrEnums:
each member equals its stored string, so rows written before them read the same."""

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
