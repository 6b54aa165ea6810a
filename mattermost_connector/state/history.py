"""Run history: one row per run of a channel, opened `running` and closed with its counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mattermost_connector.counts import Counts
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.state.schema import EngineBound, runs, utc_now

INTERRUPTED = "interrupted: its process ended without closing the run (killed or crashed)"


@dataclass(frozen=True)
class RunRecord:
    id: int
    flow_run_id: str | None
    channel_id: str
    kind: RunKind
    started_at: datetime
    ended_at: datetime | None
    status: RunStatus
    posts: int
    files: int
    objects: int
    error: str | None


FIELDS = frozenset(RunRecord.__dataclass_fields__)


def _record(row: dict[str, Any]) -> RunRecord:
    return RunRecord(**{**row, "kind": RunKind(row["kind"]), "status": RunStatus(row["status"])})


class RunHistory(EngineBound):
    def start_run(
        self,
        channel_id: str,
        kind: RunKind,
        flow_run_id: str | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> int:
        """A new `running` row. Call holding the channel's lease: any other row of the channel
        still `running` then belongs to a process that died without closing it (SIGKILL, a
        crash), and is closed as failed here, so that history and `status` tell the truth."""
        with self._engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.channel_id == channel_id)
                .where(runs.c.status == RunStatus.RUNNING)
                .values(status=RunStatus.FAILED, ended_at=utc_now(), error=INTERRUPTED)
            )
            result = connection.execute(
                runs.insert().values(
                    channel_id=channel_id,
                    kind=kind,
                    flow_run_id=flow_run_id,
                    window_start=window[0],
                    window_end=window[1],
                    started_at=utc_now(),
                    status=RunStatus.RUNNING,
                    posts=0,
                    files=0,
                    objects=0,
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        counts: Counts | None = None,
        *,
        error: str | None = None,
    ) -> None:
        """Close the run's row with its outcome and what it delivered. `counts` None: keep
        what the row tallied bundle by bundle (a failed run: what it did deliver)."""
        values: dict[str, Any] = {"status": status, "ended_at": utc_now(), "error": error}
        if counts is not None:
            values.update(posts=counts.posts, files=counts.files, objects=counts.objects)
        with self._engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def run_counts(self, run_id: int) -> Counts:
        """The posts, files and objects run `run_id` recorded as delivered so far."""
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(runs.c.posts, runs.c.files, runs.c.objects).where(runs.c.id == run_id)
            ).first()
        return Counts(posts=row[0], files=row[1], objects=row[2]) if row else Counts()

    def record_unchanged(
        self, channel_ids: list[str], flow_run_id: str | None, note: str = "unchanged"
    ) -> None:
        """One completed row per channel a sync found unchanged, in one statement: the
        history of a 1,000-channel no-op sync costs one round trip, not 2,000."""
        if not channel_ids:
            return
        now = utc_now()
        rows = [
            {
                "channel_id": channel_id,
                "kind": RunKind.SYNC,
                "flow_run_id": flow_run_id,
                "started_at": now,
                "ended_at": now,
                "status": RunStatus.COMPLETED,
                "posts": 0,
                "files": 0,
                "objects": 0,
                "error": note,
            }
            for channel_id in channel_ids
        ]
        with self._engine.begin() as connection:
            connection.execute(runs.insert(), rows)

    def runs(self, limit: int = 20, channel_id: str | None = None) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if channel_id:
            query = query.where(runs.c.channel_id == channel_id)
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings()
            return [_record({k: v for k, v in row.items() if k in FIELDS}) for row in rows]
