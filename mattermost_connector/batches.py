"""Turn a list of posts into a deliverable batch: filter, complete threads, resolve authors."""

from __future__ import annotations

import logging
from typing import Any

from mattermost_connector.changes import is_system
from mattermost_connector.channel_run import Batch
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.state import StateStore

log = logging.getLogger("mattermost_connector.batches")


def complete_batch(
    posts: list[dict[str, Any]],
    *,
    client: MattermostClient,
    store: StateStore,
    users: UserDirectory,
    include_system: bool,
    cursor: dict[str, Any] | None = None,
    exhausted: bool = True,
    pending: set[str] | frozenset[str] = frozenset(),
) -> Batch:
    """System messages are dropped unless asked for; a reply whose root was never delivered
    (it predates the start, say) gets its root fetched and delivered with it, once. Roots in
    `pending` are being delivered by the caller: not fetched again."""
    kept = [post for post in posts if include_system or not is_system(post)]
    ids = {post["id"] for post in kept} | pending
    wanted_roots = {p["root_id"] for p in kept if p.get("root_id")} - ids
    roots, missing = [], []
    if wanted_roots:
        delivered = store.delivered(wanted_roots)
        for root_id in sorted(wanted_roots - delivered.keys()):
            try:
                roots.append(client.post(root_id))
            except AuthenticationError:
                raise
            except MattermostError as error:
                log.warning(
                    "thread root %s cannot be fetched (%s): reply left unlinked", root_id, error
                )
                missing.append(root_id)
    batch_posts = roots + kept
    return Batch(
        posts=batch_posts,
        users=users.resolve(post["user_id"] for post in batch_posts),
        cursor=cursor,
        exhausted=exhausted,
        skipped=len(posts) - len(kept),
        missing_roots=missing,
    )
