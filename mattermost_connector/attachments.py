"""Download a batch's attachments to a spool directory, one file at a time, streaming."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.mattermost.client import FileTooLarge, MattermostClient
from mattermost_connector.stix import Attachment, safe_file_name

log = logging.getLogger("mattermost_connector.attachments")

EMBEDDED, TOO_LARGE, FAILED, GONE = "embedded", "too_large", "failed", "gone"


def file_infos(post: dict[str, Any]) -> list[dict[str, Any]]:
    """A post's FileInfo objects; bare `file_ids` when the server sent no metadata."""
    infos = (post.get("metadata") or {}).get("files") or []
    if infos:
        return [info for info in infos if not info.get("delete_at")]
    return [{"id": file_id} for file_id in post.get("file_ids") or []]


def download_attachments(
    client: MattermostClient, posts: Iterable[dict[str, Any]], spool: Path, max_size: int
) -> dict[str, list[Attachment]]:
    """Fetch every file of every post, up to `max_size` bytes each.

    A larger file is not downloaded; a file that still fails after the client's retries is
    left out with its error. Either way the message is delivered, and the file recorded.
    """
    spool.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Attachment]] = {}
    for post in posts:
        for info in file_infos(post):
            found.setdefault(post["id"], []).append(_fetch(client, info, spool, max_size))
    return found


def _fetch(
    client: MattermostClient, info: dict[str, Any], spool: Path, max_size: int
) -> Attachment:
    file_id = info["id"]
    name = safe_file_name(info.get("name") or "", file_id)
    mime = info.get("mime_type") or "application/octet-stream"
    size = int(info.get("size") or 0)
    too_large = f"over MATTERMOST_MAX_ATTACHMENT_SIZE ({max_size} bytes)"
    if size > max_size:
        return Attachment(file_id, name, mime, size, status=TOO_LARGE, error=too_large)
    target = spool / file_id
    try:
        with open(target, "wb") as sink:
            result = client.download(file_id, sink, max_bytes=max_size)
    except AuthenticationError:
        raise
    except FileTooLarge as error:
        target.unlink(missing_ok=True)
        return Attachment(
            file_id, name, mime, max(size, error.size), status=TOO_LARGE, error=too_large
        )
    except MattermostError as error:
        target.unlink(missing_ok=True)
        log.warning("file %s (%s) not downloaded: %s", file_id, name, error)
        return Attachment(file_id, name, mime, size, status=FAILED, error=str(error))
    return Attachment(
        file_id,
        name,
        info.get("mime_type") or result.mime_type or mime,
        result.size,
        path=target,
        sha256=result.sha256,
        status=EMBEDDED,
    )
