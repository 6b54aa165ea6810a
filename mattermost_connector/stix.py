"""Mattermost posts, channels and users as STIX 2.1 objects, with ids that never change.

Every id is derived from Mattermost data alone (pycti's uuid5 generators), and timestamps come
from the posts themselves, so importing the same post twice yields the same object. Objects
are built as plain dicts: stix2's validating classes made them most of a sync's time.
tests/test_stix.py parses each kind back through stix2 and checks every id against pycti's
and stix2's own generators.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mattermost_connector import integration_posts
from mattermost_connector.config import TLP
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.observables import MAX_BYTES_PER_POST

if TYPE_CHECKING:
    from mattermost_connector.observables.stix import Observable

Post = Mapping[str, Any]
MEDIA_CATEGORY = "mattermost"
# stix2's namespace for deterministic observable ids (pycti's generators use it too)
OBSERVABLE_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
_NAMESPACE_BYTES = OBSERVABLE_NAMESPACE.bytes
DELETED_LABEL = "deleted"
_STATEMENT_MARKINGS = {
    # OpenCTI-specific TLP markings: stix2 refuses them as TLP objects, so they are statements
    # carrying OpenCTI's own definition, as the platform exports them.
    TLP.CLEAR: ("marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9", "TLP:CLEAR"),
    TLP.AMBER_STRICT: (
        "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
        "TLP:AMBER+STRICT",
    ),
}
# stix2's TLP_WHITE ... TLP_RED, as it serialises them (written out: importing stix2 and pycti
# cost a second and 40 MB per process; tests/test_stix.py compares them with stix2's)
_STANDARD_MARKINGS = {
    TLP.WHITE: ("marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9", "white"),
    TLP.GREEN: ("marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da", "green"),
    TLP.AMBER: ("marking-definition--f88d31f6-486f-44da-b317-01333bde0b82", "amber"),
    TLP.RED: ("marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed", "red"),
}


@dataclass(frozen=True)
class ChannelContext:
    """What every message of one channel needs: its STIX name and how to build permalinks.

    `first_name` and `link_team` are the channel's name and team when it was first imported
    (state store): the channel's id and every post's URL keep them through renames and moves,
    so that OpenCTI keeps one Channel and one observable per post. Unset, the current ones.
    """

    channel_id: str
    name: str
    description: str | None
    team_name: str | None
    channel_type: str
    created_ms: int
    server_url: str
    first_name: str | None = None
    link_team: str | None = None

    def permalink(self, post_id: str) -> str:
        team = self.link_team or self.team_name
        if team:
            return f"{self.server_url}/{team}/pl/{post_id}"
        return f"{self.server_url}/_redirect/pl/{post_id}"


@dataclass(frozen=True)
class Attachment:
    """A post's file as downloaded: `path` is None when it could not be fetched."""

    file_id: str
    name: str
    mime_type: str
    size: int
    path: Path | None = None
    sha256: str | None = None
    error: str | None = None
    status: Fate = Fate.EMBEDDED
    md5: str | None = None  # with sha1: the hashes of a file uploaded as an Artifact
    sha1: str | None = None

    def record(self, post_id: str) -> dict[str, Any]:
        """The attachments row for the state store (no path: the spool file is temporary)."""
        return {
            "file_id": self.file_id,
            "post_id": post_id,
            "name": self.name,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
            "error": self.error,
        }


@cache
def _marking_json(tlp: TLP) -> str:
    return json.dumps(_build_marking(tlp))


def marking_object(tlp: TLP) -> dict[str, Any]:
    return json.loads(_marking_json(tlp))


@cache
def marking_id(tlp: TLP) -> str:
    return _build_marking(tlp)["id"]


def _build_marking(tlp: TLP) -> dict[str, Any]:
    if tlp in _STATEMENT_MARKINGS:
        marking_id, definition = _STATEMENT_MARKINGS[tlp]
        return {
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": marking_id,
            "created": "2022-10-01T00:00:00.000Z",
            "name": definition,
            "definition_type": "statement",
            "definition": {"statement": "custom"},
            "x_opencti_definition_type": "TLP",
            "x_opencti_definition": definition,
        }
    marking_id, colour = _STANDARD_MARKINGS[tlp]
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": marking_id,
        "created": "2017-01-20T00:00:00.000Z",
        "definition_type": "tlp",
        "name": f"TLP:{colour.upper()}",
        "definition": {"tlp": colour},
    }


def _timestamp(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


@lru_cache(maxsize=4096)  # bounded: a long channel spans millions of seconds
def _second(seconds: int) -> str:
    """Whole seconds as ISO 8601 in UTC: posts share seconds, and formatting is per object."""
    return f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%dT%H:%M:%S}"


