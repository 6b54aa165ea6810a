"""Connector configuration, read from environment variables and `.env`.

Three groups keep the variable names of the original connector (`OPENCTI_*`, `CONNECTOR_*`,
`MATTERMOST_*`). Every invalid value becomes a `ConfigError` whose one-line message names the
variable and what it accepts; secrets are never echoed back.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mattermost_connector.errors import ConfigError
from mattermost_connector.observables import KINDS as OBSERVABLE_KINDS
from mattermost_connector.window import MILLISECONDS_FROM

MATTERMOST_ID = re.compile(r"^[a-z0-9]{26}$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$")
_UNIT_BYTES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

MIB = 1 << 20
RABBITMQ_MAX_MESSAGE = 16 * MIB  # RabbitMQ 4.x default max_message_size
FILES_PER_POST = 10  # Mattermost's limit (PostFileidsMaxRunes: ten ids per post)
# Mattermost's own default FileSettings.MaxFileSize: every file a default server accepts.
DEFAULT_MAX_ATTACHMENT = 100 * MIB
# What pycti's message adds around the base64 of a bundle (its JSON envelope, the work and
# applicant ids), with room to spare.
MESSAGE_ENVELOPE = 4096


def message_bundle_bytes(max_message: int) -> int:
    """The most bundle bytes one queue message holds: pycti publishes base64 of the bundle
    (4/3) inside a small JSON envelope."""
    return (max_message - MESSAGE_ENVELOPE) * 3 // 4


class TLP(StrEnum):
    """OpenCTI's TLP markings; `AMBER_STRICT` is read as `AMBER+STRICT` (TLP_SPELLINGS)."""

    CLEAR = "CLEAR"
    WHITE = "WHITE"
    GREEN = "GREEN"
    AMBER = "AMBER"
    AMBER_STRICT = "AMBER+STRICT"
    RED = "RED"


# The original connector's documented spelling of AMBER+STRICT (its config.yml.sample).
TLP_SPELLINGS = {"AMBER_STRICT": TLP.AMBER_STRICT}


def parse_duration(value: str) -> timedelta:
    """Parse `30s`, `5m`, `1h`, `1d` (the original connector's format) into a positive delta."""
    match = _DURATION.match(value.strip().lower())
    if not match:
        raise ValueError("must be a positive whole number followed by s, m, h or d, like 30s or 1h")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be greater than zero, like 30s or 1h")
    return timedelta(seconds=seconds)


def parse_size(value: object) -> object:
    """Bytes, or with a unit: 512k, 10MiB, 1g (binary units)."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value.strip().lower())
    if not match:
        raise ValueError("must be a size in bytes, optionally with k, m or g (binary), like 10MiB")
    unit = (match.group(2) or "b")[0]
    return int(match.group(1)) * _UNIT_BYTES.get(unit, 1)


def split_list(value: object) -> list[str]:
    """A comma-separated list (or a list), stripped, empty items dropped, order kept."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value]
    else:
        items = [part.strip() for part in str(value or "").split(",")]
    return list(dict.fromkeys(item for item in items if item))


def parse_channel_ids(value: object, *, required: bool = True) -> list[str]:
    """Split the comma-separated list and check every id has Mattermost's 26-char shape."""
    items = split_list(value)
    if not items and required:
        raise ValueError("must list at least one channel id, comma-separated")
    bad = [item for item in items if not MATTERMOST_ID.match(item)]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is not a channel id (26 lowercase letters and digits expected)"
        )
    return list(dict.fromkeys(items))


def checked_token(value: SecretStr | None) -> SecretStr | None:
    """A token as read, less the newline a secret file ends with; one holding a space or a
    control character inside cannot be sent in a header, and is refused without being shown."""
    if value is None:
        return None
    token = value.get_secret_value().strip()
    if any(character.isspace() or not character.isprintable() for character in token):
        raise ValueError("holds a space or a control character (the value is not shown)")
    return SecretStr(token)


