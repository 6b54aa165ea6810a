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
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import orjson
import stix2
from pycti import Channel, Identity

from mattermost_connector.config import TLP

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
_STANDARD_MARKINGS = {
    TLP.WHITE: stix2.TLP_WHITE,
    TLP.GREEN: stix2.TLP_GREEN,
    TLP.AMBER: stix2.TLP_AMBER,
    TLP.RED: stix2.TLP_RED,
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
    status: str = "embedded"

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
    return json.loads(_STANDARD_MARKINGS[tlp].serialize())


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


@cache
def _identity_id(name: str) -> str:
    return Identity.generate_id(name, "individual")


def identity_id(user: Mapping[str, Any]) -> str:
    """From the username first imported: OpenCTI finds the Individual by this id even once
    renamed (the platform then keeps the old name as an alias, whose id it resolves)."""
    return _identity_id(_first_identity_name(user))


@cache
def _channel_id(name: str) -> str:
    return Channel.generate_id(name)


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


def _file_entries(
    attachments: Iterable[Attachment], tlp: TLP, no_trigger_import: bool
) -> list[dict[str, Any]]:
    entries = []
    for attachment in attachments:
        if attachment.path is None:
            continue
        entries.append(
            {
                "name": attachment.name,
                "data": base64.b64encode(attachment.path.read_bytes()).decode("ascii"),
                "mime_type": attachment.mime_type,
                "object_marking_refs": [marking_id(tlp)],
                "no_trigger_import": no_trigger_import,
            }
        )
    return entries


def _title(message: str) -> str | None:
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return (first_line[:117] + "...") if len(first_line) > 120 else (first_line or None)


def message_objects(
    post: Post,
    context: ChannelContext,
    author: Mapping[str, Any],
    attachments: list[Attachment],
    tlp: TLP,
    root_known: bool = True,
    no_trigger_import: bool = True,
) -> list[dict[str, Any]]:
    """The media-content of one post and its links to the channel and to its thread's root
    (left out when the root could not be delivered: no relationship may dangle)."""
    description = [f"Mattermost message by {identity_name(author)} in {context.name}"]
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
    missing = [a for a in attachments if a.path is None]
    if missing:
        description.append(
            "attachments not embedded: "
            + ", ".join(f"{a.name} ({a.size} bytes, {a.mime_type}): {a.error}" for a in missing)
        )
    embedded = [a for a in attachments if a.path is not None]
    if embedded:
        description.append(
            "attachments: " + ", ".join(f"{a.name} sha256={a.sha256}" for a in embedded)
        )
    marking = marking_id(tlp)
    url = context.permalink(post["id"])
    text = post.get("message") or ""
    message: dict[str, Any] = {
        "type": "media-content",
        "spec_version": "2.1",
        "id": _url_id(url),
    }
    title = _title(text)
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
    files = _file_entries(attachments, tlp, no_trigger_import)
    if files:
        message["x_opencti_files"] = files
    if post.get("delete_at"):
        message["x_opencti_labels"] = [DELETED_LABEL]
    when = _stamp(post["create_at"])
    objects = [message, _related(message["id"], channel_id(context), when, marking)]
    if post.get("root_id") and root_known:
        root = message_id(context, post["root_id"])
        objects.append(_related(message["id"], root, when, marking))
    return objects


def root_copy(
    post: Post, context: ChannelContext, author: Mapping[str, Any], tlp: TLP
) -> dict[str, Any]:
    """A thread root as last delivered, for a reply's bundle that must define what it refers
    to. Without its files, and without its description (which lists the files' digests):
    OpenCTI upserts only the properties sent, so both stay as the root's own bundle left them."""
    message = message_objects(post, context, author, [], tlp)[0]
    del message["x_opencti_description"]
    return message


def unknown_author(user_id: str) -> dict[str, Any]:
    """A stand-in for an author the server would not return (removed or hidden)."""
    return {"id": user_id}


def serialize(obj: dict[str, Any]) -> str:
    """orjson: serialising is a sync's hottest step after the network."""
    return orjson.dumps(obj).decode()


def bundle_json(parts: Iterable[str]) -> str:
    """Join serialised objects into one bundle without re-parsing them (stix2 would refuse
    OpenCTI's CLEAR marking)."""
    return (
        f'{{"type": "bundle", "id": "bundle--{uuid.uuid4()}", "objects": ['
        + ", ".join(parts)
        + "]}"
    )


@dataclass
class BundlePart:
    """One bundle and the posts it carries (oldest first) with their attachments."""

    json: str
    objects: int
    posts: list[Post]
    attachments: list[tuple[str, Attachment]]


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _References:
    """What a bundle must define besides its posts and header: their authors, and each
    reply's thread root as last delivered with the root's author. OpenCTI's workers import
    bundles in parallel and in any order, so no bundle may count on another one."""

    def __init__(
        self,
        context: ChannelContext,
        posts: list[Post],
        users: Mapping[str, Mapping[str, Any]],
        roots: Mapping[str, Post],
        missing: Iterable[str],
        tlp: TLP,
    ) -> None:
        self._context, self._users, self._tlp = context, users, tlp
        self._roots = {**roots, **{post["id"]: post for post in posts}}
        self._missing = set(missing)
        self._parts: dict[tuple[str, str], str] = {}
        self.present: set[tuple[str, str]] = set()  # ("user" | "post", id) in this bundle

    def author(self, user_id: str) -> Mapping[str, Any]:
        return self._users.get(user_id) or unknown_author(user_id)

    def linkable(self, post: Post) -> bool:
        """A reply links to its root only where the root can be put in the same bundle."""
        root_id = post.get("root_id")
        return bool(root_id) and root_id not in self._missing and root_id in self._roots

    def needed(self, post: Post) -> list[tuple[str, str]]:
        """The keys `post` refers to that the bundle lacks, in dependency order."""
        keys = []
        if self.linkable(post) and ("post", post["root_id"]) not in self.present:
            keys += [("user", self._roots[post["root_id"]]["user_id"]), ("post", post["root_id"])]
        keys.append(("user", post["user_id"]))
        return [key for key in dict.fromkeys(keys) if key not in self.present]

    def parts(self, keys: list[tuple[str, str]]) -> list[str]:
        return [self._part(key) for key in keys]

    def _part(self, key: tuple[str, str]) -> str:
        if key not in self._parts:
            kind, object_id = key
            if kind == "user":
                obj = identity_object(self.author(object_id), self._tlp)
            else:
                root = self._roots[object_id]
                obj = root_copy(root, self._context, self.author(root["user_id"]), self._tlp)
            self._parts[key] = serialize(obj)
        return self._parts[key]

    def took(self, post: Post, keys: list[tuple[str, str]]) -> str | None:
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
) -> Iterator[BundlePart]:
    """Bundles of whole posts, each under `max_objects` and `max_bytes` (a single post larger
    than that still goes alone), each self-contained: marking, channel, its authors, and the
    root of each reply it holds (from this batch, or `roots`: as last delivered).

    Built one at a time, so only one bundle's files are in memory.
    """
    header = [serialize(marking_object(tlp)), serialize(channel_object(context, tlp))]
    refs = _References(context, posts, users, roots or {}, missing_roots, tlp)
    parts, size, carried = list(header), 0, []

    def flush() -> BundlePart:
        files = [(post["id"], a) for post in carried for a in attachments.get(post["id"], [])]
        return BundlePart(bundle_json(parts), len(parts), list(carried), files)

    for post in posts:
        message = [
            serialize(obj)
            for obj in message_objects(
                post,
                context,
                refs.author(post["user_id"]),
                attachments.get(post["id"], []),
                tlp,
                root_known=refs.linkable(post),
                no_trigger_import=no_trigger_import,
            )
        ]
        needed = refs.needed(post)
        added = refs.parts(needed) + message
        added_size = sum(_size(part) for part in added)
        if carried and (size + added_size > max_bytes or len(parts) + len(added) > max_objects):
            yield flush()
            parts, size, carried = list(header), 0, []
            refs.present.clear()
            needed = refs.needed(post)
            added = refs.parts(needed) + message
            added_size = sum(_size(part) for part in added)
        copied = refs.took(post, needed)
        if copied is not None:
            parts.remove(copied)
            size -= _size(copied)
        parts.extend(added)
        size += added_size
        carried.append(post)
    if carried:
        yield flush()