def _stamp(epoch_ms: int) -> str:
    """created/modified: always milliseconds, as stix2 writes them."""
    seconds, millis = divmod(int(epoch_ms), 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def _instant(epoch_ms: int) -> str:
    """Other timestamps: fraction only when there is one, trailing zeros dropped."""
    seconds, millis = divmod(int(epoch_ms), 1000)
    fraction = f".{millis:03d}".rstrip("0") if millis else ""
    return f"{_second(seconds)}{fraction}Z"


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    """Leave out unset properties, as stix2 does."""
    return {key: value for key, value in obj.items() if value is not None}


# Key added to a user's dict (batches.py): the name it had when first imported, its id's source
FIRST_NAME = "first_name_imported"


def identity_name(user: Mapping[str, Any]) -> str:
    return f"@{user.get('username') or user['id']}"


def _first_identity_name(user: Mapping[str, Any]) -> str:
    return user.get(FIRST_NAME) or identity_name(user)


def _renamed(first: str | None, current: str) -> bool:
    """OpenCTI compares names lower-cased and trimmed (identifier.js normalizeName)."""
    return first is not None and first.lower().strip() != current.lower().strip()


def _uuid5(kind: str, canonical: str) -> str:
    """The id stix2 and pycti derive: uuid5(OBSERVABLE_NAMESPACE, canonical JSON), without
    building UUID objects (three per post). `canonical` is RFC 8785 JSON: keys sorted, no
    spaces, raw non-ASCII, which for flat string mappings is what the callers write out."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + canonical.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{kind}--{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json_string(text: str) -> str:
    """A string as canonical JSON writes it (orjson escapes as RFC 8785 does)."""
    return orjson.dumps(text).decode()


@cache
def _identity_id(name: str) -> str:
    """pycti's Identity.generate_id(name, "individual"), written out."""
    name = _json_string(name.lower().strip())
    return _uuid5("identity", f'{{"identity_class":"individual","name":{name}}}')


def identity_id(user: Mapping[str, Any]) -> str:
    """From the username first imported: OpenCTI finds the Individual by this id even once
    renamed (the platform then keeps the old name as an alias, whose id it resolves)."""
    return _identity_id(_first_identity_name(user))


@cache
def _channel_id(name: str) -> str:
    """pycti's Channel.generate_id(name), written out."""
    return _uuid5("channel", f'{{"name":{_json_string(name.lower().strip())}}}')


def channel_id(context: ChannelContext) -> str:
    """From the name first imported (pycti's generator, as the original connector): a
    renamed or moved channel stays the Channel OpenCTI has."""
    return _channel_id(context.first_name or context.name)


def message_id(context: ChannelContext, post_id: str) -> str:
    """The media-content id of a post, computable without the post (for reply links): stix2's
    deterministic observable id over its only id-contributing property, the URL."""
    return _url_id(context.permalink(post_id))


def _url_id(url: str) -> str:
    quoted = orjson.dumps(url).decode()  # JSON-escaped, as canonical JSON
    return _uuid5("media-content", f'{{"url":{quoted}}}')


def relationship_id(source: str, target: str) -> str:
    """pycti's StixCoreRelationship.generate_id for a related-to without start or stop: the
    same canonical text, written out (run for every post)."""
    refs = orjson.dumps(source).decode(), orjson.dumps(target).decode()
    return _uuid5(
        "relationship",
        f'{{"relationship_type":"related-to","source_ref":{refs[0]},"target_ref":{refs[1]}}}',
    )


def channel_object(context: ChannelContext, tlp: TLP) -> dict[str, Any]:
    when = _stamp(context.created_ms)
    return _compact(
        {
            "type": "channel",
            "spec_version": "2.1",
            "id": channel_id(context),
            "created": when,
            "modified": when,
            "name": context.name,
            "description": context.description or None,
            "aliases": [context.first_name] if _renamed(context.first_name, context.name) else None,
            "channel_types": ["Mattermost"],
            "object_marking_refs": [marking_id(tlp)],
        }
    )


def identity_object(user: Mapping[str, Any], tlp: TLP) -> dict[str, Any]:
    """An author as an individual named `@username`: emails may be hidden, usernames never."""
    full_name = " ".join(filter(None, (user.get("first_name"), user.get("last_name"))))
    first = _first_identity_name(user)
    renamed = _renamed(first, identity_name(user))
    details = [
        f"Mattermost user {identity_name(user)}",
        f"first imported as {first}" if renamed else None,
        f"name: {full_name}" if full_name else None,
        f"nickname: {user['nickname']}" if user.get("nickname") else None,
        f"email: {user['email']}" if user.get("email") else None,
        "bot account" if user.get("is_bot") else None,
        "deactivated" if user.get("delete_at") else None,
        None if "username" in user else "not visible to the connector's account",
    ]
    when = _stamp(user.get("create_at") or 0)
    return _compact(
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": identity_id(user),
            "created": when,
            "modified": when,
            "name": identity_name(user),
            "description": "; ".join(filter(None, details)),
            "identity_class": "individual",
            "contact_information": user.get("email") or None,
            "x_opencti_aliases": [first] if renamed else None,
            "object_marking_refs": [marking_id(tlp)],
        }
    )


def _related(source: str, target: str, when: str, marking: str) -> dict[str, Any]:
    """A related-to created and modified `when` (a STIX timestamp), marked `marking`."""
    return {
        "type": "relationship",
        "spec_version": "2.1",
        "id": relationship_id(source, target),
        "created": when,
        "modified": when,
        "relationship_type": "related-to",
        "source_ref": source,
        "target_ref": target,
        "object_marking_refs": [marking],
    }


