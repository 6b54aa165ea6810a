"""A recording stand-in for the OpenCTI platform's knowledge API, fed by pycti's own import.

OpenCTI's worker hands each queued bundle to pycti's `OpenCTIStix2.import_bundle_from_json`,
which turns every object into GraphQL mutations (markingDefinitionAdd, individualAdd,
channelAdd, stixCyberObservableAdd, stixCoreRelationshipAdd, ...). This module answers those
mutations the way the platform stores them, so a test can replay our bundles through the real
pycti and check what OpenCTI would be asked to keep. Rules modelled, from the platform source
(OpenCTI-Platform/opencti, opencti-platform/opencti-graphql/src/):

- standard ids: `schema/identifier.js` (`generateStandardId`, `idGen`, `STATIC_STANDARD_IDS`)
  and `modules/channel/channel.ts` (`identifier`): uuid5 in the OASIS namespace over the
  canonical JSON of the id-contributing fields, names lower-cased and trimmed
  (`normalizeName`); Individual by name + identity_class, Channel by name, Media-Content by
  url (as given), Marking-Definition by definition + definition_type upper-cased (TLP ones
  fixed), relationship by type + source/target standard ids (+ start/stop time when set).
- an element is found by its internal id, standard id or any of its `x_opencti_stix_ids`
  (`getInputIds`/`getInstanceIds`); a `stix_id` other than the standard id is kept in
  `x_opencti_stix_ids` (`buildUpdatePatchForUpsert` in `utils/upsert-utils.js`).
- references (createdBy, objectMarking, objectLabel, fromId/toId) must resolve, or the whole
  mutation fails with MISSING_REFERENCE_ERROR (`inputResolveRefs` in `database/middleware`);
  pycti's worker loop retries such an item, then gives it up (`import_item_with_retries`).
- creation uploads every `files[i]` under `import/<type>/<internal id>/<name>` with
  `filesMarkings[i]`, or else the entity's markings (`internalCreateEntityRaw` in
  `database/middleware.ts`, "Handle multiple files upload").
- an upsert (the element already exists) fills empty attributes and replaces them with
  non-empty values, adds missing markings, keeps an existing author, and of files handles
  only the singular `file`, appended to `x_opencti_files` (`generateFileInputsForUpsert`,
  `generateAttributesInputsForUpsert`, `generateRefsInputsForUpsert` in
  `utils/upsert-utils.js`); the plural `files` pycti sends is not read on that path, so such
  files are recorded here as `ignored_files` and not stored.
- the five TLP markings exist before any import (the platform creates them at start).
- relationships: `related-to` between any two types (`checkStixCoreRelationshipMapping` in
  `database/stix.ts`); observables (IPv4-Addr, IPv6-Addr, Domain-Name, Url, Email-Addr) by
  value, Vulnerability by name lower-cased, StixFile by its first hash in the platform's order.
- an Artifact's `payload_bin`: pycti creates (or upserts) the Artifact, then uploads the
  bytes with `stixCyberObservableEdit { importPush }` (`add_file`), which stores them under
  `import/<type>/<internal id>/<name>` whether the element is new or not, replacing a file
  of that name (`stixCoreObjectImportPush` in `domain/stixCoreObject.js`); pycti passes no
  `fileMarkings` there, so the file carries none of its own (the Artifact's apply).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.graphql_server import GraphQLServer

OASIS_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# identifier.js STATIC_STANDARD_IDS: TLP markings keep the community's ids
TLP_MARKINGS = {
    "TLP:CLEAR": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "TLP:GREEN": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "TLP:AMBER": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "TLP:AMBER+STRICT": "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
    "TLP:RED": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}
_STIX_TYPES = {
    "Marking-Definition": "marking-definition",
    "Individual": "identity",
    "Channel": "channel",
    "Label": "label",
    "Vocabulary": "vocabulary",
    "StixFile": "file",
}
# the open vocabulary pycti resolves for our objects (channel.ts: channel_types -> channel_types_ov)
_VOCABULARY_CATEGORIES = [
    {
        "key": "channel_types_ov",
        "entity_types": ["Channel"],
        "fields": [{"key": "channel_types", "required": False, "multiple": True}],
    }
]
_ADD_MUTATIONS = {
    "MarkingDefinitionAdd": ("Marking-Definition", "markingDefinitionAdd"),
    "IndividualAdd": ("Individual", "individualAdd"),
    "ChannelAdd": ("Channel", "channelAdd"),
    "LabelAdd": ("Label", "labelAdd"),
    "ExternalReferenceAdd": ("External-Reference", "externalReferenceAdd"),
    "VocabularyAdd": ("Vocabulary", "vocabularyAdd"),
    "VulnerabilityAdd": ("Vulnerability", "vulnerabilityAdd"),
}
# identifier.js: observables identified by their value alone
_VALUE_OBSERVABLES = {"IPv4-Addr", "IPv6-Addr", "Domain-Name", "Url", "Email-Addr"}
_REF_INPUTS = ("createdBy", "objectMarking", "objectLabel", "externalReferences")
_NOT_ATTRIBUTES = {
    *_REF_INPUTS,
    "stix_id",
    "x_opencti_stix_ids",
    "update",
    "upsertOperations",
    "files",
    "filesMarkings",
    "noTriggerImport",
    "embedded",
    "file",
    "fileMarkings",
    "objectOrganization",
    "customFieldValues",
    "createIndicator",
    "killChainPhases",
    "fromId",
    "toId",
}


class GraphQLFailure(Exception):
    """An error answered to the client, shaped as the platform's (config/errors.js)."""

    def __init__(self, name: str, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.name, self.message, self.data = name, message, data

    def payload(self) -> dict[str, Any]:
        return {
            "errors": [
                {
                    "message": self.message,
                    "name": self.name,
                    "extensions": {"code": self.name, "data": self.data},
                }
            ]
        }


@dataclass
class StoredFile:
    name: str
    data: bytes
    mime_type: str
    markings: list[str]  # marking ids as pycti sent them (filesMarkings[i])
    no_trigger_import: bool = False
    embedded: bool = False


@dataclass
class Entity:
    internal_id: str
    entity_type: str
    standard_id: str
    stix_ids: list[str]
    attributes: dict[str, Any]
    created_by: str | None = None  # internal id
    markings: list[str] = field(default_factory=list)  # internal ids
    labels: list[str] = field(default_factory=list)  # internal ids
    references: list[str] = field(default_factory=list)  # external references' internal ids
    files: dict[str, StoredFile] = field(default_factory=dict)  # storage key -> file
    ignored_files: list[StoredFile] = field(default_factory=list)  # sent on an upsert

    @property
    def ids(self) -> list[str]:
        return [self.internal_id, self.standard_id, *self.stix_ids]

    def node(self) -> dict[str, Any]:
        return {
            **self.attributes,
            "id": self.internal_id,
            "standard_id": self.standard_id,
            "entity_type": self.entity_type,
            "parent_types": [],
            "x_opencti_stix_ids": self.stix_ids,
        }


@dataclass
class Relationship(Entity):
    relationship_type: str = ""
    from_id: str = ""  # internal ids
    to_id: str = ""


@dataclass
class MissingReference:
    operation: str
    stix_id: str | None
    unresolved: list[str]


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stix_uuid(stix_type: str, data: dict[str, Any]) -> str:
    return f"{stix_type}--{uuid.uuid5(OASIS_NAMESPACE, _canonical(data))}"


def _normalize(name: str) -> str:
    return (name or "").lower().strip()


def standard_id(entity_type: str, data: dict[str, Any]) -> str:
    """identifier.js generateStandardId for the types our bundles carry."""
    stix_type = _STIX_TYPES.get(entity_type, entity_type.lower())
    if entity_type == "Marking-Definition":
        definition = str(data["definition"]).upper()
        if data["definition_type"].upper() == "TLP":
            fixed = TLP_MARKINGS.get("TLP:CLEAR" if definition == "TLP:WHITE" else definition)
            if fixed:
                return fixed
        return _stix_uuid(
            stix_type,
            {"definition": definition, "definition_type": data["definition_type"].upper()},
        )
    if entity_type == "Individual":
        return _stix_uuid(
            stix_type, {"identity_class": "individual", "name": _normalize(data["name"])}
        )
    if entity_type == "Channel":
        return _stix_uuid(stix_type, {"name": _normalize(data["name"])})
    if entity_type == "Label":
        return _stix_uuid(stix_type, {"value": _normalize(data["value"])})
    if entity_type == "External-Reference":  # by its URL, else source_name and external_id
        key = (
            {"url": data["url"]}
            if data.get("url")
            else {"source_name": data["source_name"], "external_id": data["external_id"]}
        )
        return _stix_uuid("external-reference", key)
    if entity_type == "Vocabulary":  # modules/vocabulary: name within a category
        return _stix_uuid(stix_type, {"category": data["category"], "name": data["name"]})
    if entity_type == "Media-Content":
        return _stix_uuid(stix_type, {"url": data["url"]})
    if entity_type in _VALUE_OBSERVABLES:
        return _stix_uuid(stix_type, {"value": data["value"]})
    if entity_type == "Vulnerability":
        return _stix_uuid(stix_type, {"name": _normalize(data["name"])})
    if entity_type in ("Artifact", "StixFile"):
        hashes = {h["algorithm"].upper(): h["hash"] for h in data.get("hashes") or []}
        for algorithm in ("MD5", "SHA-1", "SHA-256", "SHA-512"):
            if hashes.get(algorithm):
                return _stix_uuid(stix_type, {"hashes": {algorithm: hashes[algorithm]}})
        key = "url" if entity_type == "Artifact" else "name"
        return _stix_uuid(stix_type, {key: data[key]})
    raise ValueError(f"fake platform: no standard id rule for {entity_type}")


def _relationship_id(data: dict[str, Any], source: Entity, target: Entity) -> str:
    contributing = {
        "relationship_type": data["relationship_type"],
        "source_ref": source.standard_id,
        "target_ref": target.standard_id,
    }
    for key in ("start_time", "stop_time"):
        if data.get(key):
            contributing[key] = data[key]
    return _stix_uuid("relationship", contributing)


def _check_relation(relationship_type: str, source: Entity, target: Entity) -> None:
    """checkRelationConsistency (database/middleware): `related-to` and `revoked-by` are
    allowed between any two entities (database/stix.ts checkStixCoreRelationshipMapping);
    the other types' mapping table is not modelled, so they are refused here."""
    if relationship_type not in ("related-to", "revoked-by"):
        raise GraphQLFailure(
            "FUNCTIONAL_ERROR",
            f"The relationship type {relationship_type} is not allowed between "
            f"{source.entity_type} and {target.entity_type}",
            {},
        )


class ReplayPlatform:
    """The knowledge side of OpenCTI, enough for pycti to import our bundles."""

    def __init__(self, token: str = "replay-token-0000") -> None:
        self.token = token
        self.entities: list[Entity] = []
        self.relationships: list[Relationship] = []
        self.missing_references: list[MissingReference] = []
        self.calls: list[str] = []
        self.pushes: list[tuple[str, str]] = []  # importPush: (internal id, file name)
        self.rejected: list[dict[str, Any]] = []  # set by `replay`
        self._index: dict[str, Entity] = {}
        self._lock = threading.Lock()
        self._server: GraphQLServer | None = None
        for definition, marking_id in TLP_MARKINGS.items():  # created at platform start
            self._store(
                Entity(
                    str(uuid.uuid4()),
                    "Marking-Definition",
                    marking_id,
                    [],
                    {"definition_type": "TLP", "definition": definition},
                )
            )

    # -- what was stored -------------------------------------------------------------------

    def resolve(self, any_id: str) -> Entity | None:
        return self._index.get(any_id)

    def of_type(self, entity_type: str) -> list[Entity]:
        return [e for e in self.entities if e.entity_type == entity_type]

    def marking_definitions(self, internal_or_stix_ids: Iterable[str]) -> set[str]:
        found = (self.resolve(i) for i in internal_or_stix_ids)
        return {m.attributes["definition"] for m in found if m is not None}

    def related(self, from_entity: Entity) -> list[Entity]:
        """Targets of `related-to` relationships from an entity."""
        return [
            self._index[r.to_id]
            for r in self.relationships
            if r.from_id == from_entity.internal_id and r.relationship_type == "related-to"
        ]

    # -- GraphQL ---------------------------------------------------------------------------

    def answer(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(operation)
        try:
            if operation == "healthCheck":
                return {"data": {"about": {"version": "6.9.0"}}}
            if operation == "getVocabCategories":
                return {"data": {"vocabularyCategories": _VOCABULARY_CATEGORIES}}
            if operation in ("Labels", "Vocabularies"):
                entity_type = operation[:-1] if operation == "Labels" else "Vocabulary"
                return {"data": {operation.lower(): self._list(entity_type, variables)}}
            if operation in _ADD_MUTATIONS:
                entity_type, key = _ADD_MUTATIONS[operation]
                entity = self._create_entity(operation, entity_type, dict(variables["input"]))
                return {"data": {key: entity.node()}}
            if operation == "StixCyberObservableAdd":
                return {"data": {"stixCyberObservableAdd": self._observable(variables).node()}}
            if operation == "StixCyberObservableEdit" and "file" in variables:
                pushed = self._import_push(variables)
                return {"data": {"stixCyberObservableEdit": {"importPush": pushed}}}
            if operation == "StixCoreRelationshipAdd":
                relation = self._create_relationship(dict(variables["input"]))
                return {"data": {"stixCoreRelationshipAdd": relation.node()}}
        except GraphQLFailure as failure:
            return failure.payload()
        return {"errors": [{"message": f"fake platform: no operation {operation}"}]}

    def _list(self, entity_type: str, variables: dict[str, Any]) -> dict[str, Any]:
        wanted = {
            f["key"] if isinstance(f["key"], str) else f["key"][0]: f["values"]
            for f in (variables.get("filters") or {}).get("filters", [])
        }
        found = [
            e
            for e in self.of_type(entity_type)
            if all(e.attributes.get(key) in values for key, values in wanted.items())
        ]
        return {
            "edges": [{"node": e.node()} for e in found],
            "pageInfo": {"hasNextPage": False, "endCursor": None, "globalCount": len(found)},
        }

    def _observable(self, variables: dict[str, Any]) -> Entity:
        """stixCyberObservableAdd: the type's own input (`MediaContent`, `Artifact`) merged
        with the common arguments, as `addStixCyberObservable` (domain/stixCyberObservable)."""
        entity_type = variables["type"]
        graphql_type = re.sub(r"(?:^|-|_)(\w)", lambda m: m.group(1).upper(), entity_type)
        specific = variables.get(graphql_type)
        if not specific:
            raise GraphQLFailure(
                "FUNCTIONAL_ERROR", f"Expecting variable {graphql_type} in the input", {}
            )
        common = {
            k: v
            for k, v in variables.items()
            if k not in ("type", graphql_type) and not re.fullmatch(r"[A-Z]\w*", k)
        }
        return self._create_entity("StixCyberObservableAdd", entity_type, {**common, **specific})

    def _import_push(self, variables: dict[str, Any]) -> dict[str, Any]:
        """stixCoreObjectImportPush: a file stored under an existing element, by name."""
        with self._lock:
            entity = self._index.get(variables["id"])
            if entity is None:
                raise GraphQLFailure(
                    "UNSUPPORTED_ERROR", "Cant upload a file an none existing element", {}
                )
            upload = variables["file"]
            key = f"import/{entity.entity_type}/{entity.internal_id}/{upload['filename']}"
            entity.files[key] = StoredFile(
                upload["filename"],
                upload["data"],
                upload["mimetype"],
                list(variables.get("fileMarkings") or []),
                bool(variables.get("noTriggerImport")),
                bool(variables.get("embedded")),
            )
            self.pushes.append((entity.internal_id, upload["filename"]))
            return {"id": key, "name": upload["filename"]}

    def _refs(self, operation: str, data: dict[str, Any]) -> dict[str, Any]:
        """inputResolveRefs: every referenced id must exist, else MISSING_REFERENCE_ERROR."""
        wanted = [data["createdBy"]] if data.get("createdBy") else []
        for key in ("objectMarking", "objectLabel", "externalReferences"):
            wanted += data.get(key) or []
        for key in ("fromId", "toId"):
            if data.get(key):
                wanted.append(data[key])
        unresolved = [i for i in wanted if i not in self._index]
        if unresolved:
            self.missing_references.append(
                MissingReference(operation, data.get("stix_id"), unresolved)
            )
            raise GraphQLFailure(
                "MISSING_REFERENCE_ERROR",
                "Element(s) not found",
                {"genre": "BUSINESS", "unresolvedIds": unresolved},
            )
        return {
            "created_by": self._index[data["createdBy"]].internal_id
            if data.get("createdBy")
            else None,
            "markings": [self._index[i].internal_id for i in data.get("objectMarking") or []],
            "labels": [self._index[i].internal_id for i in data.get("objectLabel") or []],
            "references": [
                self._index[i].internal_id for i in data.get("externalReferences") or []
            ],
        }

    def _uploads(self, data: dict[str, Any], refs: dict[str, Any]) -> list[StoredFile]:
        files = []
        markings = data.get("filesMarkings") or []
        triggers = data.get("noTriggerImport") or []
        embedded = data.get("embedded") or []
        for i, upload in enumerate(data.get("files") or []):
            if upload is None:
                continue
            files.append(
                StoredFile(
                    upload["filename"],
                    upload["data"],
                    upload["mimetype"],
                    list(markings[i] if i < len(markings) and markings[i] else refs["markings"]),
                    bool(triggers[min(i, len(triggers) - 1)]) if triggers else False,
                    bool(embedded[min(i, len(embedded) - 1)]) if embedded else False,
                )
            )
        return files

    def _create_entity(self, operation: str, entity_type: str, data: dict[str, Any]) -> Entity:
        with self._lock:
            refs = self._refs(operation, data)
            std = standard_id(entity_type, data)
            given = [data.get("stix_id"), *(data.get("x_opencti_stix_ids") or [])]
            candidates = [std, *filter(None, given)]
            existing = next((self._index[i] for i in candidates if i in self._index), None)
            uploads = self._uploads(data, refs)
            attributes = {
                k: v for k, v in data.items() if k not in _NOT_ATTRIBUTES and v is not None
            }
            if existing is not None:
                return self._upsert(existing, given, attributes, refs, uploads, data)
            entity = Entity(
                str(uuid.uuid4()),
                entity_type,
                std,
                [i for i in dict.fromkeys(filter(None, given)) if i != std],
                attributes,
                refs["created_by"],
                refs["markings"],
                refs["labels"],
                refs["references"],
            )
            for upload in uploads:
                prefix = "embedded" if upload.embedded else "import"
                key = f"{prefix}/{entity_type}/{entity.internal_id}/{upload.name}"
                entity.files[key] = upload
            self._store(entity)
            return entity

    def _upsert(
        self,
        entity: Entity,
        given: list[str | None],
        attributes: dict[str, Any],
        refs: dict[str, Any],
        uploads: list[StoredFile],
        data: dict[str, Any],
    ) -> Entity:
        """upsert-utils.js generateInputsForUpsert, for a same-confidence connector user."""
        for stix_id in filter(None, given):
            if stix_id != entity.standard_id and stix_id not in entity.stix_ids:
                entity.stix_ids.append(stix_id)
                self._index[stix_id] = entity
        for key, value in attributes.items():
            if isinstance(value, str) and not value.strip():
                continue
            if value not in (None, [], {}):
                entity.attributes[key] = value
        if entity.created_by is None:
            entity.created_by = refs["created_by"]
        entity.markings += [m for m in refs["markings"] if m not in entity.markings]
        entity.labels += [m for m in refs["labels"] if m not in entity.labels]
        entity.references += [r for r in refs["references"] if r not in entity.references]
        if data.get("file"):  # generateFileInputsForUpsert: the singular form only
            single = data["file"]
            key = f"import/{entity.entity_type}/{entity.internal_id}/{single['filename']}"
            entity.files[key] = StoredFile(
                single["filename"], single["data"], single["mimetype"], list(entity.markings)
            )
        entity.ignored_files += uploads
        return entity

    def _create_relationship(self, data: dict[str, Any]) -> Relationship:
        """createRelationRaw: resolve both ends, find by ids or same ends, else create."""
        with self._lock:
            refs = self._refs("StixCoreRelationshipAdd", data)
            source, target = self._index[data["fromId"]], self._index[data["toId"]]
            _check_relation(data["relationship_type"], source, target)
            std = _relationship_id(data, source, target)
            given = [data.get("stix_id"), *(data.get("x_opencti_stix_ids") or [])]
            existing = next(
                (
                    r
                    for r in self.relationships
                    if r.relationship_type == data["relationship_type"]
                    and (
                        {std, *filter(None, given)} & set(r.ids)
                        or (r.from_id, r.to_id) == (source.internal_id, target.internal_id)
                    )
                ),
                None,
            )
            attributes = {
                k: v for k, v in data.items() if k not in _NOT_ATTRIBUTES and v is not None
            }
            if existing is not None:
                self._upsert(existing, given, attributes, refs, [], data)
                return existing
            relation = Relationship(
                str(uuid.uuid4()),
                data["relationship_type"],
                std,
                [i for i in dict.fromkeys(filter(None, given)) if i != std],
                attributes,
                refs["created_by"],
                refs["markings"],
                refs["labels"],
                relationship_type=data["relationship_type"],
                from_id=source.internal_id,
                to_id=target.internal_id,
            )
            self.relationships.append(relation)
            for any_id in relation.ids:
                self._index[any_id] = relation
            return relation

    def _store(self, entity: Entity) -> None:
        self.entities.append(entity)
        for any_id in entity.ids:
            self._index[any_id] = entity

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> ReplayPlatform:
        self._server = GraphQLServer(self.token, self.answer).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def stop(self) -> None:
        if self._server:
            self._server.stop()
            self._server = None

    # -- replaying -------------------------------------------------------------------------

    def import_bundles(self, bundles: Iterable[str]) -> list[dict[str, Any]]:
        """Each bundle through pycti as OpenCTI's worker does, one message at a time; returns
        the items pycti gave up on (what the worker would dead-letter)."""
        import pycti.utils.opencti_stix2 as stix2_module
        from pycti import OpenCTIApiClient

        client = OpenCTIApiClient(self.url, self.token, log_level="error")
        importer = stix2_module.OpenCTIStix2(client)
        rejected: list[dict[str, Any]] = []
        delay = stix2_module.missing_ref_retry_delay
        # the worker waits 1-3 s before retrying a missing reference; the outcome is the same
        stix2_module.missing_ref_retry_delay = lambda _attempt: 0.0
        try:
            for text in bundles:
                _, failed = importer.import_bundle_from_json(text, update=True)
                rejected += failed
        finally:
            stix2_module.missing_ref_retry_delay = delay
        return rejected


def bundle_texts(source: Sequence[str] | Path) -> list[str]:
    """Bundle JSON texts from a list, or from a directory's *.json files in name order."""
    if isinstance(source, Path):
        return [p.read_text(encoding="utf-8") for p in sorted(source.glob("*.json"))]
    return list(source)


def replay(source: Sequence[str] | Path, *, reverse: bool = False) -> ReplayPlatform:
    """Import bundles (texts or a directory) in order, or reversed, into a fresh platform and
    return it, stopped, with what it stored and `rejected` (items pycti gave up on)."""
    texts = bundle_texts(source)
    platform = ReplayPlatform().start()
    try:
        platform.rejected = platform.import_bundles(reversed(texts) if reverse else texts)
    finally:
        platform.stop()
    return platform
