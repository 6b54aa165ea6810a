"""Download a batch's attachments to a spool directory, one file at a time, streaming."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.stix import Attachment, safe_file_name

log = logging.getLogger("mattermost_connector.attachments")


def file_infos(post: dict[str, Any]) -> list[dict[str, Any]]:
    """A post's FileInfo objects; bare `file_ids` when the server sent no metadata."""
    infos = (post.get("metadata") or {}).get("files") or []
    if infos:
        return [info for info in infos if not info.get("delete_at")]
    return [{"id": file_id} for file_id in post.get("file_ids") or []]


def download_attachments(
    client: MattermostClient, posts: Iterable[dict[str, Any]], spool: Path
) -> dict[str, list[Attachment]]:
    """Fetch every file of every post. A file that still fails after the client's retries is
    recorded with its error and left out, so its message is delivered all the same."""
    spool.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Attachment]] = {}
    for post in posts:
        for info in file_infos(post):
            file_id = info["id"]
            name = safe_file_name(info.get("name") or "", file_id)
            mime = info.get("mime_type") or "application/octet-stream"
            target = spool / file_id
            try:
                with open(target, "wb") as sink:
                    result = client.download(file_id, sink)
            except AuthenticationError:
                raise
            except MattermostError as error:
                target.unlink(missing_ok=True)
                log.warning("post %s: file %s not downloaded: %s", post["id"], file_id, error)
                attachment = Attachment(
                    file_id, name, mime, int(info.get("size") or 0), error=str(error)
                )
            else:
                attachment = Attachment(
                    file_id,
                    name,
                    info.get("mime_type") or result.mime_type or mime,
                    result.size,
                    path=target,
                    sha256=result.sha256,
                )
            found.setdefault(post["id"], []).append(attachment)
    return found
