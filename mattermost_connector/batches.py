"""Turn a list of posts into a deliverable batch: filter, complete threads, resolve authors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mattermost_connector.changes import delivered_version, is_system
from mattermost_connector.channel_run import Batch
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.state import StateStore
from mattermost_connector.stix import FIRST_NAME, identity_name, unknown_author

log = logging.getLogger("mattermost_connector.batches")


def complete_batch(
    posts: list[dict[str, Any]],
    *,
    client: MattermostClient,
    store: StateStore,
    users: UserDirectory,
    include_system: bool,
    cursor: Cursor | None = None,
    exhausted: bool = True,
    pending: Iterable[Mapping[str, Any]] = (),
) -> Batch:
    """System messages are dropped unless asked for; a reply whose root was never delivered
    (it predates the start, say) gets its root fetched and delivered with it, once. Roots in
    `pending` are being delivered by the caller: not fetched again. Every other root comes
    along as last delivered, for the reply's bundle to hold it (`Batch.roots`)."""
    kept = [post for post in posts if include_system or not is_system(post)]
    in_flight = {post["id"]: post for post in pending}
    ids = {post["id"] for post in kept}
    wanted_roots = {p["root_id"] for p in kept if p.get("root_id")} - ids
    roots, missing = [], []
    known: dict[str, dict[str, Any]] = {
        root_id: dict(in_flight[root_id]) for root_id in wanted_roots & in_flight.keys()
    }
    if wanted_roots - known.keys():
        delivered = store.delivered(wanted_roots - known.keys())
        known.update({root_id: delivered_version(row) for root_id, row in delivered.items()})
        for root_id in sorted(wanted_roots - known.keys()):
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
    authors = {post["user_id"] for post in batch_posts} | {r["user_id"] for r in known.values()}
    return Batch(
        posts=batch_posts,
        users=authors_as_first_imported(store, users.resolve(authors), authors),
        cursor=cursor,
        exhausted=exhausted,
        counts=Counts(posts=len(batch_posts), skipped=len(posts) - len(kept)),
        missing_roots=missing,
        roots=known,
    )


def authors_as_first_imported(
    store: StateStore, found: Mapping[str, dict[str, Any]], user_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Every author (a stand-in for those the server would not show), with the name it had
    when first imported, which its STIX id keeps through renames (stix.identity_id)."""
    authors = {uid: found.get(uid) or unknown_author(uid) for uid in user_ids}
    first = store.pin_names("user", {uid: identity_name(a) for uid, a in authors.items()})
    return {uid: {**author, FIRST_NAME: first[uid]} for uid, author in authors.items()}