CONFIG_YML = "config.yml"  # in the working directory, like .env, or beside the entry point
# The project root, where OpenCTI's connectors look for config.yml beside their main module.
INSTALL_DIR = Path(__file__).resolve().parents[1]


def config_yml() -> Path | None:
    """The config.yml in use: the working directory's first, then the one beside the code."""
    for path in (Path(CONFIG_YML), INSTALL_DIR / CONFIG_YML):
        if path.is_file():
            return path
    return None


def _yaml_section(section: str) -> dict[str, object]:
    """The `section:` mapping of config.yml (OpenCTI connectors' file layout), or nothing."""
    path = config_yml()
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    values = data.get(section) if isinstance(data, dict) else None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: `{section}:` must be a mapping of settings")
    # an empty value is unset, as in the environment and .env (env_ignore_empty)
    return {key: value for key, value in values.items() if value not in (None, "")}


class _Group(BaseSettings):
    # env_ignore_empty: `VARIABLE=` (as `.env.sample` copied to `.env` has) is unset, so its
    # default applies, for every variable alike.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then `.env`, then config.yml's section for the group's prefix."""
        section = str(settings_cls.model_config.get("env_prefix", "")).rstrip("_").lower()
        yaml_source = InitSettingsSource(settings_cls, init_kwargs=_yaml_section(section))
        return init_settings, env_settings, dotenv_settings, yaml_source, file_secret_settings


class OpenCTISettings(_Group):
    model_config = SettingsConfigDict(env_prefix="OPENCTI_")

    url: str | None = None
    token: SecretStr | None = None
    token_block: str | None = None  # a Prefect Secret block holding the token

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL, like http://opencti:8080")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return checked_token(value)


class ConnectorSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="CONNECTOR_")

    id: uuid.UUID | None = None
    name: str = Field("Mattermost", min_length=2)
    scope: str = "mattermost"
    confidence_level: int = Field(50, ge=0, le=100)
    log_level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    run_every: Annotated[timedelta, NoDecode] = timedelta(hours=1)
    duration_period: timedelta | None = None  # OpenCTI's name for the schedule (ISO 8601)
    state_database_url: str = "sqlite:///data/state.db"
    send_to_queue: bool = True
    send_to_directory: bool = False
    send_to_directory_path: Path = Path("data/bundles")
    queue_protocol: Literal["amqp", "api"] = "amqp"
    bundle_max_objects: int = Field(1000, ge=10)
    bundle_max_bytes: Annotated[int, NoDecode] = Field(16 * MIB, ge=MIB)
    queue_max_message_size: Annotated[int, NoDecode] = Field(RABBITMQ_MAX_MESSAGE, ge=MIB)
    delivery_retries: int = Field(3, ge=0, le=20)
    delivery_retry_delay: float = Field(10.0, ge=0)
    delivery_concurrency: int = Field(4, ge=1, le=32)
    channel_concurrency: int = Field(4, ge=1, le=64)
    work_pool: str | None = None  # a Prefect work pool that runs the per-channel flow runs
    split_bundles: bool = False
    no_trigger_import: bool = True

    @property
    def one_message_per_bundle(self) -> bool:
        return self.send_to_queue and self.queue_protocol == "amqp" and not self.split_bundles

    @property
    def bundle_bytes(self) -> int:
        """The bound bundles are built to: CONNECTOR_BUNDLE_MAX_BYTES, and, when they go to
        OpenCTI, one queue message (CONNECTOR_QUEUE_MAX_MESSAGE_SIZE). Split or not, through
        AMQP or the API (whose platform queues each object alone), no object outgrows its
        bundle, so no message outgrows the broker's limit."""
        if self.send_to_queue:
            return min(self.bundle_max_bytes, message_bundle_bytes(self.queue_max_message_size))
        return self.bundle_max_bytes

    @field_validator("bundle_max_bytes", "queue_max_message_size", mode="before")
    @classmethod
    def _bundle_bytes(cls, value: object) -> object:
        return parse_size(value)

    @field_validator("log_level", "queue_protocol", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, value: object) -> object:
        """A list (config.yml, the catalog's array) is the comma-separated scope pycti takes."""
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return ",".join(item.strip() for item in value)
        return value

    @field_validator("run_every", mode="before")
    @classmethod
    def _run_every(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("state_database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("work_pool", mode="before")
    @classmethod
    def _no_pool(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("duration_period", mode="before")
    @classmethod
    def _empty_period(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("duration_period")
    @classmethod
    def _positive_period(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be greater than zero, like PT1H")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> ConnectorSettings:
        """CONNECTOR_DURATION_PERIOD (OpenCTI's name) and CONNECTOR_RUN_EVERY (the original
        connector's) set the same schedule: either may be given, both only if they agree."""
        if self.duration_period is None:
            return self
        if "run_every" in self.model_fields_set and self.run_every != self.duration_period:
            raise ValueError(
                f"CONNECTOR_DURATION_PERIOD ({_iso_duration(self.duration_period)}) and "
                f"CONNECTOR_RUN_EVERY ({_iso_duration(self.run_every)}) disagree: set only one"
            )
        self.run_every = self.duration_period
        return self


def check_database_url(value: str) -> str:
    if "://" not in value:
        raise ValueError("must be a SQLAlchemy URL, like sqlite:///data/state.db")
    return value


def _iso_duration(delta: timedelta) -> str:
    from pydantic import TypeAdapter

    return str(TypeAdapter(timedelta).dump_python(delta, mode="json"))


class StateStoreSettings(_Group):
    """CONNECTOR_STATE_DATABASE_URL alone: all `status` needs."""

    model_config = SettingsConfigDict(env_prefix="CONNECTOR_")

    state_database_url: str = "sqlite:///data/state.db"

    @field_validator("state_database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        return check_database_url(value)


class MattermostSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="MATTERMOST_")

    domain: str = Field(min_length=1)
    port: int = Field(8065, ge=1, le=65535)
    protocol: Literal["http", "https"] = "https"
    basepath: str = "/api/v4"
    token: SecretStr | None = None  # required, unless token_block names where it is
    token_block: str | None = None  # a Prefect Secret block holding the token
    channel_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    teams: Annotated[list[str], NoDecode] = Field(default_factory=list)
    exclude_channel_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    include_direct_messages: bool = False
    start_timestamp: int = Field(0, ge=0)
    tlp: TLP = TLP.AMBER
    verify: bool = True
    timeout: float = Field(30.0, gt=0)
    request_timeout: float | None = Field(None, gt=0)
    keepalive: bool = False
    keepalive_delay: float = Field(5.0, ge=0)
    live: bool = False
    # live mode catches every channel up this often, whatever the events (ISO 8601)
    live_check_period: timedelta = timedelta(minutes=10)
    debug: bool = False
    deleted_posts: Literal["label", "ignore"] = "label"
    include_system_messages: bool = False
    max_attachment_size: Annotated[int, NoDecode] = Field(DEFAULT_MAX_ATTACHMENT, ge=0)
    extract_observables: bool = False
    observable_kinds: Annotated[list[str], NoDecode] = list(OBSERVABLE_KINDS)  # copied
    observable_private_addresses: bool = False

    @field_validator("observable_kinds", mode="before")
    @classmethod
    def _observable_kinds(cls, value: object) -> list[str]:
        kinds = [item.lower() for item in split_list(value)]
        unknown = [kind for kind in kinds if kind not in OBSERVABLE_KINDS]
        if unknown:
            raise ValueError(
                f"{unknown[0]!r} is not a kind of indicator (one of {', '.join(OBSERVABLE_KINDS)})"
            )
        if not kinds:
            raise ValueError(f"must list at least one of {', '.join(OBSERVABLE_KINDS)}")
        return kinds

    @field_validator("live_check_period")
    @classmethod
    def _positive_check_period(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be greater than zero, like PT10M")
        return value

    @field_validator("max_attachment_size", mode="before")
    @classmethod
    def _attachment_size(cls, value: object) -> object:
        return parse_size(value)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip()
        if "://" in value or "/" in value or not value:
            raise ValueError("must be a host name only, like chat.example.org (no scheme, no path)")
        if ":" in value and not value.startswith("["):  # [::1]: an IPv6 address, bracketed
            raise ValueError("must be a host name only: give the port in MATTERMOST_PORT")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty: set a personal access token or bot token")
        return checked_token(value)

    @field_validator("start_timestamp")
    @classmethod
    def _start_seconds(cls, value: int) -> int:
        if value >= MILLISECONDS_FROM:
            raise ValueError(
                f"{value} looks like epoch milliseconds (Mattermost's unit): give epoch seconds "
                f"({value // 1000})"
            )
        return value

    @field_validator("protocol", "deleted_posts", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("basepath")
    @classmethod
    def _basepath(cls, value: str) -> str:
        return "/" + value.strip().strip("/")

    @field_validator("channel_ids", "exclude_channel_ids", mode="before")
    @classmethod
    def _channel_ids(cls, value: object) -> list[str]:
        return parse_channel_ids(value, required=False)

    @field_validator("teams", mode="before")
    @classmethod
    def _teams(cls, value: object) -> list[str]:
        teams = split_list(value)
        if "*" in teams and len(teams) > 1:
            raise ValueError("'*' (every team of the account) stands alone, without names")
        return teams

    @model_validator(mode="after")
    def _some_channels(self) -> MattermostSettings:
        if not (self.channel_ids or self.teams or self.include_direct_messages):
            raise ValueError(
                "no channel to sync: set MATTERMOST_CHANNEL_IDS (channel ids), "
                "MATTERMOST_TEAMS (team names or ids, or *) or "
                "MATTERMOST_INCLUDE_DIRECT_MESSAGES=true"
            )
        return self

    @property
    def discovers(self) -> bool:
        """Whether the channels are found on the server at each run, not only listed."""
        return bool(self.teams) or self.include_direct_messages

    @field_validator("tlp", mode="before")
    @classmethod
    def _tlp(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().upper().removeprefix("TLP:")
            if text in TLP_SPELLINGS:
                return TLP_SPELLINGS[text]
            if text not in TLP.__members__.values():
                raise ValueError(f"must be one of {', '.join(TLP)} (got {value!r})")
            return TLP(text)
        return value

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _optional_number(cls, value: object) -> object:
        return None if value in ("", "None", "none") else value

    @property
    def server_url(self) -> str:
        """Base URL of the web app, used in permalinks (default ports left out)."""
        default = {"http": 80, "https": 443}[self.protocol]
        port = "" if self.port == default else f":{self.port}"
        return f"{self.protocol}://{self.domain}{port}"

    @property
    def api_url(self) -> str:
        return self.server_url + self.basepath


_PREFIXES = {
    OpenCTISettings: "OPENCTI_",
    ConnectorSettings: "CONNECTOR_",
    MattermostSettings: "MATTERMOST_",
    StateStoreSettings: "CONNECTOR_",
}
_SECRET_FIELDS = {"token"}


def _describe(group: type[_Group], error: ValidationError) -> str:
    """Turn pydantic's report into `VARIABLE: what is wrong` clauses, one line in all."""
    clauses = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if not field:  # a check across fields: its message names them
            clauses.append(item["msg"].removeprefix("Value error, "))
            continue
        variable = _PREFIXES[group] + field.upper()
        if item["type"] == "missing":
            clauses.append(f"{variable} is required")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in {"int_parsing", "float_parsing"}:
            message = "must be a number"
        elif item["type"] == "bool_parsing":
            message = "must be true or false"
        elif item["type"] in {"time_delta_parsing", "time_delta_type"}:
            message = "must be an ISO 8601 duration, like PT1H, PT30M or P1D"
        elif item["type"] == "uuid_parsing":
            message = "must be a UUID, like 3f1c2a9e-5b7d-4c1e-9a0b-2d4e6f8a1c3b"
        elif item["type"] == "literal_error":
            message = message.replace("Input should be", "must be")
        if field not in _SECRET_FIELDS and item["type"] not in {"value_error"}:
            got = item.get("input")
            if isinstance(got, str | int | float):
                message += f" (got {got!r})"
        clauses.append(f"{variable}: {message}")
    return "; ".join(clauses)


def _load(group: type[_Group], env_file: str | None) -> _Group:
    try:
        return group(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as error:
        raise ConfigError(_describe(group, error)) from None


@dataclass(frozen=True)
class Settings:
    opencti: OpenCTISettings
    connector: ConnectorSettings
    mattermost: MattermostSettings

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for the log filter that masks them."""
        values = [self.mattermost.token.get_secret_value()] if self.mattermost.token else []
        if self.opencti.token is not None:
            values.append(self.opencti.token.get_secret_value())
        return tuple(v for v in values if v)


log = logging.getLogger(__name__)

# What the original connector's users have set that changes nothing here: accepted, and said
# once per process (not refused, so their configuration keeps working).
WITHOUT_EFFECT = {
    "CONNECTOR_UPDATE_EXISTING_DATA": "an edited or deleted post is always re-delivered "
    "under the same ids, which OpenCTI updates",
    "CONNECTOR_TYPE": "this connector is always EXTERNAL_IMPORT",
}
# the value the connector manager sets (the schema's const): right, so not warned about
_EXPECTED = {"CONNECTOR_TYPE": "EXTERNAL_IMPORT"}
_warned: set[str] = set()


def variables_without_effect(env_file: str | None = ".env") -> list[str]:
    """The WITHOUT_EFFECT variables set (not empty, nor the expected value) in the
    environment, `.env` or config.yml."""
    values: dict[str, object] = {}
    section = _yaml_section("connector")
    for name in WITHOUT_EFFECT:
        values[name] = section.get(name.removeprefix("CONNECTOR_").lower())
    if env_file and Path(env_file).is_file():
        from dotenv import dotenv_values

        found = dotenv_values(env_file)
        values.update({name: found[name] for name in WITHOUT_EFFECT if found.get(name)})
    values.update({name: os.environ[name] for name in WITHOUT_EFFECT if os.environ.get(name)})
    return sorted(
        name
        for name, value in values.items()
        if str(value or "").strip()
        and str(value).strip().upper() != _EXPECTED.get(name, "").upper()
    )


def warn_without_effect(env_file: str | None = ".env") -> None:
    """One warning per variable and process: load_settings runs in every flow and task."""
    for name in variables_without_effect(env_file):
        if name not in _warned:
            _warned.add(name)
            log.warning("%s has no effect: %s", name, WITHOUT_EFFECT[name])


def load_settings(env_file: str | None = ".env") -> Settings:
    """Read and cross-check every variable; raises ConfigError with one line on bad input."""
    problems: list[str] = []
    groups: dict[type[_Group], _Group] = {}
    for group in (OpenCTISettings, ConnectorSettings, MattermostSettings):
        try:
            groups[group] = _load(group, env_file)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    settings = Settings(
        opencti=groups[OpenCTISettings],  # type: ignore[arg-type]
        connector=groups[ConnectorSettings],  # type: ignore[arg-type]
        mattermost=groups[MattermostSettings],  # type: ignore[arg-type]
    )
    _tokens_from_blocks(settings)
    _cross_check(settings)
    warn_without_effect(env_file)
    return settings


def load_state_database_url(env_file: str | None = ".env") -> str:
    """CONNECTOR_STATE_DATABASE_URL (or its default), without asking for anything else."""
    return _load(StateStoreSettings, env_file).state_database_url  # type: ignore[attr-defined]


def load_run_every(env_file: str | None = ".env") -> timedelta:
    """The scheduled sync's interval (CONNECTOR_DURATION_PERIOD or CONNECTOR_RUN_EVERY),
    without asking for anything else."""
    return _load(ConnectorSettings, env_file).run_every  # type: ignore[attr-defined]


_RRULE_UNITS = (("DAILY", 86400), ("HOURLY", 3600), ("MINUTELY", 60), ("SECONDLY", 1))


def recurrence(every: timedelta, now: datetime | None = None) -> str:
    """`every` as an RFC 5545 rule in the largest unit that divides it: what
    deployments/prefect.yaml schedules the sync with (Prefect 3.9.1 validates a schedule's
    `interval` there before templating, a placeholder is refused; its `rrule` is a string).

    It starts at the last multiple of `every` since the Unix epoch at or before `now`: within
    one interval of now, because Prefect's scheduler counts forward from the start, one step
    at a time (from 2020-01-01 a 30-s interval took 84 s to compute, more every year); and on
    the same instants at every deploy (an hourly sync at :00, a 5-min one at :00, :05...)."""
    seconds = int(every.total_seconds())
    unit, size = next((u, s) for u, s in _RRULE_UNITS if seconds % s == 0)
    now = now or datetime.now(UTC)
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % seconds, UTC)
    return f"DTSTART:{start:%Y%m%dT%H%M%S}\nRRULE:FREQ={unit};INTERVAL={seconds // size}"


def _tokens_from_blocks(settings: Settings) -> None:
    """Fill MATTERMOST_TOKEN / OPENCTI_TOKEN from the Prefect Secret blocks named by
    MATTERMOST_TOKEN_BLOCK / OPENCTI_TOKEN_BLOCK, for users who keep secrets in Prefect."""
    for group, prefix in ((settings.mattermost, "MATTERMOST_"), (settings.opencti, "OPENCTI_")):
        if group.token_block is None or not group.token_block.strip():
            continue
        if group.token is not None:
            raise ConfigError(
                f"{prefix}TOKEN and {prefix}TOKEN_BLOCK are both set: keep one of them"
            )
        name = group.token_block.strip()
        group.token = SecretStr(load_secret_block(name, f"{prefix}TOKEN_BLOCK"))
    if settings.mattermost.token is None:
        raise ConfigError(
            "MATTERMOST_TOKEN is required (or MATTERMOST_TOKEN_BLOCK, the name of a Prefect "
            "Secret block holding it)"
        )


def load_secret_block(name: str, variable: str) -> str:
    """The value of the Prefect Secret block `name`, from the configured Prefect API. Only
    the block's name and the failure's kind are ever reported, never its value."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name).get()
    except ValueError as error:
        if "Unable to find block document" in str(error):
            raise ConfigError(
                f"{variable}: no Secret block named {name!r} on the Prefect API "
                "(create it with `Secret(value=...).save(name)` or in the UI, under Blocks)"
            ) from None
        raise ConfigError(f"{variable}: cannot load {name!r}: {type(error).__name__}") from None
    except Exception as error:
        raise ConfigError(
            f"{variable}: cannot load the Secret block {name!r} from the Prefect API "
            f"({type(error).__name__})"
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{variable}: the Secret block {name!r} must hold a non-empty string")
    return value.strip()


def _cross_check(settings: Settings) -> None:
    connector, opencti = settings.connector, settings.opencti
    if not connector.send_to_queue and not connector.send_to_directory:
        raise ConfigError(
            "CONNECTOR_SEND_TO_QUEUE and CONNECTOR_SEND_TO_DIRECTORY are both false: "
            "set one to true so the bundles go somewhere"
        )
    if not connector.send_to_queue:
        return
    missing = [
        name
        for name, value in (
            ("OPENCTI_URL", opencti.url),
            ("OPENCTI_TOKEN", opencti.token),
            ("CONNECTOR_ID", connector.id),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required when "
            "CONNECTOR_SEND_TO_QUEUE=true (set CONNECTOR_SEND_TO_QUEUE=false for offline export)"
        )
    if opencti.token is not None and opencti.token.get_secret_value() == "ChangeMe":
        raise ConfigError("OPENCTI_TOKEN: still the placeholder ChangeMe; set the platform's token")
