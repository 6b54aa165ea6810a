"""Download a batch's attachments to a spool directory, one file at a time, streaming."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mattermost_connector.errors import AuthenticationError, MattermostError, local_fault
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.mattermost.client import FileTooLarge, MattermostClient
from mattermost_connector.stix import Attachment, safe_file_name, with_hashes

log = logging.getLogger("mattermost_connector.attachments")

# numbers each download: a file fetched again (a thread root's, for a later batch's copies of
# it) gets a new path, not one being removed in the background (pipeline/discards.py)
_DOWNLOADS = itertools.count()
Rows = Mapping[str, list[dict[str, Any]]]  # attachments rows (state store) by post id


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
        return Attachment(file_id, name, mime, size, status=Fate.TOO_LARGE, error=too_large)
    target = spool / f"{file_id}-{next(_DOWNLOADS)}"  # never a path handed to DISCARDS
    try:
        with open(target, "wb") as sink:
            result = client.download(file_id, sink, max_bytes=max_size)
    except AuthenticationError:
        raise
    except FileTooLarge as error:
        target.unlink(missing_ok=True)
        return Attachment(
            file_id, name, mime, max(size, error.size), status=Fate.TOO_LARGE, error=too_large
        )
    except MattermostError as error:
        target.unlink(missing_ok=True)
        log.warning("file %s (%s) not downloaded: %s", file_id, name, error)
        return Attachment(file_id, name, mime, size, status=Fate.FAILED, error=str(error))
    except OSError as error:  # the spool's disk: the channel's fault, not the file's
        target.unlink(missing_ok=True)
        local = local_fault(error, spool, size)
        if local is None:
            raise
        raise local from None
    return Attachment(
        file_id,
        name,
        info.get("mime_type") or result.mime_type or mime,
        result.size,
        path=target,
        sha256=result.sha256,
        status=Fate.EMBEDDED,
    )


def redelivery_files(
    found: Mapping[str, list[Attachment]], before: Rows
) -> dict[str, list[Attachment]]:
    """The files of posts delivered before (`before`: their attachments rows), as delivering
    them again must carry them. OpenCTI stores a message's files only with its first import
    (an upsert ignores them), and that import may be this one or the first: a file the first
    delivery embedded is embedded again; a file stored as an Artifact before is not sent
    again (its Artifact and link stay; pycti would only upsert them); any other file fetched
    now (it failed, or was over a cap since raised) goes as an Artifact linked to the
    message; a file stored before that cannot be fetched now keeps its fate, described but
    not sent."""
    settled: dict[str, list[Attachment]] = {}
    for post_id, files in found.items():
        rows = {row["file_id"]: row for row in before.get(post_id, [])}
        if not rows:
            settled[post_id] = files
            continue
        kept = []
        for attachment in files:
            row = rows.get(attachment.file_id) or {}
            fate = row.get("status")
            if attachment.path is not None and fate == Fate.UPLOADED:
                attachment.path.unlink(missing_ok=True)
                attachment = replace(
                    attachment, path=None, status=Fate.UPLOADED, sha256=row["sha256"]
                )
            elif attachment.path is not None and fate != Fate.EMBEDDED:
                attachment = with_hashes(replace(attachment, status=Fate.UPLOADED))
            elif attachment.path is None and fate in (Fate.EMBEDDED, Fate.UPLOADED):
                attachment = replace(attachment, status=fate, sha256=row["sha256"], error=None)
            kept.append(attachment)
        settled[post_id] = kept
    return settled


def first_embedded_files(
    client: MattermostClient,
    roots: Rows,
    spool: Path,
    max_size: int,
) -> dict[str, list[Attachment]]:
    """For each thread root (`roots`: its attachments rows), the files its first delivery
    embedded, downloaded again into the spool, named as then: a
    reply's bundle carries them in its copy of the root (stix.root_copy_segments). A file
    that cannot be fetched now is left out of the copy, with a warning."""
    spool.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Attachment]] = {}
    for root_id, rows in roots.items():
        for row in rows:
            if row["status"] != Fate.EMBEDDED:
                continue
            info = {key: row[key] for key in ("name", "mime_type", "size")}
            have = _fetch(client, {**info, "id": row["file_id"]}, spool, max_size)
            if have.path is None:
                log.warning(
                    "file %s (%s) of thread root %s not fetched again (%s): replies' copies of "
                    "the root go without it",
                    row["file_id"],
                    row["name"],
                    root_id,
                    have.error,
                )
                continue
            found.setdefault(root_id, []).append(
                replace(have, name=row["name"], status=Fate.EMBEDDED)
            )
    return found