def safe_file_name(name: str, file_id: str) -> str:
    """Keep what an analyst recognises; drop path parts and control characters, cap the length."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip(" .")
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 16 else name[:200]
    return name or f"attachment-{file_id}"


_CHUNK = 3 << 18  # 768 KiB, a multiple of 3: base64 of consecutive chunks concatenates


@dataclass(frozen=True)
class Spooled:
    """A file's bytes left in the spool, base64-encoded only as its bundle is written: a bundle
    never holds its files in memory."""

    path: Path
    size: int

    @property
    def encoded_size(self) -> int:
        return 4 * ((self.size + 2) // 3)


Segment = str | Spooled


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _segments_size(segments: Iterable[Segment]) -> int:
    total = 0
    for segment in segments:  # a loop, not sum(): measured for every object of every post
        if isinstance(segment, str):
            total += len(segment) if segment.isascii() else len(segment.encode("utf-8"))
        else:
            total += segment.encoded_size
    return total


def write_segments(segments: Iterable[Segment], handle: Any) -> None:
    """Write a bundle to a text handle, streaming each file's base64 from the spool."""
    for segment in segments:
        if isinstance(segment, str):
            handle.write(segment)
            continue
        with open(segment.path, "rb") as source:
            while chunk := source.read(_CHUNK):
                handle.write(base64.b64encode(chunk).decode("ascii"))


def _file_entry(attachment: Attachment, marking: str, no_trigger_import: bool) -> list[Segment]:
    """One x_opencti_files entry, its data streamed from the spool."""
    assert attachment.path is not None
    head = f'{{"name":{orjson.dumps(attachment.name).decode()},"data":"'
    tail = (
        f'","mime_type":{orjson.dumps(attachment.mime_type).decode()},'
        f'"object_marking_refs":[{orjson.dumps(marking).decode()}],'
        f'"no_trigger_import":{"true" if no_trigger_import else "false"}}}'
    )
    return [head, Spooled(attachment.path, attachment.size), tail]


def _with_files(message: str, entries: list[list[Segment]]) -> list[Segment]:
    """A serialised media-content with `x_opencti_files` appended (entries in order)."""
    if not entries:
        return [message]
    segments: list[Segment] = [message[:-1] + ',"x_opencti_files":[']
    for index, entry in enumerate(entries):
        segments.extend(([","] if index else []) + entry)
    segments.append("]}")
    return segments


def unique_names(attachments: list[Attachment]) -> list[Attachment]:
    """OpenCTI stores a file under its object by name, a second of the same name replacing the
    first: same-named files of one post become `report.pdf`, `report (2).pdf`, ... in the
    post's file order, so every one survives, under the same name on every run."""
    taken: set[str] = set()
    named = []
    for attachment in attachments:
        name, number = attachment.name, 1
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = name, "", ""
        while name.casefold() in taken:
            number += 1
            name = f"{stem} ({number}){dot}{ext}"
        taken.add(name.casefold())
        named.append(attachment if name == attachment.name else replace(attachment, name=name))
    return named


def file_hashes(path: Path) -> dict[str, str]:
    """MD5, SHA-1 and SHA-256 of a spooled file, as OpenCTI's artifactImport computes them."""
    digests = {"MD5": hashlib.md5(), "SHA-1": hashlib.sha1(), "SHA-256": hashlib.sha256()}
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def artifact_id(hashes: Mapping[str, str]) -> str:
    """OpenCTI's standard id of an Artifact: its MD5 alone when it has one (the platform's
    identifier.js keeps the first of MD5, SHA-1, SHA-256, SHA-512)."""
    for name in ("MD5", "SHA-1", "SHA-256"):
        if hashes.get(name):
            value = orjson.dumps({name: hashes[name]}).decode()
            return _uuid5("artifact", f'{{"hashes":{value}}}')
    raise ValueError("an artifact needs a hash")


@dataclass(frozen=True)
class Upload:
    """A file too large for any queue message: uploaded to the platform as the Artifact
    `artifact` describes, streamed from the spool, before the bundle linking it is sent."""

    path: Path
    name: str
    mime_type: str
    size: int
    artifact: dict[str, Any]
    file_id: str = ""


def _artifact_object(
    attachment: Attachment, url: str, author_id: str, marking: str
) -> dict[str, Any]:
    hashes = {"MD5": attachment.md5, "SHA-1": attachment.sha1, "SHA-256": attachment.sha256}
    return {
        "type": "artifact",
        "spec_version": "2.1",
        "id": artifact_id(hashes),  # type: ignore[arg-type]
        "mime_type": attachment.mime_type,
        "hashes": hashes,
        "x_opencti_additional_names": [attachment.name],
        "x_opencti_description": f"Mattermost attachment {attachment.name} of {url}",
        "x_opencti_created_by_ref": author_id,
        "object_marking_refs": [marking],
    }


def _title(message: str) -> str | None:
    stripped = message.strip()
    first_line = stripped.splitlines()[0] if stripped else ""
    return (first_line[:117] + "...") if len(first_line) > 120 else (first_line or None)


