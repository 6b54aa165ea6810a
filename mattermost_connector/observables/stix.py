"""Indicators found in a post as STIX: SCOs (a CVE as a vulnerability) with deterministic ids.

The same value from a thousand messages is one object with a thousand links: ids are stix2's
deterministic SCO ids (uuid5 over the id-contributing properties, pycti's generators for the
vulnerability), so OpenCTI upserts rather than duplicates. Each post's indicators are bounded
(MAX_BYTES_PER_POST) so that a pasted dump cannot outgrow the room its bundle keeps for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from pycti import Vulnerability

from mattermost_connector.observables import MAX_BYTES_PER_POST
from mattermost_connector.observables.extract import CVE, FILE, Filters, Found, extract

Post = Mapping[str, Any]
__all__ = ["MAX_BYTES_PER_POST", "Observable", "observables_of", "observer", "searchable_text"]
# Fixed-length stand-ins for what `object` and the link are given, to size them exactly
_SAMPLE_IDENTITY = "identity--00000000-0000-5000-8000-000000000000"
_SAMPLE_MARKING = "marking-definition--00000000-0000-4000-8000-000000000000"
_SAMPLE_WHEN = "2000-01-01T00:00:00.000Z"
_LINK_BYTES = 520  # a related-to with creator and marking, serialised, and its separator


def _uuid5(kind: str, canonical: str) -> str:
    from mattermost_connector.stix import _uuid5 as uuid5  # the connector's one implementation

    return uuid5(kind, canonical)


@dataclass(frozen=True)
class Observable:
    """One indicator as OpenCTI keeps it: `kind` is its STIX type."""

    kind: str
    value: str
    algorithm: str = ""  # a file's hash name (STIX: MD5, SHA-1, SHA-256, SHA-512)

    @property
    def id(self) -> str:
        return _observable_id(self.kind, self.value, self.algorithm)

    def object(self, created_by_ref: str, marking_id: str, when: str) -> dict[str, Any]:
        """The STIX object, created by the author of the post that brings it (`when`: that
        post's time, for the vulnerability, an SDO; SCOs carry no timestamps)."""
        if self.kind == CVE:
            return {
                "type": "vulnerability",
                "spec_version": "2.1",
                "id": self.id,
                "created": when,
                "modified": when,
                "name": self.value,
                "created_by_ref": created_by_ref,
                "object_marking_refs": [marking_id],
            }
        body: dict[str, Any] = {"type": self.kind, "spec_version": "2.1", "id": self.id}
        if self.kind == FILE:
            body["hashes"] = {self.algorithm: self.value}
        else:
            body["value"] = self.value
        body["object_marking_refs"] = [marking_id]
        body["x_opencti_created_by_ref"] = created_by_ref
        return body

    @property
    def max_size(self) -> int:
        """Bytes its object and its link take in a bundle, separators included."""
        sample = self.object(_SAMPLE_IDENTITY, _SAMPLE_MARKING, _SAMPLE_WHEN)
        return len(orjson.dumps(sample)) + 2 + _LINK_BYTES


@cache
def _observable_id(kind: str, value: str, algorithm: str) -> str:
    if kind == CVE:
        return Vulnerability.generate_id(value)
    if kind == FILE:
        return _uuid5(kind, f'{{"hashes":{{"{algorithm}":{orjson.dumps(value).decode()}}}}}')
    return _uuid5(kind, f'{{"value":{orjson.dumps(value).decode()}}}')


def searchable_text(post: Post) -> str:
    """What an analyst wrote in a post: its message and its integration attachments' text
    (Mattermost's `props.attachments`: pretext, title, text, fields, footer)."""
    message = post.get("message") or ""
    props = post.get("props")
    if not props:
        return message
    parts = [message]
    attachments = props.get("attachments") if isinstance(props, Mapping) else None
    for attachment in attachments if isinstance(attachments, list) else []:
        if not isinstance(attachment, Mapping):
            continue
        parts += [str(attachment.get(key) or "") for key in ("pretext", "title", "text", "footer")]
        for field in attachment.get("fields") or []:
            if isinstance(field, Mapping):
                parts += [str(field.get("title") or ""), str(field.get("value") or "")]
    return "\n".join(part for part in parts if part)


def observables_of(
    extract: Callable[[str], Iterable[Found]],
    post: Post,
    text_of: Callable[[Post], str] = searchable_text,
) -> list[Observable]:
    """The post's indicators in order of appearance, as many as MAX_BYTES_PER_POST holds."""
    kept, size = [], 0
    for found in extract(text_of(post)):
        observable = Observable(found.kind, found.value, found.algorithm)
        size += observable.max_size
        if size > MAX_BYTES_PER_POST:
            break
        kept.append(observable)
    return kept


def observer(
    kinds: Iterable[str],
    server_host: str,
    private_addresses: bool,
    text_of: Callable[[Post], str] = searchable_text,
) -> Callable[[Post], list[Observable]]:
    """What iter_bundles asks of each post, for a deployment's settings (`text_of`: what is
    read of a post, e.g. an integration post's rendering)."""
    filters = Filters(frozenset(kinds), server_host, private_addresses)

    def observe(post: Post) -> list[Observable]:
        return observables_of(lambda text: extract(text, filters), post, text_of)

    return observe
