"""What a run delivered and noticed, one type from a batch to the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from mattermost_connector.kinds import AttachmentFate


@dataclass(frozen=True)
class Counts:
    """Posts delivered, files delivered with them (embedded or uploaded), STIX objects sent,
    system messages skipped, posts re-delivered as edited or deleted, bundles sent, and the
    run's files by fate. Added up with `+` as batches and bundles are delivered."""

    posts: int = 0
    files: int = 0
    objects: int = 0
    skipped: int = 0
    updated: int = 0
    deleted: int = 0
    bundles: int = 0
    fates: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        fates = dict(self.fates)
        for fate, count in other.fates.items():
            fates[fate] = fates.get(fate, 0) + count
        return Counts(
            *(getattr(self, name) + getattr(other, name) for name in COUNTERS), fates=fates
        )

    def fates_text(self) -> str:
        """`3 embedded, 1 uploaded, 1 failed`: every fate a file of the run met."""
        return ", ".join(
            f"{self.fates[f]} {f.replace('_', ' ')}" for f in AttachmentFate if self.fates.get(f)
        )


COUNTERS = tuple(f.name for f in fields(Counts) if f.name != "fates")
