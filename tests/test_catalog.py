"""OpenCTI's connector catalog and `docker compose up`: our `__metadata__/`, samples and Docker
files checked as the connectors repository checks its own connectors.

Vendored from OpenCTI-Platform/connectors at commit a2681ba88eb06bdaa4e78e0227716e9c12a7031f
(Apache-2.0): `tests/tests_metadata/test_metadata.py`, `test_connector_manifest.py`,
`test_connector_config_schema.py`, `tests/_manifest_validators.py`, and the connector linter's
rules VC401, VC501 and VC504 (`shared/tools/connector_linter/connector_linter/checks/`). Their
assertions are kept as written there; the paths point at this repository instead of walking
`external-import/*`. No Docker engine runs here: the Docker files are checked by reading them.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
METADATA = ROOT / "__metadata__"

# tests/_manifest_validators.py
VALID_USE_CASES = {
    "Adversary & Campaign Insights",
    "Vulnerability & Exploit Awareness",
    "Infrastructure & Attack Surface Visibility",
    "Detection & Response Enablement",
    "Fraud, Financial Crime & Cryptocurrency Monitoring",
    "Brand, Digital Risk & Underground Exposure",
    "Third-Party & Supply Chain Oversight",
    "Cloud, SaaS & Platform Security",
    "Geopolitical, Physical & Hybrid Risk Analysis",
    "Market Vertical & Mission-Specific Intelligence",
    "FIMI & Disinformation",
    "Other",
}
VALID_SOLUTION_CATEGORIES = {
    "Threat Intelligence Feed",
    "Endpoint Detection & Response",
    "SIEM & Security Analytics",
    "Malware Analysis & Sandbox",
    "SOAR & Security Automation",
    "Vulnerability & Exposure Management",
    "Attack Surface Management",
    "Network Security",
    "Email Security",
    "AI Security",
    "Incident Response & Case Management",
    "Digital Risk Protection",
    "Governance, Risk & Compliance",
    "Cloud Security",
    "Enrichment & Reputation",
    "Import, Export & Sharing",
    "Other",
}
VALID_CONTAINER_TYPES = {
    "EXTERNAL_IMPORT",
    "INTERNAL_ENRICHMENT",
    "INTERNAL_EXPORT_FILE",
    "INTERNAL_IMPORT_FILE",
    "STREAM",
}
VALID_LOG_LEVELS = {"error", "warning", "warn", "info", "debug"}


def is_valid_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def is_valid_date_str(value: object) -> bool:
    try:
        date.fromisoformat(value)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


def manifest() -> dict:
    return json.loads((METADATA / "connector_manifest.json").read_text(encoding="utf-8"))


def schema() -> dict:
    return json.loads((METADATA / "connector_config_schema.json").read_text(encoding="utf-8"))


# -- test_metadata.py -----------------------------------------------------------------------


def test_metadata_holds_the_manifest_the_config_schema_and_a_logo():
    files = {path.name for path in METADATA.iterdir()}
    assert {"connector_manifest.json", "connector_config_schema.json"} <= files
    logo = next((name for name in files if name.startswith("logo.")), None)
    assert logo is not None
    assert (METADATA / logo).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the manifest names it where the connectors repository keeps a connector's metadata
    assert manifest()["logo"].endswith(f"/__metadata__/{logo}")


def test_metadata_holds_the_config_doc_generated_from_the_schema():
    """All external-import connectors with a schema ship CONNECTOR_CONFIG_DOC.md; ours is
    rendered from our schema by the repository's own generator's library and settings."""
    from mattermost_connector import metadata

    doc = (METADATA / "CONNECTOR_CONFIG_DOC.md").read_text(encoding="utf-8")
    assert doc == metadata.config_doc(schema())
    for name in schema()["properties"]:
        assert f"| {name} |" in doc, name


# -- test_connector_manifest.py -------------------------------------------------------------


def test_manifest_is_valid():
    m = manifest()
    assert is_valid_str(m["title"])
    assert is_valid_str(m["slug"])
    assert is_valid_str(m["description"])
    assert is_valid_str(m["short_description"])
    assert is_valid_str(m["logo"]) or m["logo"] is None
    assert isinstance(m["use_cases"], list) and 1 <= len(m["use_cases"]) <= 3
    assert set(m["use_cases"]) <= VALID_USE_CASES
    assert isinstance(m["solution_categories"], list) and 1 <= len(m["solution_categories"]) <= 3
    assert set(m["solution_categories"]) <= VALID_SOLUTION_CATEGORIES
    assert is_valid_str(m["contact"]) or m["contact"] is None
    assert m["license_type"] in {"Free", "Commercial"} or m["license_type"] is None
    assert isinstance(m["verified"], bool)
    assert is_valid_date_str(m["last_verified_date"]) or m["last_verified_date"] is None
    assert isinstance(m["playbook_supported"], bool)
    level = m["max_confidence_level"]
    assert isinstance(level, int) and 0 <= level <= 100
    assert is_valid_str(m["support_version"])
    assert is_valid_str(m["subscription_link"]) or m["subscription_link"] is None
    assert m["source_code"].startswith("https://github.com/OpenCTI-Platform/connectors/")
    assert isinstance(m["manager_supported"], bool)
    assert is_valid_str(m["container_version"])
    assert m["container_image"].startswith("opencti/connector-")
    assert m["container_type"] in VALID_CONTAINER_TYPES


# -- test_connector_config_schema.py --------------------------------------------------------


def test_config_schema_is_valid_json_schema():
    s = schema()
    assert s.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)
    assert s.get("type") == "object"
    assert isinstance(s.get("properties"), dict)
    assert isinstance(s.get("required"), list)
    assert s.get("additionalProperties") is True


@pytest.mark.parametrize("name", sorted(schema()["properties"]))
def test_config_schema_octi_ui_compatibility_rules(name: str):
    prop = schema()["properties"][name]
    assert "type" in prop
    assert "anyOf" not in prop
    assert "oneOf" not in prop
    assert prop.get("type") != "object"
    if prop.get("type") == "array":
        assert "default" in prop


def test_config_schema_common_properties():
    s = schema()
    properties = s["properties"]
    assert properties["OPENCTI_URL"].get("type") == "string"
    assert properties["OPENCTI_URL"].get("format") == "uri"
    assert properties["OPENCTI_TOKEN"].get("type") == "string"
    assert properties["CONNECTOR_NAME"].get("type") == "string"
    assert isinstance(properties["CONNECTOR_NAME"].get("default"), str)
    assert properties["CONNECTOR_NAME"]["default"]
    # the repository xfails without a const; ours must not need that leniency
    assert properties["CONNECTOR_TYPE"].get("const")
    assert properties["CONNECTOR_LOG_LEVEL"].get("type") == "string"
    assert properties["CONNECTOR_LOG_LEVEL"].get("default") in VALID_LOG_LEVELS
    assert set(properties["CONNECTOR_LOG_LEVEL"]["enum"]) <= VALID_LOG_LEVELS
    required = s["required"]
    assert "OPENCTI_URL" in required
    assert "OPENCTI_TOKEN" in required
    assert "CONNECTOR_NAME" not in required
    assert "CONNECTOR_TYPE" not in required
    assert "CONNECTOR_LOG_LEVEL" not in required
    assert "CONNECTOR_ID" not in properties
    assert "CONNECTOR_ID" not in required


def test_config_schema_external_import_rules():
    properties = schema()["properties"]
    assert properties["CONNECTOR_TYPE"]["const"] == "EXTERNAL_IMPORT"
    assert properties["CONNECTOR_SCOPE"].get("type") == "array"
    assert isinstance(properties["CONNECTOR_SCOPE"].get("default"), list)
    assert properties["CONNECTOR_DURATION_PERIOD"].get("type") == "string"
    assert properties["CONNECTOR_DURATION_PERIOD"].get("format") == "duration"
    assert isinstance(properties["CONNECTOR_DURATION_PERIOD"].get("default"), str)


def test_run_every_reads_as_the_deprecated_alias():
    """As the repository's connectors declare it: deprecated, no default of its own."""
    run_every = schema()["properties"]["CONNECTOR_RUN_EVERY"]
    assert run_every["deprecated"] is True
    assert "default" not in run_every
    assert "Use CONNECTOR_DURATION_PERIOD instead" in run_every["description"]


