"""OpenCTI's connector metadata, generated: `python -m mattermost_connector.metadata` (or
`make metadata`) writes `__metadata__/connector_manifest.json`,
`__metadata__/connector_config_schema.json`,
`__metadata__/CONNECTOR_CONFIG_DOC.md` and `config.yml.sample`; `--check` only compares.

Laid out as in OpenCTI's connectors repository (external-import connectors, 2026): the
manifest's fields are the ones its `tests/tests_metadata/test_connector_manifest.py` requires,
and the schema is what its `connectors_sdk` generator makes of pydantic settings: one property
per environment variable, references inlined, nullable types without `anyOf`, no titles,
secrets `format: password` and `writeOnly`, and no `CONNECTOR_ID` (the connector manager sets
it). Types, defaults and constraints come from the settings models in `config.py`;
descriptions from the README's configuration table, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from copy import deepcopy
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticUndefined

from mattermost_connector.config import (
    TLP,
    TLP_SPELLINGS,
    ConnectorSettings,
    MattermostSettings,
    OpenCTISettings,
    _Group,
)
from mattermost_connector.errors import MetadataError

ROOT = Path(__file__).resolve().parents[1]
GROUPS: tuple[tuple[type[_Group], str], ...] = (
    (OpenCTISettings, "OPENCTI_"),
    (ConnectorSettings, "CONNECTOR_"),
    (MattermostSettings, "MATTERMOST_"),
)
# Set by OpenCTI's connector manager, left out of the schema as connectors_sdk does.
MANAGED = {"CONNECTOR_ID"}
# Required by the default (queue) mode: load_settings' cross-check, not the models, says so.
REQUIRED = ["OPENCTI_URL", "OPENCTI_TOKEN", "MATTERMOST_DOMAIN", "MATTERMOST_TOKEN"]
# Where the models' types say less than the variable accepts (None: drop the keyword).
OVERRIDES: dict[str, dict[str, Any]] = {
    # the catalog's tests (test_connector_config_schema.py) want a URI here
    "OPENCTI_URL": {"format": "uri"},
    # pycti takes a comma-separated scope; the catalog declares it a list of strings
    "CONNECTOR_SCOPE": {"type": "array", "items": {"type": "string"}, "default": ["mattermost"]},
    # the effective schedule when neither is set: CONNECTOR_RUN_EVERY's default
    "CONNECTOR_DURATION_PERIOD": {"type": "string", "format": "duration", "default": "PT1H"},
    # the original connector's format, declared as the repository's connectors declare this
    # deprecated alias (no default of its own: CONNECTOR_DURATION_PERIOD carries it)
    "CONNECTOR_RUN_EVERY": {
        "type": "string",
        "format": None,
        "pattern": "^[0-9]+[smhdSMHD]$",
        "default": None,
        "deprecated": True,
    },
    # the original connector's documented spelling of AMBER+STRICT is accepted too
    "MATTERMOST_TLP": {"enum": [*TLP, *TLP_SPELLINGS]},
}
# Properties with no setting behind them: what the connector manager must see, fixed.
CONSTANTS: dict[str, dict[str, Any]] = {
    "CONNECTOR_TYPE": {
        "const": "EXTERNAL_IMPORT",
        "default": "EXTERNAL_IMPORT",
        "description": "Always EXTERNAL_IMPORT: this connector imports from an external source.",
        "type": "string",
    },
}
SCHEMA_ID = "https://www.filigran.io/connectors/mattermost_config.schema.json"

# The original connector's entry in OpenCTI's connectors repository (external-import/mattermost):
# this connector takes its place, with the same variables.
MANIFEST: dict[str, Any] = {
    "title": "Mattermost",
    "slug": "mattermost",
    "description": (
        "Imports Mattermost channels into OpenCTI as STIX 2.1, continuously and without losing "
        "or duplicating a message: every message as a Media-Content observable with its "
        "attached files, its author as an individual Identity, its channel as a Channel, and "
        "threads as relationships. Edits and deletions are re-delivered under the same ids. "
        "Orchestrated by Prefect: a scheduled sync and on-demand backfills, with a per-channel "
        "cursor and run history kept in SQLite or PostgreSQL."
    ),
    "short_description": (
        "Import Mattermost messages, attachments, authors and threads into OpenCTI, "
        "incrementally, with Prefect."
    ),
    # where the connectors repository keeps it; __metadata__/logo.png here
    "logo": "external-import/mattermost/__metadata__/logo.png",
    "use_cases": ["Other"],
    "solution_categories": ["Import, Export & Sharing"],
    "license_type": "Free",
    "contact": None,
    "verified": False,
    "last_verified_date": None,
    "playbook_supported": False,
    "support_version": ">=6.9.0",
    "subscription_link": None,
    "source_code": (
        "https://github.com/OpenCTI-Platform/connectors/tree/master/external-import/mattermost"
    ),
    "manager_supported": False,
    "container_version": "rolling",
    "container_image": "opencti/connector-mattermost",
    "container_type": "EXTERNAL_IMPORT",
}
# config.yml.sample: values for what has no default, shaped as the variable expects
EXAMPLES: dict[str, Any] = {
    "OPENCTI_URL": "http://opencti:8080",
    "OPENCTI_TOKEN": "ChangeMe",
    "CONNECTOR_ID": "ChangeMe",
    "MATTERMOST_DOMAIN": "mattermost.example.org",
    "MATTERMOST_TOKEN": "ChangeMe",
    "MATTERMOST_CHANNEL_IDS": "5i5rip6zaf8qprwfi86iu9xsjy,ztu3g3f4upgjxezhsuqe5imzpr",
}


class _EnvSchema(GenerateJsonSchema):
    def nullable_schema(self, schema: Any) -> JsonSchemaValue:
        """`X | None` is X, unset: no `anyOf` (as connectors_sdk's generator does)."""
        return self.generate_inner(schema["schema"])


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = _inline(deepcopy(defs[node["$ref"].split("/")[-1]]), defs)
            return {**target, **{k: _inline(v, defs) for k, v in node.items() if k != "$ref"}}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def readme_descriptions(readme: Path = ROOT / "README.md") -> dict[str, str]:
    """`VARIABLE -> meaning` from the README's configuration table, markdown removed."""
    found = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[A-Z][A-Z0-9_]+`", cells[0]):
            meaning = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", cells[2]).replace("`", "")
            found[cells[0].strip("`")] = meaning
    return found


def variables() -> list[tuple[str, type[_Group], str]]:
    """Every variable the settings read: (name, group, field)."""
    return [
        (prefix + field.upper(), group, field)
        for group, prefix in GROUPS
        for field in group.model_fields
    ]


def config_schema() -> dict[str, Any]:
    descriptions = readme_descriptions()
    missing = [name for name, _, _ in variables() if name not in descriptions]
    if missing:
        raise MetadataError(
            f"no row for {', '.join(missing)} in the README's configuration table: add one "
            "(its meaning becomes the schema's description)"
        )
    properties: dict[str, Any] = {}
    required: list[str] = []
    for group, prefix in GROUPS:
        raw = group.model_json_schema(schema_generator=_EnvSchema)
        model = _inline(raw, raw.get("$defs", {}))
        for field, schema in model["properties"].items():
            name = prefix + field.upper()
            if name in MANAGED:
                continue
            schema.pop("title", None)
            for keyword, value in OVERRIDES.get(name, {}).items():
                if value is None:
                    schema.pop(keyword, None)
                else:
                    schema[keyword] = value
            schema["description"] = descriptions[name]
            if schema.get("type") == "array":
                # the catalog's UI cannot show a list without a default (its tests require one)
                schema.setdefault("default", [])
            properties[name] = dict(sorted(schema.items()))
            if name == "CONNECTOR_NAME":
                properties.update(CONSTANTS)
            info = group.model_fields[field]
            if info.is_required() or name in REQUIRED:
                required.append(name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": True,
    }


def manifest() -> dict[str, Any]:
    confidence = ConnectorSettings.model_fields["confidence_level"].default
    fields = list(MANIFEST.items())
    at = [key for key, _ in fields].index("support_version")
    fields.insert(at, ("max_confidence_level", confidence))
    return dict(fields)


def config_yml_sample() -> str:
    """Every setting under its section; those with a default commented out, showing it."""
    schema, descriptions = config_schema()["properties"], readme_descriptions()
    lines = [
        "# config.yml: the settings of the environment variables, by section (opencti:,",
        "# connector:, mattermost:) and in lowercase without the prefix. Copy it to config.yml in",
        "# the working directory. Environment variables and .env win over it.",
        "# Generated by `make metadata` from the settings and the README: do not edit.",
    ]
    for group, prefix in GROUPS:
        lines += ["", f"{prefix.rstrip('_').lower()}:"]
        for field, info in group.model_fields.items():
            name = prefix + field.upper()
            meaning = schema[name]["description"] if name in schema else descriptions[name]
            for text in textwrap.wrap(f"{name}: {meaning}", 96):
                lines.append(f"  # {text}")
            if name in EXAMPLES:
                lines.append(f"  {field}: {json.dumps(EXAMPLES[name])}")
                continue
            default = schema.get(name, {}).get("default", info.default)
            if schema.get(name, {}).get("deprecated"):
                default = None  # shown without a value: its replacement carries the default
            if default is None or default is PydanticUndefined:
                lines.append(f"  # {field}:")
            else:
                lines.append(f"  # {field}: {json.dumps(default)}")
    return "\n".join(lines) + "\n"


# As the connectors repository's generator writes it (shared/tools/composer/
# generate_connectors_config_schemas/generate_connector_config_doc.py.sample).
CONFIG_DOC_DESCRIPTION = (
    "Below is an exhaustive enumeration of all configurable parameters available, each "
    "accompanied by detailed explanations of their purposes, default behaviors, and usage "
    "guidelines to help you understand and utilize them effectively."
)


def config_doc(schema: dict[str, Any]) -> str:
    """`CONNECTOR_CONFIG_DOC.md`, rendered from the schema by the catalog's own library."""
    try:
        import jsonschema_markdown
    except ImportError:
        raise MetadataError(
            "jsonschema-markdown is not installed: install the dev extra (make install)"
        ) from None
    return jsonschema_markdown.generate(
        {**schema, "description": CONFIG_DOC_DESCRIPTION},
        title="Connector Configurations",
        hide_empty_columns=True,
        footer=False,
    )


def rendered() -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    dump = lambda data: json.dumps(data, indent=2, ensure_ascii=False) + "\n"  # noqa: E731
    schema = config_schema()
    return {
        ROOT / "__metadata__" / "connector_manifest.json": dump(manifest()),
        ROOT / "__metadata__" / "connector_config_schema.json": dump(schema),
        ROOT / "__metadata__" / "CONNECTOR_CONFIG_DOC.md": config_doc(schema),
        ROOT / "config.yml.sample": config_yml_sample(),
    }


def stale() -> list[Path]:
    return [
        path
        for path, text in rendered().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mattermost_connector.metadata",
        description="Write OpenCTI's connector metadata (__metadata__/) and config.yml.sample "
        "from the settings models and the README's configuration table.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    try:
        files = rendered()
    except MetadataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        old = stale()
        for path in old:
            print(f"out of date: {path.relative_to(ROOT)} (run `make metadata`)", file=sys.stderr)
        return 1 if old else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
