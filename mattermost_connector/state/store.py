"""StateStore: every concern of the state store on one engine, as one object."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from mattermost_connector.errors import ConnectorError, one_line
from mattermost_connector.state.deliveries import DeliveryStore
from mattermost_connector.state.files import AttachmentStore
from mattermost_connector.state.history import RunHistory
from mattermost_connector.state.leases import ChannelLeases
from mattermost_connector.state.names import NameStore
from mattermost_connector.state.schema import migrate, open_engine, schema_version


class StateStore(DeliveryStore, AttachmentStore, RunHistory, ChannelLeases, NameStore):
    """Cursors, delivered posts, attachments, runs, leases and names, opened (and migrated)
    from a database URL. Each write is its own committed transaction."""

    def __init__(self, url: str) -> None:
        try:
            super().__init__(open_engine(url))
            self._migrate_racing()
        except (SQLAlchemyError, OSError, ImportError) as error:
            raise ConnectorError(
                f"CONNECTOR_STATE_DATABASE_URL: cannot open the state store "
                f"({one_line(error, first_line=True)})"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    def _migrate_racing(self, attempts: int = 5) -> None:
        """Several processes may open a new store at once: the losers of the race fail on
        CREATE TABLE (their transaction wrote nothing) and find the schema done on retry."""
        for attempt in range(attempts):
            try:
                self.migrate()
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; returns the version found before."""
        with self._engine.begin() as connection:
            return migrate(connection)

    def touch(self) -> None:
        """A real write that changes nothing: proves the store is writable."""
        with self._engine.begin() as connection:
            connection.execute(schema_version.update().values(version=schema_version.c.version))

    def version(self) -> int:
        with self._engine.connect() as connection:
            return connection.execute(sa.select(schema_version.c.version)).scalar_one()
