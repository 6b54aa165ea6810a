"""At home in OpenCTI and Prefect: metadata files, OpenCTI's variable names, Secret blocks,
config.yml, and the first hour of a new user (status, help, check, progress)."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from mattermost_connector import metadata, progress
from mattermost_connector.config import load_settings, load_state_database_url
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import ConfigError
from mattermost_connector.state import StateStore
from mattermost_connector.window import backfill_key
from tests.conftest import run_cli
from tests.support import VALID, settings_with

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "5i5rip6zaf8qprwfi86iu9xsjy"


# -- OpenCTI's metadata files --------------------------------------------------------------


def test_checked_in_metadata_is_what_the_settings_generate():
    """Fails when a setting or its README row changed without `make metadata`."""
    assert metadata.stale() == [], "run `make metadata` (python -m mattermost_connector.metadata)"


def test_config_schema_describes_every_variable_as_opencti_lays_it_out():
    schema = json.loads((ROOT / "__metadata__/connector_config_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    variables = {name for name, _, _ in metadata.variables()} - {"CONNECTOR_ID"}
    assert set(schema["properties"]) == variables | set(metadata.CONSTANTS)
    for name, prop in schema["properties"].items():
        assert prop["description"] and "type" in prop and "anyOf" not in prop, name
        assert "title" not in prop, name
    for secret in ("OPENCTI_TOKEN", "MATTERMOST_TOKEN"):
        assert schema["properties"][secret]["format"] == "password"
        assert schema["properties"][secret]["writeOnly"] is True
    assert schema["properties"]["MATTERMOST_TLP"]["enum"][:2] == ["CLEAR", "WHITE"]
    assert schema["properties"]["CONNECTOR_DURATION_PERIOD"]["default"] == "PT1H"
    assert {"MATTERMOST_DOMAIN", "OPENCTI_URL"} <= set(schema["required"])
    validator = jsonschema.Draft202012Validator(schema)
    minimal = {
        "OPENCTI_URL": "http://opencti:8080",
        "OPENCTI_TOKEN": "t",
        "MATTERMOST_DOMAIN": "chat.example.org",
        "MATTERMOST_TOKEN": "t",
        "MATTERMOST_CHANNEL_IDS": [CHANNEL],
    }
    assert list(validator.iter_errors(minimal)) == []
    assert list(validator.iter_errors({**minimal, "CONNECTOR_LOG_LEVEL": "loud"}))
    assert list(
        validator.iter_errors({k: v for k, v in minimal.items() if k != "MATTERMOST_DOMAIN"})
    )


def test_manifest_has_the_fields_opencti_requires():
    manifest = json.loads((ROOT / "__metadata__/connector_manifest.json").read_text())
    # the keys OpenCTI's tests/tests_metadata/test_connector_manifest.py requires, in order
    assert list(manifest) == [
        "title", "slug", "description", "short_description", "logo", "use_cases",
        "solution_categories", "license_type", "contact", "verified", "last_verified_date",
        "playbook_supported", "max_confidence_level", "support_version", "subscription_link",
        "source_code", "manager_supported", "container_version", "container_image",
        "container_type",
    ]  # fmt: skip
    assert manifest["container_type"] == "EXTERNAL_IMPORT"
    assert manifest["container_image"].startswith("opencti/connector-")
    assert 1 <= len(manifest["use_cases"]) <= 3 and 1 <= len(manifest["solution_categories"]) <= 3


def test_a_variable_without_a_readme_row_stops_the_generator(tmp_path: Path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    trimmed = tmp_path / "README.md"
    trimmed.write_text("\n".join(x for x in readme.splitlines() if "`MATTERMOST_PORT` |" not in x))
    original = metadata.readme_descriptions
    monkeypatch.setattr(metadata, "readme_descriptions", lambda: original(trimmed))
    with pytest.raises(metadata.MetadataError, match="no row for MATTERMOST_PORT in the README"):
        metadata.config_schema()


# -- CONNECTOR_DURATION_PERIOD ---------------------------------------------------------------


def test_duration_period_sets_the_schedule(workdir: Path, monkeypatch):
    settings = settings_with(monkeypatch, CONNECTOR_DURATION_PERIOD="PT30M")
    assert settings.connector.run_every == timedelta(minutes=30)
    same = settings_with(monkeypatch, CONNECTOR_DURATION_PERIOD="P1D", CONNECTOR_RUN_EVERY="1d")
    assert same.connector.run_every == timedelta(days=1)


def test_duration_period_and_run_every_must_agree(workdir: Path, monkeypatch):
    with pytest.raises(ConfigError) as caught:
        settings_with(monkeypatch, CONNECTOR_DURATION_PERIOD="PT30M", CONNECTOR_RUN_EVERY="1h")
    assert str(caught.value) == (
        "CONNECTOR_DURATION_PERIOD (PT30M) and CONNECTOR_RUN_EVERY (PT1H) disagree: set only one"
    )


@pytest.mark.parametrize("value", ["1h", "soon", "PT0S"])
def test_a_bad_duration_period_is_named(workdir: Path, monkeypatch, value: str):
    with pytest.raises(ConfigError, match=r"^CONNECTOR_DURATION_PERIOD: must be"):
        settings_with(monkeypatch, CONNECTOR_DURATION_PERIOD=value)


# -- config.yml --------------------------------------------------------------------------------


def test_the_config_yml_sample_loads_and_the_environment_wins(workdir: Path, monkeypatch):
    shutil.copy(ROOT / "config.yml.sample", workdir / "config.yml")
    with pytest.raises(ConfigError, match="CONNECTOR_ID: must be a UUID"):
        load_settings()  # the sample's placeholders are refused, not taken
    text = (workdir / "config.yml").read_text()
    text = text.replace('id: "ChangeMe"', f'id: "{uuid.uuid4()}"')
    text = text.replace("  # port: 8065", "  port: 9065").replace("  # tlp: ", "  tlp: RED #")
    (workdir / "config.yml").write_text(text)
    monkeypatch.setenv("OPENCTI_TOKEN", "from-the-environment")
    monkeypatch.setenv("MATTERMOST_TLP", "green")
    settings = load_settings()
    assert settings.mattermost.domain == "mattermost.example.org"  # from config.yml
    assert settings.mattermost.port == 9065
    assert settings.mattermost.tlp.value == "GREEN"  # the environment over config.yml
    assert settings.opencti.token.get_secret_value() == "from-the-environment"


def test_a_broken_config_yml_is_one_line(workdir: Path, monkeypatch):
    (workdir / "config.yml").write_text("mattermost:\n  port: [8065\n")
    with pytest.raises(ConfigError, match=r"^config.yml: not valid YAML \(line 3\)"):
        settings_with(monkeypatch)


# -- tokens from Prefect Secret blocks ---------------------------------------------------------


def test_tokens_come_from_prefect_secret_blocks(prefect_api: str, workdir: Path, monkeypatch):
    from prefect.blocks.system import Secret

    token, name = "mm-token-in-a-block-0f3e", f"mattermost-token-{uuid.uuid4().hex[:8]}"
    Secret(value=token).save(name)
    env = {k: v for k, v in VALID.items() if k != "MATTERMOST_TOKEN"}
    for variable, value in {**env, "MATTERMOST_TOKEN_BLOCK": name}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("MATTERMOST_TOKEN", raising=False)
    settings = load_settings()
    assert settings.mattermost.token.get_secret_value() == token
    assert token in settings.secrets  # masked in logs like any token

    monkeypatch.setenv("MATTERMOST_TOKEN_BLOCK", "no-such-block")
    with pytest.raises(
        ConfigError, match=r"^MATTERMOST_TOKEN_BLOCK: no Secret block named 'no-such-block'"
    ):
        load_settings()
    monkeypatch.setenv("MATTERMOST_TOKEN_BLOCK", name)
    monkeypatch.setenv("MATTERMOST_TOKEN", "also-set")
    with pytest.raises(
        ConfigError, match="MATTERMOST_TOKEN and MATTERMOST_TOKEN_BLOCK are both set"
    ):
        load_settings()


def test_without_token_or_block_the_token_is_required(workdir: Path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"^MATTERMOST_TOKEN is required .or MATTERMOST_TOKEN_BLOCK"
    ):
        for name, value in VALID.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("MATTERMOST_TOKEN")
        load_settings()


# -- status: the state store alone -------------------------------------------------------------


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_status_needs_only_the_state_store(workdir: Path):
    url = f"sqlite:///{workdir / 'elsewhere.db'}"
    store = StateStore(url)
    store.remember_name(CHANNEL, "cti/town-square")
    store.save_cursor(CHANNEL, Cursor(_ms("2024-03-01T10:00:00")), posts_delivered=12)
    key = backfill_key(CHANNEL, _ms("2024-01-01"), _ms("2024-02-01"))
    store.save_cursor(key, Cursor(_ms("2024-01-15")), 7)
    run = store.start_run(CHANNEL, "sync")
    store.finish_run(run, "completed", Counts(posts=12))
    store.close()

    result = run_cli(["status", "--runs", "1"], {"CONNECTOR_STATE_DATABASE_URL": url}, workdir)
    assert result.returncode == 0, result.stderr
    assert "backfill:" not in result.stdout
    lines = result.stdout.splitlines()
    (cursor,) = [x for x in lines if x.startswith(CHANNEL) and "2024-03-01" in x]
    assert "cti/town-square" in cursor and " 12 " in cursor
    (window,) = [x for x in lines if "2024-01-01 to 2024-02-01" in x]
    assert window.startswith(CHANNEL) and "cti/town-square" in window
    assert "2024-01-15T00:00:00Z" in window
    assert "Last 1 run\n" in result.stdout + "\n"

    empty = run_cli(["status"], {}, workdir)  # the default store, in ./data
    assert empty.returncode == 0, empty.stderr
    assert "none synced yet" in empty.stdout and "Last 10 runs" in empty.stdout


def test_status_reads_only_its_variable(workdir: Path, monkeypatch):
    monkeypatch.setenv("MATTERMOST_PORT", "not a port")  # would stop load_settings
    monkeypatch.setenv("CONNECTOR_STATE_DATABASE_URL", "sqlite:///x.db")
    assert load_state_database_url() == "sqlite:///x.db"
    monkeypatch.setenv("CONNECTOR_STATE_DATABASE_URL", "x.db")
    with pytest.raises(
        ConfigError, match=r"^CONNECTOR_STATE_DATABASE_URL: must be a SQLAlchemy URL"
    ):
        load_state_database_url()


@pytest.mark.parametrize("value", ["-1", "0", "many"])
def test_status_runs_must_be_positive(workdir: Path, value: str):
    result = run_cli(["status", "--runs", value], {}, workdir)
    assert result.returncode == 2
    assert "argument --runs: must be a whole number of 1 or more" in result.stderr
    assert "Last" not in result.stdout


# -- help and version ----------------------------------------------------------------------------

HELP = {
    "sync": ["Sync each channel from its cursor", "--channel ID", "MATTERMOST_CHANNEL_IDS"],
    "backfill": ["[since, until)", "--since TIME", "first creation time included", "--until TIME"],
    "serve": ["Serve the mattermost-sync/sync deployment", "PREFECT_API_URL"],
    "status": ["Reads only the state store", "--runs N", "how many runs"],
    "check": ["without changing anything", "Exit 0 if all answer"],
}


def test_every_command_explains_itself(workdir: Path):
    top = run_cli(["--help"], {}, workdir)
    assert top.returncode == 0 and "Exit codes" in top.stdout
    for command in HELP:
        assert command in top.stdout
    for command, phrases in HELP.items():
        result = run_cli([command, "--help"], {}, workdir)
        assert result.returncode == 0, command
        text = " ".join(result.stdout.split())
        for phrase in phrases:
            assert phrase in text, (command, phrase)
    version = run_cli(["--version"], {}, workdir)
    assert version.returncode == 0 and version.stdout.startswith("mattermost-connector 0.")


# -- progress within a channel, and quieter task runs ---------------------------------------------


def test_progress_reads_posts_done_of_about_the_channel_total():
    assert progress.describe("cti/town", "sync", 1200, 2700, 3000) == (
        "cti/town: 2,700 of about 3,000 posts (1,200 this run)"
    )
    # total_msg_count is an estimate: never "3,100 of about 3,000"
    assert "3,100 of about 3,100" in progress.describe("cti/town", "sync", 100, 3100, 3000)
    assert (
        progress.describe("cti/town", "backfill", 40, 40, 3000)
        == "cti/town: 40 posts this backfill"
    )
    assert progress.share(2700, 3000) == 0.9 and progress.share(5, 0) == 1.0
    assert progress.overall(1, 4, 0.5) == 37.5


def test_only_completed_task_runs_are_quieted(caplog):
    from mattermost_prefect.flows.quiet import quiet_run_records

    quiet_run_records()
    logger = logging.getLogger("prefect.task_runs")
    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        logger.info("Finished in state Completed()")
        logger.info("Task run failed with exception: ValueError() - Retry 1/2 will start")
        # repeats the failure's own line ("Retries are exhausted"): one line per problem
        logger.error("Finished in state Failed('Task run encountered an exception')")
        logger.error("Finished in state Crashed('Execution was interrupted')")
    assert [r.getMessage()[:24] for r in caplog.records] == [
        "Task run failed with exc",
        "Finished in state Crashe",
    ]


# -- mistakes answered in one line --------------------------------------------------------------


def test_an_unknown_command_lists_the_commands_by_name(capsys):
    from mattermost_prefect.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["snyc"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "(choose from 'sync', 'backfill', 'serve', 'live', 'status', 'schedule', 'check')" in (
        error
    )
    assert "RunKind" not in error


@pytest.mark.parametrize("since", ["1700000000000", "1700000000000.0"])
def test_a_backfill_since_in_milliseconds_is_refused_up_front(
    workdir: Path, monkeypatch, capsys, since: str
):
    """Mattermost counts in milliseconds; a backfill takes seconds: refused before Prefect
    starts, saying which unit to give (it used to fail 28 s later on `year 55840`)."""
    from mattermost_prefect.cli import main

    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    code = main(["backfill", "--channel", CHANNEL, "--since", since, "--until", "2024-01-01"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"configuration error: --since/--until: start: {since} looks like epoch milliseconds "
        "(Mattermost's unit): give epoch seconds (1700000000) or ISO 8601\n"
    )
    assert not (workdir / "data").exists()


def test_epoch_seconds_up_to_the_year_5000_are_seconds():
    from mattermost_connector.window import parse_instant

    assert parse_instant("1700000000", "start") == 1_700_000_000_000
    assert parse_instant("99999999999", "start") == 99_999_999_999_000
    with pytest.raises(ConfigError, match="looks like epoch milliseconds"):
        parse_instant("100000000000", "end")


def test_check_creates_nothing(demo, workdir: Path, monkeypatch):
    """`check --help` says it changes nothing: no data/, no bundle directory, no state
    database appear; each says where it would be created, and that it could be."""
    from mattermost_connector.check import run_checks

    settings = settings_with(
        monkeypatch,
        MATTERMOST_DOMAIN="127.0.0.1",
        MATTERMOST_PORT=str(demo.sim.port),
        MATTERMOST_PROTOCOL="http",
        MATTERMOST_TOKEN=demo.token,
        MATTERMOST_CHANNEL_IDS=demo.channels[0]["id"],
    )
    findings = list(run_checks(settings))
    assert all(ok for ok, _ in findings), findings
    assert list(workdir.iterdir()) == []
    assert (True, "state store: data/state.db not created yet, at the first run (writable)") in (
        findings
    )
    assert (
        True,
        "bundle directory data/bundles: not created yet, at the first run (writable)",
    ) in findings
    (workdir / "data").write_text("a file where the directory goes")
    findings = list(run_checks(settings))
    assert (False, "state store data/state.db: data is not a directory") in findings


def test_one_of_anything_is_singular_in_every_line():
    from mattermost_connector.channel_run import ChannelResult
    from mattermost_connector.kinds import RunKind, RunStatus
    from mattermost_connector.wording import amount

    one = ChannelResult(
        CHANNEL, "cti/town", RunKind.SYNC, RunStatus.COMPLETED, Counts(posts=1, files=1, objects=1)
    )
    assert one.summary() == f"channel {CHANNEL} (cti/town): ok, 1 post, 1 file, 1 object"
    two = ChannelResult(
        CHANNEL, None, RunKind.SYNC, RunStatus.COMPLETED, Counts(posts=2, files=0, objects=3)
    )
    assert two.summary() == f"channel {CHANNEL}: ok, 2 posts, 0 files, 3 objects"
    assert progress.describe("cti/town", "backfill", 1, 1, 0) == "cti/town: 1 post this backfill"
    assert progress.describe("cti/town", "sync", 1, 1, 1) == (
        "cti/town: 1 of about 1 post (1 this run)"
    )
    assert amount(1, "channel") == "1 channel" and amount(1200, "post", grouped=True) == (
        "1,200 posts"
    )
    assert amount(1, "entry", "entries") == "1 entry" and amount(2, "entry", "entries") == (
        "2 entries"
    )


def test_the_connectors_log_lines_carry_prefects_timestamp_form():
    """One output, one timestamp form: `00:15:02.123 | INFO    | name - message`, as
    Prefect's console handler writes its own lines (prefect/logging/logging.yml)."""
    import re

    from mattermost_prefect.cli import console_formatter

    record = logging.LogRecord("mattermost_connector.load", logging.INFO, "", 0, "hi", (), None)
    line = console_formatter().format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO    \| mattermost_connector.load - hi", line)


def test_status_writes_every_moment_in_one_form(workdir: Path):
    """Cursors, windows and run history side by side: ISO 8601 UTC with `Z` for all (the
    history's started/updated times were `2026-12-08 00:10:00` beside `...T00:10:00Z`)."""
    import re

    from mattermost_connector.status import report

    store = StateStore(f"sqlite:///{workdir / 'state.db'}")
    store.save_cursor(CHANNEL, Cursor(_ms("2024-03-01T10:00:00")), posts_delivered=12)
    window = backfill_key(CHANNEL, _ms("2024-01-01"), _ms("2024-02-01"))
    store.save_cursor(window, Cursor(_ms("2024-01-15")), 7)
    store.finish_run(store.start_run(CHANNEL, "sync"), "completed", Counts(posts=12))
    text = report(store, runs=1)
    store.close()
    moments = re.findall(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*", text)
    assert len(moments) >= 4, text
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m) for m in moments), moments