def test_the_schema_scope_and_its_defaults_are_what_the_settings_take(monkeypatch, tmp_path):
    """The manager passes the schema's defaults back as variables: each must load, to the
    settings' own default (a list scope becomes pycti's comma-separated one)."""
    from mattermost_connector.config import ConnectorSettings

    monkeypatch.chdir(tmp_path)
    default = ConnectorSettings()
    monkeypatch.setenv(
        "CONNECTOR_DURATION_PERIOD", schema()["properties"]["CONNECTOR_DURATION_PERIOD"]["default"]
    )
    assert ConnectorSettings().run_every == default.run_every
    assert ConnectorSettings(scope=["mattermost", "other"]).scope == "mattermost,other"
    assert ",".join(schema()["properties"]["CONNECTOR_SCOPE"]["default"]) == default.scope


# -- the connector linter: VC401, VC501, VC504 -----------------------------------------------


def env_assignments(path: Path) -> list[str]:
    """Variables set (not commented out) in an env file or a compose file's environment."""
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^\s*-?\s*([A-Z][A-Z0-9_]*)\s*[=:]", text, flags=re.M)


def test_compose_image_is_the_catalogs_name_and_latest():
    """VC401: the first `image:` line is opencti/connector-<directory>:latest."""
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    first = re.search(r"^\s*image:\s*(?P<image>[^\s#]+)", compose, flags=re.M)
    assert first is not None
    assert first["image"] == f"opencti/connector-{manifest()['slug']}:latest"


