"""Names: those each object had when first imported (STIX ids derive from them, see stix.py),
and channel names as last resolved (`<team>/<channel>`, for `status`, which reads only the
store)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from mattermost_connector.state.schema import (
    EngineBound,
    channel_names,
    first_names,
    insert_construct,
    upsert,
    utc_now,
)


def _first_names(connection: Connection, kind: str, ids: list[str]) -> dict[str, str]:
    table, found = first_names, {}
    for start in range(0, len(ids), 500):
        query = (
            sa.select(table.c.object_id, table.c.value)
            .where(table.c.kind == kind)
            .where(table.c.object_id.in_(ids[start : start + 500]))
        )
        found.update({row[0]: row[1] for row in connection.execute(query)})
    return found


class NameStore(EngineBound):
    def pin_names(self, kind: str, current: dict[str, str]) -> dict[str, str]:
        """The value first recorded for each object of `kind`, recording `current` for those
        seen for the first time. Concurrent callers agree: the first insert wins."""
        if not current:
            return {}
        table, now = first_names, utc_now()
        ids = list(current)
        with self._engine.begin() as connection:
            found = _first_names(connection, kind, ids)
            rows = [
                {"kind": kind, "object_id": i, "value": current[i], "recorded_at": now}
                for i in ids
                if i not in found
            ]
            if rows:
                insert = insert_construct(connection.dialect.name)
                if insert is not None:
                    connection.execute(insert(table).on_conflict_do_nothing(), rows)
                else:
                    for row in rows:
                        try:
                            with connection.begin_nested():
                                connection.execute(table.insert(), row)
                        except IntegrityError:
                            pass
                found = _first_names(connection, kind, ids)
        return found

    def remember_name(self, channel_id: str, name: str) -> None:
        self.remember_names({channel_id: name})

    def remember_names(self, names: dict[str, str]) -> None:
        """Channel names as last resolved, for `status` (one statement for many)."""
        if not names:
            return
        now = utc_now()
        rows = [{"channel_id": c, "name": n, "updated_at": now} for c, n in names.items()]
        with self._engine.begin() as connection:
            upsert(connection, channel_names, "channel_id", rows, ("name", "updated_at"))

    def channel_names(self) -> dict[str, str]:
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(channel_names.c.channel_id, channel_names.c.name))
            return {channel_id: name for channel_id, name in rows}