def _fates(attachments: list[Attachment]) -> list[str]:
    """What became of each file, for the message's description (the same in every copy). By
    status: a file stored by an earlier delivery keeps its line though not sent again."""
    if not attachments:
        return []
    lines = []
    missing = [a for a in attachments if a.status not in (Fate.EMBEDDED, Fate.UPLOADED)]
    if missing:
        lines.append(
            "attachments not embedded: "
            + ", ".join(f"{a.name} ({a.size} bytes, {a.mime_type}): {a.error}" for a in missing)
        )
    embedded = [a for a in attachments if a.status == Fate.EMBEDDED]
    if embedded:
        lines.append("attachments: " + ", ".join(f"{a.name} sha256={a.sha256}" for a in embedded))
    uploaded = [a for a in attachments if a.status == Fate.UPLOADED]
    if uploaded:
        lines.append(
            "attachments stored as artifacts linked to this message: "
            + ", ".join(
                f"{a.name} ({a.size} bytes, {a.mime_type}) sha256={a.sha256}" for a in uploaded
            )
        )
    return lines


def message_objects(
    post: Post,
    context: ChannelContext,
    author: Mapping[str, Any],
    attachments: list[Attachment],
    tlp: TLP,
    root_known: bool = True,
    observables: Sequence[Observable] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The media-content of one post (its files are added as its bundles are written), and
    what links it: to the channel, to its thread's root (left out when the root could not be
    delivered: no relationship may dangle), to the Artifacts of its uploaded files, to the
    indicators found in it (created by its author; their objects travel in its bundle)."""
    shown = integration_posts.render(post, author)  # attachments, webhook name, priority
    description = [f"Mattermost message by {identity_name(author)} in {context.name}"]
    description.extend(shown.notes)
    if post.get("root_id"):
        description.append(f"reply in thread {context.permalink(post['root_id'])}")
        if not root_known:
            description.append("thread root not available")
    if post.get("edit_at"):
        description.append(f"edited {_timestamp(post['edit_at']).isoformat()}")
    if post.get("delete_at"):
        description.append(
            f"deleted in Mattermost {_timestamp(post['delete_at']).isoformat()}; "
            "the text is the last one imported"
        )
    description.extend(_fates(attachments))
    marking = marking_id(tlp)
    url = context.permalink(post["id"])
    text = shown.content
    message: dict[str, Any] = {
        "type": "media-content",
        "spec_version": "2.1",
        "id": _url_id(url),
    }
    # OpenCTI names a Media-Content by its content, else its title: a post of files alone is
    # named by its files.
    title = _title(text) or _title(", ".join(a.name for a in attachments))
    if title is not None:
        message["title"] = title
    message.update(
        {
            "content": text,
            "media_category": MEDIA_CATEGORY,
            "url": url,
            "publication_date": _instant(post["create_at"]),
            "object_marking_refs": [marking],
            "x_opencti_description": "; ".join(description),
            "x_opencti_created_by_ref": identity_id(author),
        }
    )
    if shown.links:
        message["x_opencti_external_references"] = integration_posts.external_references(
            shown.links
        )
    labels = [*shown.labels, *([DELETED_LABEL] if post.get("delete_at") else [])]
    if labels:
        message["x_opencti_labels"] = labels
    when = _stamp(post["create_at"])
    links = [_related(message["id"], channel_id(context), when, marking)]
    if post.get("root_id") and root_known:
        links.append(_related(message["id"], message_id(context, post["root_id"]), when, marking))
    for attachment in attachments:
        if attachment.status == Fate.UPLOADED and attachment.md5:  # else linked when first sent
            artifact = _artifact_object(attachment, url, identity_id(author), marking)
            links += [artifact, _related(message["id"], artifact["id"], when, marking)]
    for observable in observables:  # OpenCTI allows related-to between any two (stix.ts)
        link = _related(message["id"], observable.id, when, marking)
        links.append({**link, "created_by_ref": message["x_opencti_created_by_ref"]})
    return message, links


def root_copy(
    post: Post, context: ChannelContext, author: Mapping[str, Any], tlp: TLP
) -> dict[str, Any]:
    """A thread root as last delivered, for a reply's bundle that must define what it refers
    to. Without its description (which lists every file's fate) and without a title made of
    file names: OpenCTI upserts only the properties sent, and sets an empty one from a later
    import (upsert-utils.js `isCurrentlyEmpty`), so both end as the root's own bundle has them
    whichever is imported first. Its files: see `root_copy_segments`."""
    message = message_objects(post, context, author, [], tlp)[0]
    del message["x_opencti_description"]
    return message


def root_copy_segments(
    post: Post,
    context: ChannelContext,
    author: Mapping[str, Any],
    tlp: TLP,
    files: list[Attachment],
    no_trigger_import: bool,
) -> list[Segment]:
    """The copy with the files the root's first delivery embedded (`files`, spooled, named
    as then): OpenCTI stores a media-content's files only with its first import, and a
    reply's bundle may be imported before the root's own, here or in a later run."""
    marking = marking_id(tlp)
    entries = [_file_entry(a, marking, no_trigger_import) for a in files if a.path is not None]
    return _with_files(serialize(root_copy(post, context, author, tlp)), entries)


def unknown_author(user_id: str) -> dict[str, Any]:
    """A stand-in for an author the server would not return (removed or hidden)."""
    return {"id": user_id}


def serialize(obj: dict[str, Any]) -> str:
    """orjson: serialising is a sync's hottest step after the network."""
    return orjson.dumps(obj).decode()


