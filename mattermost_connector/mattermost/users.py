"""Authors, fetched in batches and cached for the length of a run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mattermost_connector.mattermost.client import MattermostClient


class UserDirectory:
    """Resolves user ids with `POST /users/ids`, asking the server once per id per run."""

    def __init__(self, client: MattermostClient) -> None:
        self._client = client
        self._known: dict[str, dict[str, Any] | None] = {}

    def resolve(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = set(user_ids)
        missing = wanted - self._known.keys()
        if missing:
            found = {user["id"]: user for user in self._client.users(missing)}
            for user_id in missing:
                self._known[user_id] = found.get(user_id)  # None: hidden or removed
        return {uid: user for uid in wanted if (user := self._known[uid]) is not None}
