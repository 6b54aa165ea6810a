"""The connector's state, in SQLite by default or any SQLAlchemy database: per-channel
cursors, what was delivered of each post, attachments' fates, run history, channel leases and
names. One module per concern, over the tables of `schema`:

- `schema`: the tables, `MIGRATIONS`, the engine, the SQLite/PostgreSQL upserts;
- `cursors`: cursors and delivered posts (`record_delivery` writes a whole bundle);
- `files`: attachments; `history`: run history; `leases`: channel leases;
- `names`: first names (which STIX ids derive from) and channel names;
- `store`: `StateStore`, all of them on one engine.

Why mixins, not a facade of per-concern stores: a delivered bundle's posts, files and cursor
are one transaction, so the concerns share an engine and compose at the connection level
(`cursors.write_cursor`, `files.upsert_attachments`); a facade would add a forwarding method
for each of the thirty methods callers use, and its attribute names would collide with the
existing `runs()` and `cursors()`. Each concern's class stands alone on an engine
(`RunHistory(engine)`), and `StateStore` is their union, so callers keep one object.
"""

from mattermost_connector.state.deliveries import (
    POST_COLUMNS,
    POST_UPDATED,
    message_digest,
    post_values,
)
from mattermost_connector.state.history import INTERRUPTED, RunRecord
from mattermost_connector.state.schema import (
    MIGRATIONS,
    ROWS_PER_STATEMENT,
    SCHEMA_VERSION,
    attachments,
    channel_cursors,
    channel_leases,
    channel_names,
    delivered_posts,
    first_names,
    metadata,
    runs,
    schema_version,
)
from mattermost_connector.state.store import StateStore

__all__ = [
    "INTERRUPTED",
    "MIGRATIONS",
    "POST_COLUMNS",
    "POST_UPDATED",
    "ROWS_PER_STATEMENT",
    "SCHEMA_VERSION",
    "RunRecord",
    "StateStore",
    "attachments",
    "channel_cursors",
    "channel_leases",
    "channel_names",
    "delivered_posts",
    "first_names",
    "message_digest",
    "metadata",
    "post_values",
    "runs",
    "schema_version",
]
