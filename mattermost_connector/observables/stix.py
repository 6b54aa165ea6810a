"""Indicators found in a post as STIX: SCOs (a CVE as a vulnerability) with deterministic ids.

The same value from a thousand messages is one object with a thousand links: ids are stix2's
deterministic SCO ids (uuid5 over the id-contributing properties, pycti's generators for the
vulnerability), so OpenCTI upserts rather than duplicates. Each post's indicators are bounded
(MAX_BYTES_PER_POST) so that a pasted dump cannot outgrow the room its bundle keeps for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from mattermost_connector.observables import MAX_BYTES_PER_POST
from mattermost_connector.observables.extract import CVE, FILE, Filters, Found, extract
from mattermost_connector.stix import _uuid5  # the connector's one implementation

Post = Mapping[str, Any]
__all__ = [
    "MAX_BYTES_PER_POST",
    "Observable",
    "known",
    "observables_of",
    "observer",
    "searchable_text",
]
# Fixed-length stand-ins for what `object` and the link are given, to size them exactly
_SAMPLE_IDENTITY = "identity--00000000-0000-5000-8000-000000000000"
_SAMPLE_MARKING = "marking-definition--00000000-0000-4000-8000-000000000000"
_SAMPLE_WHEN = "2000-01-01T00:00:00.000Z"
_LINK_BYTES = 520  # a related-to with creator and marking, serialised, and its separator


@dataclass(frozen=True)
class Observable:
    """One indicator as OpenCTI keeps it: `kind` is its STIX type. Its id, size bound and the
    start of its serialised object are derived once, at construction (`known()` reuses them
    for an indicator that comes back)."""

    kind: str
    value: str
    algorithm: str = ""  # a file's hash name (STIX: MD5, SHA-1, SHA-256, SHA-512)
    # derived in __post_init__: the id, the bytes its object and a link take in a bundle,
    # and its object up to its creator
    id: str = field(default="", init=False, repr=False, compare=False)
    max_size: int = field(default=0, init=False, repr=False, compare=False)
    _head: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        identifier = _observable_id(self.kind, self.value, self.algorithm)
        head = f'{{"type":"{self.kind}","spec_version":"2.1","id":"{identifier}"'
        if self.kind == FILE:
            head += f',"hashes":{{{_json(self.algorithm)}:{_json(self.value)}}}'
        elif self.kind != CVE:
            head += f',"value":{_json(self.value)}'
        object.__setattr__(self, "id", identifier)
        object.__setattr__(self, "_head", head)
        if self.kind == CVE:
            rest = _bytes(self.serialized(_SAMPLE_IDENTITY, _SAMPLE_MARKING, _SAMPLE_WHEN))
        else:  # the tail's ids have fixed lengths
            rest = _bytes(head) + len(_sco_tail(_SAMPLE_IDENTITY, _SAMPLE_MARKING))
        object.__setattr__(self, "max_size", rest + 2 + _LINK_BYTES)

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

    def serialized(self, created_by_ref: str, marking_id: str, when: str) -> str:
        """`object` as orjson writes it, from the part derived once: bundles repeat an
        indicator's object for each post that brings it to a new bundle."""
        if self.kind == CVE:
            return (
                f'{self._head},"created":{_json(when)},"modified":{_json(when)}'
                f',"name":{_json(self.value)},"created_by_ref":{_json(created_by_ref)}'
                f',"object_marking_refs":[{_json(marking_id)}]}}'
            )
        return self._head + _sco_tail(created_by_ref, marking_id)


@lru_cache(maxsize=256)  # a run's few authors and one marking
def _sco_tail(created_by_ref: str, marking_id: str) -> str:
    return (
        f',"object_marking_refs":[{_json(marking_id)}]'
        f',"x_opencti_created_by_ref":{_json(created_by_ref)}}}'
    )


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _observable_id(kind: str, value: str, algorithm: str) -> str:
    if kind == CVE:  # pycti's Vulnerability.generate_id, written out (as stix.py's ids)
        return _uuid5(kind, f'{{"name":{_json(value.lower().strip())}}}')
    if kind == FILE:
        return _uuid5(kind, f'{{"hashes":{{"{algorithm}":{_json(value)}}}}}')
    return _uuid5(kind, f'{{"value":{_json(value)}}}')


@lru_cache(maxsize=8192)  # chats repeat indicators; bounded: a long-running worker
def known(kind: str, value: str, algorithm: str = "") -> Observable:
    """The indicator, its id and serialised start computed once while it keeps coming back."""
    return Observable(kind, value, algorithm)


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
        for item in attachment.get("fields") or []:
            if isinstance(item, Mapping):
                parts += [str(item.get("title") or ""), str(item.get("value") or "")]
    return "\n".join(part for part in parts if part)


def observables_of(
    extract: Callable[[str], Iterable[Found]],
    post: Post,
    text_of: Callable[[Post], str] = searchable_text,
) -> list[Observable]:
    """The post's indicators in order of appearance, as many as MAX_BYTES_PER_POST holds."""
    kept, size = [], 0
    for found in extract(text_of(post)):
        observable = known(found.kind, found.value, found.algorithm)
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