def _bundle(objects: list[list[Segment]]) -> list[Segment]:
    """Join serialised objects into one bundle without re-parsing them (stix2 would refuse
    OpenCTI's CLEAR marking)."""
    segments: list[Segment] = [f'{{"type": "bundle", "id": "bundle--{uuid.uuid4()}", "objects": [']
    for index, obj in enumerate(objects):
        segments.extend(([", "] if index else []) + obj)
    segments.append("]}")
    return segments


_BUNDLE_OVERHEAD = _segments_size(_bundle([]))  # a uuid4 is always 36 characters


@dataclass
class BundlePart:
    """One bundle, the posts it completes (oldest first) with their attachments, and the files
    to upload before it is sent. A post whose files take several bundles is completed by
    the last one: only that one moves the cursor past it."""

    segments: list[Segment]
    objects: int
    posts: list[Post]
    attachments: list[tuple[str, Attachment]]
    uploads: list[Upload] = field(default_factory=list)

    @property
    def size(self) -> int:
        return _segments_size(self.segments)

    def write(self, handle: Any) -> None:
        write_segments(self.segments, handle)

    @property
    def json(self) -> str:
        text = io.StringIO()
        self.write(text)
        return text.getvalue()


@dataclass
class _PostPlan:
    artifacts: list[list[Segment]]  # Artifacts carrying a file each, in bundles of their own
    final: list[list[Segment]]  # the media-content and its links: what completes the post
    attachments: list[Attachment]
    uploads: list[Upload]
    embedded: list[Attachment]  # in the media-content: what a copy of it must carry too
    final_size: int = 0  # bytes of `final` in a bundle, separators included


def _payload_artifact(artifact: dict[str, Any], attachment: Attachment) -> list[Segment]:
    """The Artifact with its file as `payload_bin`: pycti's import stores it under the
    Artifact through importPush, whether the Artifact is new or not."""
    assert attachment.path is not None
    text = serialize(artifact)
    return [text[:-1] + ',"payload_bin":"', Spooled(attachment.path, attachment.size), '"}']


# Room a thread root leaves for one reply beside its copy in a queue message: the largest
# reply Mattermost takes (16,383 characters, up to 6 bytes each once JSON-escaped) and as much
# again of an integration's attachments (integration_posts.ATTACHMENTS_TEXT_MAX), its
# description and links (ten files as Artifacts, LINKS_MAX external references of URL_MAX
# characters), and both authors.
REPLY_RESERVE = 320 * 1024


def _observable_parts(
    observables: Sequence[Observable], author_id: str, marking: str, when: str
) -> list[Part]:
    """The objects of a post's indicators, created by the post's author."""
    return [[o.serialized(author_id, marking, when)] for o in observables]


# What embedding files adds to a media-content beside the entries themselves, when sizing
# them against a message's room: `,"x_opencti_files":[` and `]` (the closing brace stays),
# and the ", " before the media-content in its bundle, less the comma the first entry goes
# without (`_plan_post` counts one with each entry).
FILES_OVERHEAD = len(',"x_opencti_files":[') + len("]") + len(", ") - len(",")


def _plan_post(
    post: Post,
    context: ChannelContext,
    author: Mapping[str, Any],
    files: list[Attachment],
    tlp: TLP,
    *,
    root_known: bool,
    room: int,
    artifact_room: int,
    queue: bool,
    no_trigger_import: bool,
    observables: Sequence[Observable] = (),
    reserve: int = REPLY_RESERVE,
) -> _PostPlan:
    """Where each of a post's files goes. For a directory, all in its media-content, however
    large. For OpenCTI, whose upsert of an existing observable ignores the files it is sent
    (upsert-utils.js reads only a single `file`), a file goes with its media-content while
    that fits one message (`room` bytes: `_fit_files`); a file that does not goes alone in
    a message of its own (`artifact_room` bytes) as an Artifact with its bytes, or, too
    large for any message, is uploaded as an Artifact (`_artifacts`); either way the message
    links to the Artifact. A file already uploaded (a post delivered before:
    redelivery_files) goes as an Artifact in either mode. `observables`: the post's
    indicators, linked from it; `reserve`: what a thread root keeps free for a reply."""
    marking = marking_id(tlp)

    def objects(attachments: list[Attachment]) -> tuple[str, list[str]]:
        message, links = message_objects(
            post, context, author, attachments, tlp, root_known, observables
        )
        return serialize(message), [serialize(link) for link in links]

    def entry_size(attachment: Attachment) -> int:  # with the comma before it
        return _segments_size(_file_entry(attachment, marking, no_trigger_import)) + 1

    files = unique_names(files) if files else files
    if queue and any(a.path for a in files):  # else nothing to place: no room to measure
        reserved = 0 if post.get("root_id") else reserve
        files = _fit_files(files, objects, room, reserved, entry_size)
    message, links = objects(files)
    embedded = [a for a in files if a.path is not None and a.status != Fate.UPLOADED]
    final = [
        _with_files(message, [_file_entry(a, marking, no_trigger_import) for a in embedded]),
        *[[link] for link in links],
    ]
    carried: list[list[Segment]] = []
    uploads: list[Upload] = []
    if any(a.status == Fate.UPLOADED and a.path is not None for a in files):
        url, author_id = context.permalink(post["id"]), identity_id(author)
        room = artifact_room if queue else None
        carried, uploads = _artifacts(files, url, author_id, marking, room)
    size = sum(_segments_size(obj) + 2 for obj in final)
    return _PostPlan(carried, final, files, uploads, embedded, size)


