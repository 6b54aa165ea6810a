"""Who works on a channel: one run at a time, across processes and machines sharing the store."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mattermost_connector.state.schema import EngineBound, channel_leases, utc_now


class ChannelLeases(EngineBound):
    def try_lease(self, channel_id: str, holder: str, seconds: float) -> bool:
        """Take the channel if it is free or its lease ran out (a holder that died); renew it
        if `holder` has it already."""
        table, now = channel_leases, utc_now()
        until = now + timedelta(seconds=seconds)
        with self._engine.begin() as connection:
            taken = connection.execute(
                table.update()
                .where(table.c.channel_id == channel_id)
                .where(sa.or_(table.c.holder == holder, table.c.expires_at < now))
                .values(holder=holder, expires_at=until)
            ).rowcount
            if taken:
                return True
            try:
                with connection.begin_nested():
                    connection.execute(
                        table.insert().values(
                            channel_id=channel_id, holder=holder, expires_at=until
                        )
                    )
            except IntegrityError:
                return False
            return True

    def lease_holder(self, channel_id: str) -> tuple[str, datetime] | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(channel_leases.c.holder, channel_leases.c.expires_at).where(
                    channel_leases.c.channel_id == channel_id
                )
            ).first()
        return (row[0], row[1]) if row else None

    def release_lease(self, channel_id: str, holder: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                channel_leases.delete()
                .where(channel_leases.c.channel_id == channel_id)
                .where(channel_leases.c.holder == holder)
            )