@pytest.mark.parametrize("sample", [".env.sample", "docker-compose.yml"])
def test_no_legacy_interval_or_confidence_is_set(sample: str):
    """VC501 (`*_INTERVAL`, CONNECTOR_RUN_EVERY) and VC504 (`CONFIDENCE_LEVEL`): both stay
    accepted for the original connector's users, but the samples no longer set them."""
    names = env_assignments(ROOT / sample)
    assert not [n for n in names if re.search(r"_INTERVAL$|^CONNECTOR_RUN_EVERY$", n)]
    assert not [n for n in names if re.search(r"CONFIDENCE_(LEVEL|SCORE)", n, re.I)]
    if sample == ".env.sample":
        assert "CONNECTOR_DURATION_PERIOD" in names


# -- Docker ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined: (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_data_volume_is_created_and_owned_by_the_connectors_user():
    """A fresh named volume is initialised from the image's directory, owner included: it
    must exist and belong to the user the connector runs as, before VOLUME declares it."""
    steps = dockerfile()
    (volume,) = [json.loads(args)[0] for word, args in steps if word == "VOLUME"]
    user = [args for word, args in steps if word == "USER"][-1]
    runs = " && ".join(args for word, args in steps if word == "RUN")
    uid = re.search(r"useradd[^&]*--uid (\d+) (\w+)", runs)
    assert uid is not None and user in (uid[1], uid[2])
    assert re.search(rf"mkdir -p {re.escape(volume)}(\s|/|$)", runs)
    assert re.search(rf"chown -R {uid[2]}(:{uid[2]})? {re.escape(volume)}(\s|$)", runs)
    # where the settings write inside the image is inside that volume
    env = " ".join(args for word, args in steps if word == "ENV")
    assert f"sqlite:///{volume}/" in env and f"PATH={volume}/" in env
    order = [word for word, _ in steps]
    assert order.index("RUN") < order.index("VOLUME")


def test_the_image_and_compose_check_health_with_the_connectors_check():
    from mattermost_prefect import cli

    steps = dockerfile()
    (health,) = [args for word, args in steps if word == "HEALTHCHECK"]
    (entry,) = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert '["mattermost-connector", "check"]' in health and entry == ["mattermost-connector"]
    assert "check" in cli.COMMANDS
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'mattermost-connector = "mattermost_prefect.cli:main"' in pyproject


def compose() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_waits_for_a_healthy_prefect_and_checks_the_connector():
    services = compose()["services"]
    assert services["connector"]["healthcheck"]["test"] == ["CMD", "mattermost-connector", "check"]
    assert services["connector"]["depends_on"]["prefect"]["condition"] == "service_healthy"
    probe = " ".join(services["prefect"]["healthcheck"]["test"])
    # Prefect's server answers GET /api/health (prefect/server/api/root.py)
    assert "http://localhost:4200/api/health" in probe
    assert services["prefect"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["connector"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"


def test_compose_runs_the_prefect_server_the_connector_is_pinned_to():
    """Prefect publishes `prefecthq/prefect:<version>-python<major.minor>`
    (prefect/utilities/dockerutils.py, get_prefect_image_name): the server the compose file
    starts is the release constraints.txt installs, on the connector image's Python."""
    pinned = re.search(r"^prefect==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    base = next(args for word, args in dockerfile() if word == "FROM")
    python = re.fullmatch(r"python:(\d+\.\d+)-slim", base)
    assert pinned and python
    image = compose()["services"]["prefect"]["image"]
    assert image == f"prefecthq/prefect:{pinned[1]}-python{python[1]}"


def test_the_build_context_leaves_out_environments_and_secrets():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".env", ".git", "config.yml", "data/"):
        assert entry in ignored, entry
    copied = [args.split()[0] for word, args in dockerfile() if word == "COPY"]
    assert not [path for path in copied if path.rstrip("/") in {"tests", "docs"}]