def _fit_files(
    files: list[Attachment],
    objects: Callable[[list[Attachment]], tuple[str, list[str]]],
    room: int,
    reserve: int,
    entry_size: Callable[[Attachment], int],
) -> list[Attachment]:
    """The files, in order, those that fit beside the media-content in a message of `room`
    bytes kept for embedding, the others turned into Artifacts to upload (with the hashes
    their ids need). A thread root keeps `reserve` free (REPLY_RESERVE, more with
    indicators), for a reply whose bundle holds a copy of it with these files. `objects`:
    the post's serialised text and links."""
    # the post's text and links at their largest: every file an Artifact
    placeholder = {"md5": "0" * 32, "sha1": "0" * 40, "sha256": "0" * 64}
    widest = [replace(a, status=Fate.UPLOADED, **placeholder) if a.path else a for a in files]
    message, links = objects(widest)
    free = room - _size(message) - sum(_size(link) + 2 for link in links) - FILES_OVERHEAD
    free -= min(reserve, room // 4)  # below the configurable floor, a quarter of the room
    kept: list[Attachment] = []
    for attachment in files:
        if attachment.path is None or attachment.status == Fate.UPLOADED:
            pass
        elif entry_size(attachment) <= free:
            free -= entry_size(attachment)
        else:
            attachment = with_hashes(replace(attachment, status=Fate.UPLOADED))
        kept.append(attachment)
    return kept


def _artifacts(
    files: list[Attachment], url: str, author_id: str, marking: str, room: int | None
) -> tuple[list[list[Segment]], list[Upload]]:
    """The post's files to upload, as Artifacts: carried with their bytes in a message of
    their own while that fits `room` bytes (None: any size, a directory), else uploaded
    before the post's bundle (Upload)."""
    carried: list[list[Segment]] = []
    uploads: list[Upload] = []
    for attachment in files:
        if attachment.status != Fate.UPLOADED or attachment.path is None:
            continue
        artifact = _artifact_object(attachment, url, author_id, marking)
        payload = _payload_artifact(artifact, attachment)
        if room is None or _segments_size(payload) <= room:
            carried.append(payload)
        else:
            uploads.append(
                Upload(
                    attachment.path,
                    attachment.name,
                    attachment.mime_type,
                    attachment.size,
                    artifact,
                    attachment.file_id,
                )
            )
    return carried, uploads


def with_hashes(attachment: Attachment) -> Attachment:
    """The attachment with the MD5 and SHA-1 an Artifact's id needs (its spooled bytes')."""
    assert attachment.path is not None
    hashes = file_hashes(attachment.path)
    return replace(attachment, md5=hashes["MD5"], sha1=hashes["SHA-1"], sha256=hashes["SHA-256"])


Part = list[Segment]  # one serialised object, its files streamed from the spool


class _References:
    """What a bundle must define besides its posts and header: their authors, and each
    reply's thread root as last delivered with the root's author and the files the root's
    first delivery embedded (`first_files`). OpenCTI's workers import bundles in parallel
    and in any order, so no bundle may count on another one."""

    def __init__(
        self,
        context: ChannelContext,
        posts: list[Post],
        users: Mapping[str, Mapping[str, Any]],
        roots: Mapping[str, Post],
        missing: Iterable[str],
        tlp: TLP,
        first_files: Callable[[str], list[Attachment]],
        no_trigger_import: bool,
    ) -> None:
        self._context, self._users, self._tlp = context, users, tlp
        self._roots = {**roots, **{post["id"]: post for post in posts}}
        self._missing = set(missing)
        self._first_files, self.no_trigger_import = first_files, no_trigger_import
        self._parts: dict[tuple[str, str], Part] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # of each part in a bundle, separator included
        self.present: set[tuple[str, str]] = set()  # ("user" | "post", id) in this bundle

    def author(self, user_id: str) -> Mapping[str, Any]:
        return self._users.get(user_id) or unknown_author(user_id)

    def linkable(self, post: Post) -> bool:
        """A reply links to its root only where the root can be put in the same bundle."""
        root_id = post.get("root_id")
        return bool(root_id) and root_id not in self._missing and root_id in self._roots

    def needed(self, post: Post, fresh: bool = False) -> list[tuple[str, str]]:
        """The keys `post` refers to that the bundle lacks (`fresh`: an empty bundle would
        lack), in dependency order."""
        present = set() if fresh else self.present
        keys = []
        if self.linkable(post) and ("post", post["root_id"]) not in present:
            keys += [("user", self._roots[post["root_id"]]["user_id"]), ("post", post["root_id"])]
        keys.append(("user", post["user_id"]))
        return [key for key in dict.fromkeys(keys) if key not in present]

    def parts(self, keys: list[tuple[str, str]]) -> list[Part]:
        return [self._part(key) for key in keys]

    def size(self, keys: list[tuple[str, str]]) -> int:
        """Bytes these parts add to a bundle, separators included (measured once each)."""
        total = 0
        for key in keys:
            if key not in self._sizes:
                self._sizes[key] = _segments_size(self._part(key)) + 2
            total += self._sizes[key]
        return total

    def _part(self, key: tuple[str, str]) -> Part:
        if key not in self._parts:
            kind, object_id = key
            if kind == "user":
                self._parts[key] = [serialize(identity_object(self.author(object_id), self._tlp))]
            else:
                root = self._roots[object_id]
                self._parts[key] = root_copy_segments(
                    root,
                    self._context,
                    self.author(root["user_id"]),
                    self._tlp,
                    self._first_files(object_id),
                    self.no_trigger_import,
                )
        return self._parts[key]

    def took(self, post: Post, keys: list[tuple[str, str]]) -> Part | None:
        """Record what the bundle now holds; returns the copy of `post` it held already (a
        reply sharing its root's millisecond may come first), which the post replaces."""
        self.present.update(keys)
        key = ("post", post["id"])
        copied = self._parts.get(key) if key in self.present else None
        self.present.add(key)
        return copied


def iter_bundles(
    context: ChannelContext,
    posts: list[Post],
    users: Mapping[str, Mapping[str, Any]],
    attachments: Mapping[str, list[Attachment]],
    tlp: TLP,
    *,
    missing_roots: Iterable[str] = (),
    roots: Mapping[str, Post] | None = None,
    max_objects: int = 10**9,
    max_bytes: int = 10**15,
    no_trigger_import: bool = True,
    queue: bool = False,
    observe: Callable[[Post], Sequence[Observable]] | None = None,
) -> Iterator[BundlePart]:
    """Bundles of whole posts, each under `max_objects` and `max_bytes` (for a directory, a
    single post larger than that still goes alone, all its files in it), each
    self-contained: marking, channel, its authors, and the root of each reply it holds (from
    this batch, or `roots`: as last delivered) with the files the root's first delivery
    embedded (`attachments` holds them, spooled, for roots outside `posts`). For OpenCTI
    (`queue`) no bundle ever exceeds `max_bytes`: a file that does not fit with its post
    goes before it, alone in a bundle as an Artifact with its bytes, or is uploaded
    (BundlePart.uploads) when even that is too large; the post's own bundle links it and
    completes the post.

    `observe`: the indicators of a post, whose objects go in the bundle that completes it
    (once a bundle, created by the author of the post that brings them), linked from it; a
    thread root keeps room for a reply's indicators besides the reply.

    Built one at a time, files streamed from the spool as each bundle is written.
    """
    header = [serialize(marking_object(tlp)), serialize(channel_object(context, tlp))]
    planner = _Planner(context, posts, attachments, tlp, header, max_bytes, queue, observe)
    refs = _References(
        context,
        posts,
        users,
        roots or {},
        missing_roots,
        tlp,
        planner.first_files,
        no_trigger_import,
    )
    planner.refs = refs
    filling = _Filling(header, planner, max_objects, max_bytes)
    for post in posts:
        plan = planner.place(post)
        for artifact in plan.artifacts:  # no cursor moves with these: they precede the post
            identity = refs.parts([("user", post["user_id"])])[0]
            yield BundlePart(_bundle([[header[0]], identity, artifact]), 3, [], [])
        full = filling.add(post, plan)
        if full is not None:
            yield full
    if filling.carried:
        yield filling.flush()


def _parts_size(parts: list[Part]) -> int:
    """Bytes these objects add to a bundle, separators included."""
    return sum(_segments_size(part) + 2 for part in parts)


def _bundle_base(header: list[str]) -> int:
    """The size of a bundle holding only its header (marking, channel)."""
    return _BUNDLE_OVERHEAD + sum(_size(part) + 2 for part in header)


class _Planner:
    """Each post's plan (`_plan_post`), made once: a reply's copy of its root needs the
    root's plan, maybe before the root is placed. Keeps the files each post's own bundle
    embeds, which every copy of it carries too."""

    def __init__(
        self,
        context: ChannelContext,
        posts: list[Post],
        attachments: Mapping[str, list[Attachment]],
        tlp: TLP,
        header: list[str],
        max_bytes: int,
        queue: bool,
        observe: Callable[[Post], Sequence[Observable]] | None,
    ) -> None:
        self.context, self.attachments, self.tlp, self.queue = context, attachments, tlp, queue
        self.observe, self.marking = observe, marking_id(tlp)
        self.observed: dict[str, Sequence[Observable]] = {}
        # a thread root keeps room for a reply, and for its indicators when they are found
        self.reserve = REPLY_RESERVE + (MAX_BYTES_PER_POST if observe else 0)
        self.by_id = {post["id"]: post for post in posts}
        self.base = _bundle_base(header)
        self.max_bytes = max_bytes
        # an Artifact's own bundle: the marking, the author's identity, the Artifact
        self.artifact_bytes = max_bytes - _BUNDLE_OVERHEAD - _size(header[0]) - 2
        self.plans: dict[str, _PostPlan] = {}
        self.embedded: dict[str, list[Attachment]] = {}
        self.refs: _References  # set once built (it asks this planner for roots' files)

    def first_files(self, root_id: str) -> list[Attachment]:
        """The files the root's first delivery embedded: planned now if in this batch."""
        if root_id in self.by_id:
            if root_id not in self.embedded:
                self.plan(self.by_id[root_id])
            return self.embedded[root_id]
        return [
            a for a in self.attachments.get(root_id, []) if a.status == Fate.EMBEDDED and a.path
        ]

    def plan(self, post: Post) -> _PostPlan:
        if post["id"] not in self.plans:
            refs = self.refs
            room = artifact_room = self.max_bytes  # only OpenCTI's messages bound a post's files
            if self.queue:
                alone = refs.needed(post, fresh=True)  # what a bundle of its own holds
                indicators = self.observable_parts(post, set())
                room = self.max_bytes - self.base - refs.size(alone) - _parts_size(indicators)
                artifact_room = self.artifact_bytes - refs.size([("user", post["user_id"])])
            plan = _plan_post(
                post,
                self.context,
                refs.author(post["user_id"]),
                self.attachments.get(post["id"], []),
                self.tlp,
                root_known=refs.linkable(post),
                room=room,
                artifact_room=artifact_room,
                queue=self.queue,
                no_trigger_import=refs.no_trigger_import,
                observables=self.observables(post),
                reserve=self.reserve,
            )
            self.plans[post["id"]], self.embedded[post["id"]] = plan, plan.embedded
        return self.plans[post["id"]]

    def observables(self, post: Post) -> Sequence[Observable]:
        """The post's indicators, asked for once until it is placed."""
        if self.observe is None:
            return ()
        if post["id"] not in self.observed:
            self.observed[post["id"]] = self.observe(post)
        return self.observed[post["id"]]

    def observable_parts(self, post: Post, present: set[tuple[str, str]]) -> list[Part]:
        """The post's indicators a bundle holding `present` lacks."""
        wanted = [o for o in self.observables(post) if ("observable", o.id) not in present]
        if not wanted:
            return []
        author_id = identity_id(self.refs.author(post["user_id"]))
        return _observable_parts(wanted, author_id, self.marking, _stamp(post["create_at"]))

    def placed(self, post: Post) -> Sequence[Observable]:
        """The post is in its bundle: its indicators, not to be asked for again."""
        return self.observed.pop(post["id"], ())

    def place(self, post: Post) -> _PostPlan:
        """The post's plan, forgotten once it is placed (only what it embeds is kept)."""
        plan = self.plan(post)
        del self.plans[post["id"]]
        return plan


class _Filling:
    """The bundle being filled: its objects and size, and the posts, attachments and uploads
    it completes; handed over (`flush`) when the next post would take it past a bound."""

    def __init__(
        self, header: list[str], planner: _Planner, max_objects: int, max_bytes: int
    ) -> None:
        self.header, self.planner, self.refs = header, planner, planner.refs
        self.max_objects, self.max_bytes = max_objects, max_bytes
        self.base = _bundle_base(header)
        self.size = self.base
        self.objects: list[Part] = []
        self.carried: list[Post] = []
        self.settled: list[tuple[str, Attachment]] = []
        self.uploads: list[Upload] = []

    def add(self, post: Post, plan: _PostPlan) -> BundlePart | None:
        """Put `post` in: in this bundle if it fits, else in a new one, returning the full
        one to deliver first."""
        full = None
        needed, extra, added_size = self._adds(post, plan)
        too_many = len(self.header) + len(self.objects) + len(needed) + len(extra)
        if self.carried and (
            self.size + added_size > self.max_bytes or too_many > self.max_objects
        ):
            full = self.flush()
            needed, extra, added_size = self._adds(post, plan)
        added = self.refs.parts(needed) + extra
        copied = self.refs.took(post, needed)
        self.refs.present.update(("observable", o.id) for o in self.planner.placed(post))
        if copied is not None:  # the post replaces the copy of it a reply brought first
            self.objects.remove(copied)
            self.size -= _segments_size(copied) + 2
        self.objects.extend(added)
        self.size += added_size
        self.carried.append(post)
        self.settled.extend((post["id"], a) for a in plan.attachments)
        self.uploads.extend(plan.uploads)
        return full

    def _adds(self, post: Post, plan: _PostPlan) -> tuple[list[tuple[str, str]], list[Part], int]:
        """What placing `post` adds to this bundle: the reference keys it lacks, its
        indicators the bundle lacks and the post's own objects, and their bytes."""
        needed = self.refs.needed(post)
        indicators = self.planner.observable_parts(post, self.refs.present)
        size = self.refs.size(needed) + _parts_size(indicators) + plan.final_size
        return needed, indicators + plan.final, size

    def flush(self) -> BundlePart:
        part = BundlePart(
            _bundle([[h] for h in self.header] + self.objects),
            len(self.header) + len(self.objects),
            list(self.carried),
            list(self.settled),
            list(self.uploads),
        )
        self.objects, self.carried, self.settled, self.uploads = [], [], [], []
        self.size = self.base
        self.refs.present.clear()
        return part
