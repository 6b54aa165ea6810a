"""Configuration: defaults, parsing, and one-line errors that name the variable (exit 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mattermost_connector.config import MESSAGE_ENVELOPE, MIB, TLP, load_settings
from mattermost_connector.errors import ConfigError
from tests.conftest import run_cli
from tests.support import VALID, VALID_TOKEN, settings_with


def test_defaults_follow_the_original_connector(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    settings = settings_with(monkeypatch)
    mm = settings.mattermost
    assert (mm.port, mm.protocol, mm.basepath, mm.start_timestamp) == (8065, "https", "/api/v4", 0)
    assert (mm.tlp, mm.verify, mm.timeout, mm.request_timeout) == (TLP.AMBER, True, 30.0, None)
    assert (mm.keepalive, mm.keepalive_delay, mm.debug) == (False, 5.0, False)
    assert mm.channel_ids == ["5i5rip6zaf8qprwfi86iu9xsjy", "ztu3g3f4upgjxezhsuqe5imzpr"]
    assert mm.api_url == "https://chat.example.org:8065/api/v4"
    connector = settings.connector
    assert connector.state_database_url == "sqlite:///data/state.db"
    assert connector.queue_protocol == "amqp"
    assert connector.run_every == timedelta(hours=1)
    assert str(connector.send_to_directory_path) == "data/bundles"


def test_files_of_any_size_and_bundles_that_fit_one_queue_message(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Every file a default Mattermost accepts (100 MiB) is taken; bundles bound for OpenCTI
    fit one message of CONNECTOR_QUEUE_MAX_MESSAGE_SIZE once pycti encodes them (base64, 4/3,
    plus its envelope), whatever CONNECTOR_BUNDLE_MAX_BYTES says; a directory alone keeps
    CONNECTOR_BUNDLE_MAX_BYTES."""
    directory = settings_with(monkeypatch, CONNECTOR_BUNDLE_MAX_BYTES="64MiB")
    assert directory.mattermost.max_attachment_size == 100 * MIB
    assert directory.connector.queue_max_message_size == 16 * MIB
    assert directory.connector.bundle_bytes == 64 * MIB
    queue = settings_with(
        monkeypatch,
        CONNECTOR_SEND_TO_QUEUE="true",
        OPENCTI_URL="http://opencti:8080",
        OPENCTI_TOKEN="a-real-token",
        CONNECTOR_ID="6c3e9a2b-7d41-4f8e-9b0a-1e2d3c4b5a69",
        CONNECTOR_QUEUE_MAX_MESSAGE_SIZE="8m",
    )
    assert queue.connector.queue_max_message_size == 8 * MIB
    assert queue.connector.bundle_bytes * 4 // 3 + MESSAGE_ENVELOPE <= 8 * MIB


def test_values_are_parsed_leniently_where_unambiguous(workdir: Path, monkeypatch):
    settings = settings_with(
        monkeypatch,
        MATTERMOST_TLP="tlp:amber+strict",
        CONNECTOR_RUN_EVERY="30s",
        MATTERMOST_CHANNEL_IDS=" 5i5rip6zaf8qprwfi86iu9xsjy , 5i5rip6zaf8qprwfi86iu9xsjy,",
        MATTERMOST_PORT="443",
        MATTERMOST_BASEPATH="api/v4/",
        MATTERMOST_REQUEST_TIMEOUT="",
    )
    assert settings.mattermost.tlp is TLP.AMBER_STRICT
    assert settings.connector.run_every == timedelta(seconds=30)
    assert settings.mattermost.channel_ids == ["5i5rip6zaf8qprwfi86iu9xsjy"]
    assert settings.mattermost.server_url == "https://chat.example.org"
    assert settings.mattermost.basepath == "/api/v4"


def test_dotenv_file_is_read(workdir: Path, monkeypatch):
    (workdir / ".env").write_text(
        "\n".join(f"{k}={v}" for k, v in VALID.items()) + "\nMATTERMOST_TLP=red\n"
    )
    assert load_settings().mattermost.tlp is TLP.RED


@pytest.mark.parametrize("tlp", ["CLEAR", "white", "Green", "amber", "AMBER+STRICT", "red"])
def test_every_tlp_is_accepted(workdir: Path, monkeypatch, tlp: str):
    assert settings_with(monkeypatch, MATTERMOST_TLP=tlp).mattermost.tlp.value == tlp.upper()


def test_queue_mode_needs_the_platform(workdir: Path, monkeypatch):
    with pytest.raises(ConfigError, match="OPENCTI_URL, OPENCTI_TOKEN, CONNECTOR_ID are required"):
        settings_with(monkeypatch, CONNECTOR_SEND_TO_QUEUE="true")


BAD_INPUTS = [
    ({"MATTERMOST_TOKEN": None}, "MATTERMOST_TOKEN is required"),
    ({"MATTERMOST_TOKEN": ""}, "MATTERMOST_TOKEN is required"),
    ({"MATTERMOST_TOKEN": "  "}, "MATTERMOST_TOKEN: must not be empty"),
    (
        {"MATTERMOST_TLP": "PURPLE"},
        "MATTERMOST_TLP: must be one of CLEAR, WHITE, GREEN, AMBER, AMBER+STRICT, RED",
    ),
    ({"CONNECTOR_RUN_EVERY": "0s"}, "CONNECTOR_RUN_EVERY: must be greater than zero"),
    (
        {"CONNECTOR_RUN_EVERY": "10x"},
        "CONNECTOR_RUN_EVERY: must be a positive whole number followed by s, m, h or d",
    ),
    (
        {"MATTERMOST_LIVE_CHECK_PERIOD": "PT0S"},
        "MATTERMOST_LIVE_CHECK_PERIOD: must be greater than zero, like PT10M",
    ),
    (
        {"MATTERMOST_LIVE_CHECK_PERIOD": "soon"},
        "MATTERMOST_LIVE_CHECK_PERIOD: must be an ISO 8601 duration",
    ),
    ({"CONNECTOR_ID": "not-a-uuid"}, "CONNECTOR_ID: must be a UUID"),
    ({"MATTERMOST_CHANNEL_IDS": ""}, "no channel to sync: set MATTERMOST_CHANNEL_IDS"),
    ({"MATTERMOST_CHANNEL_IDS": " , ,"}, "no channel to sync: set MATTERMOST_CHANNEL_IDS"),
    (
        {"MATTERMOST_TEAMS": "*,acme"},
        "MATTERMOST_TEAMS: '*' (every team of the account) stands alone",
    ),
    (
        {"MATTERMOST_EXCLUDE_CHANNEL_IDS": "town-square"},
        "MATTERMOST_EXCLUDE_CHANNEL_IDS: 'town-square' is not a channel id",
    ),
    (
        {"MATTERMOST_CHANNEL_IDS": "town-square"},
        "MATTERMOST_CHANNEL_IDS: 'town-square' is not a channel id",
    ),
    ({"MATTERMOST_PORT": "abc"}, "MATTERMOST_PORT: must be a number (got 'abc')"),
    ({"MATTERMOST_PORT": "70000"}, "MATTERMOST_PORT: Input should be less than or equal to 65535"),
    ({"MATTERMOST_PROTOCOL": "ftp"}, "MATTERMOST_PROTOCOL: must be 'http' or 'https'"),
    (
        {"MATTERMOST_DOMAIN": "https://chat.example.org"},
        "MATTERMOST_DOMAIN: must be a host name only",
    ),
    (
        {"MATTERMOST_DOMAIN": "127.0.0.1:8065"},
        "MATTERMOST_DOMAIN: must be a host name only: give the port in MATTERMOST_PORT",
    ),
    (
        {"MATTERMOST_START_TIMESTAMP": "1700000000000"},
        "MATTERMOST_START_TIMESTAMP: 1700000000000 looks like epoch milliseconds",
    ),
    (
        {"MATTERMOST_TOKEN": f"{VALID_TOKEN}\tsecond-half"},
        "MATTERMOST_TOKEN: holds a space or a control character (the value is not shown)",
    ),
    ({"MATTERMOST_VERIFY": "maybe"}, "MATTERMOST_VERIFY: must be true or false"),
    (
        {"MATTERMOST_START_TIMESTAMP": "-5"},
        "MATTERMOST_START_TIMESTAMP: Input should be greater than or equal to 0",
    ),
    ({"CONNECTOR_QUEUE_PROTOCOL": "kafka"}, "CONNECTOR_QUEUE_PROTOCOL: must be 'amqp' or 'api'"),
    (
        {"CONNECTOR_SEND_TO_DIRECTORY": "false"},
        "CONNECTOR_SEND_TO_QUEUE and CONNECTOR_SEND_TO_DIRECTORY are both false",
    ),
    (
        {
            "CONNECTOR_SEND_TO_QUEUE": "true",
            "OPENCTI_URL": "http://opencti:8080",
            "OPENCTI_TOKEN": "ChangeMe",
            "CONNECTOR_ID": "6c3e9a2b-7d41-4f8e-9b0a-1e2d3c4b5a69",
        },
        "OPENCTI_TOKEN: still the placeholder ChangeMe",
    ),
    (
        {"CONNECTOR_STATE_DATABASE_URL": "data/state.db"},
        "CONNECTOR_STATE_DATABASE_URL: must be a SQLAlchemy URL",
    ),
    ({"CONNECTOR_SPLIT_BUNDLES": "sometimes"}, "CONNECTOR_SPLIT_BUNDLES: must be true or false"),
    (
        {"CONNECTOR_QUEUE_MAX_MESSAGE_SIZE": "16 apples"},
        "CONNECTOR_QUEUE_MAX_MESSAGE_SIZE: must be a size in bytes",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), BAD_INPUTS, ids=[next(iter(c)) for c, _ in BAD_INPUTS]
)
def test_bad_value_exits_2_with_one_line_naming_it(workdir: Path, change: dict, expected: str):
    env = {**VALID, **change}
    env = {k: v for k, v in env.items() if v is not None}
    result = run_cli(["sync"], env, workdir, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert VALID_TOKEN not in result.stderr + result.stdout


def test_bad_channel_option_exits_2(workdir: Path):
    result = run_cli(["sync", "--channel", "nope"], VALID, workdir, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: --channel: 'nope' is not a channel id "
        "(26 lowercase letters and digits expected)"
    )


def test_unwritable_state_store_is_one_line(workdir: Path):
    (workdir / "blocker").write_text("a file where a directory should be")
    env = {**VALID, "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir}/blocker/state.db"}
    result = run_cli(["sync"], env, workdir, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: CONNECTOR_STATE_DATABASE_URL: cannot open")
    assert len(result.stderr.strip().splitlines()) == 1


ROOT = Path(__file__).resolve().parents[1]
FILLED = {
    "OPENCTI_TOKEN": "a-real-token",
    "CONNECTOR_ID": "6c3e9a2b-7d41-4f8e-9b0a-1e2d3c4b5a69",
    "MATTERMOST_TOKEN": VALID_TOKEN,
    "MATTERMOST_CHANNEL_IDS": "5i5rip6zaf8qprwfi86iu9xsjy",
}


def env_sample_with(workdir: Path, **values: str) -> None:
    """`.env.sample` copied to `.env`, with `values` filled in where the sample has them."""
    lines = (ROOT / ".env.sample").read_text().splitlines()
    filled = [
        f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}"
        if "=" in line and line.split("=", 1)[0] in values
        else line
        for line in lines
    ]
    (workdir / ".env").write_text("\n".join(filled) + "\n")


def test_env_sample_copied_to_dotenv_loads_once_its_blanks_are_filled(workdir: Path):
    """Every `VARIABLE=` the sample leaves empty is unset (its default), CONNECTOR_ID too."""
    env_sample_with(workdir, **FILLED)
    settings = load_settings()
    assert str(settings.connector.id) == FILLED["CONNECTOR_ID"]
    assert settings.connector.work_pool is None
    assert settings.opencti.token_block is None and settings.mattermost.teams == []
    assert settings.mattermost.request_timeout is None
    env_sample_with(workdir, **{**FILLED, "CONNECTOR_ID": ""})
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("CONNECTOR_ID is required when CONNECTOR_SEND_TO_QUEUE")


@pytest.mark.parametrize("prefix", ["MATTERMOST_", "OPENCTI_"])
def test_a_token_block_beside_an_empty_token_is_the_token(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
):
    import mattermost_connector.config as config

    monkeypatch.setattr(config, "load_secret_block", lambda name, variable: f"from-{name}")
    env_sample_with(workdir, **{**FILLED, f"{prefix}TOKEN": "", f"{prefix}TOKEN_BLOCK": "kept"})
    settings = load_settings()
    group = settings.mattermost if prefix == "MATTERMOST_" else settings.opencti
    assert group.token is not None and group.token.get_secret_value() == "from-kept"


def test_an_empty_value_in_config_yml_is_unset(workdir: Path, monkeypatch):
    (workdir / "config.yml").write_text("connector:\n  id: ''\n  duration_period:\n")
    settings = settings_with(monkeypatch)
    assert settings.connector.id is None and settings.connector.duration_period is None


@pytest.mark.parametrize("spelling", ["AMBER_STRICT", "amber_strict", "TLP:AMBER_STRICT"])
def test_the_original_connectors_amber_strict_spelling_is_accepted(
    workdir: Path, monkeypatch, spelling: str
):
    assert settings_with(monkeypatch, MATTERMOST_TLP=spelling).mattermost.tlp is TLP.AMBER_STRICT


def test_the_schema_accepts_amber_strict_in_both_spellings():
    from mattermost_connector.metadata import config_schema

    enum = config_schema()["properties"]["MATTERMOST_TLP"]["enum"]
    assert "AMBER+STRICT" in enum and "AMBER_STRICT" in enum


def test_settings_without_effect_are_accepted_with_one_warning_each(
    workdir: Path, monkeypatch, caplog: pytest.LogCaptureFixture
):
    import mattermost_connector.config as config

    monkeypatch.setattr(config, "_warned", set())
    (workdir / ".env").write_text("CONNECTOR_UPDATE_EXISTING_DATA=true\n")
    monkeypatch.setenv("CONNECTOR_TYPE", "STREAM")
    with caplog.at_level("WARNING", logger="mattermost_connector.config"):
        settings_with(monkeypatch)
        settings_with(monkeypatch)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("CONNECTOR_TYPE has no effect: ")
    assert warnings[1].startswith("CONNECTOR_UPDATE_EXISTING_DATA has no effect: ")


def test_settings_without_effect_are_not_warned_about_when_empty_or_right(
    workdir: Path, monkeypatch, caplog: pytest.LogCaptureFixture
):
    import mattermost_connector.config as config

    monkeypatch.setattr(config, "_warned", set())
    monkeypatch.setenv("CONNECTOR_UPDATE_EXISTING_DATA", "")
    monkeypatch.setenv("CONNECTOR_TYPE", "external_import")  # the connector manager's value
    with caplog.at_level("WARNING", logger="mattermost_connector.config"):
        settings_with(monkeypatch)
    assert not caplog.records


@pytest.mark.parametrize("every", ["30s", "90s", "5m", "1h", "7h", "1d"])
def test_the_sync_schedule_starts_within_one_interval_before_now(every: str):
    """Prefect counts a rule's dates forward from its DTSTART one at a time: a start years
    back cost seconds to minutes per computation. The start is the last multiple of the
    interval since the epoch, so two deploys in one interval schedule the same instants."""
    from dateutil.rrule import rrulestr

    from mattermost_connector.config import parse_duration, recurrence

    delta = parse_duration(every)
    now = datetime(2026, 12, 7, 23, 54, 31, tzinfo=UTC)
    rule = recurrence(delta, now)
    start = datetime.strptime(rule.split("\n")[0], "DTSTART:%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    assert now - delta < start <= now
    assert recurrence(delta, start + delta - timedelta(seconds=1)) == rule
    assert int(start.timestamp()) % int(delta.total_seconds()) == 0
    assert rrulestr(rule).after(now.replace(tzinfo=None)) == (start + delta).replace(tzinfo=None)


def test_a_token_read_from_a_file_loses_its_newline_and_one_with_a_control_character_is_refused():
    """A secret file ends with a newline, which a header cannot carry; a tab or newline inside
    is a mistake the server would answer with a protocol error quoting the header."""
    from pydantic import SecretStr

    from mattermost_connector.config import checked_token

    assert checked_token(SecretStr("abc-123\n")).get_secret_value() == "abc-123"
    for bad in ("abc\t123", "abc 123", "abc\x00123"):
        with pytest.raises(ValueError) as refused:
            checked_token(SecretStr(bad))
        assert bad not in str(refused.value) and "123" not in str(refused.value)
