"""`mattermost-connector check`: can this configuration work? Each part tried, none changed."""

from __future__ import annotations

from collections.abc import Iterator

from mattermost_connector.config import Settings
from mattermost_connector.errors import MattermostError
from mattermost_connector.mattermost.channels import channel_context
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.redact import redact
from mattermost_connector.state import StateStore

Finding = tuple[bool, str]


def run_checks(settings: Settings) -> Iterator[Finding]:
    yield from _mattermost(settings)
    yield _state_store(settings)
    if settings.connector.send_to_directory:
        yield _directory(settings)
    if settings.connector.send_to_queue:
        yield _platform(settings)


def _mattermost(settings: Settings) -> Iterator[Finding]:
    with MattermostClient(settings.mattermost) as client:
        try:
            me = client.me()
        except MattermostError as error:
            yield False, f"Mattermost token at {settings.mattermost.api_url}: {error}"
            return
        yield True, f"Mattermost token: valid, acting as @{me.get('username')}"
        for channel_id in settings.mattermost.channel_ids:
            try:
                context, _ = channel_context(client, channel_id, settings.mattermost.server_url)
                client.posts(channel_id, per_page=1)
            except MattermostError as error:
                yield False, f"channel {channel_id}: {error}"
            else:
                yield True, f"channel {channel_id} ({context.name}): readable"


def _state_store(settings: Settings) -> Finding:
    url = settings.connector.state_database_url
    try:
        store = StateStore(url)
        store.touch()
        store.close()
    except Exception as error:  # every failure, ConnectorError included, is a finding
        return False, f"state store: {error}"
    return True, f"state store: writable ({url.split('://')[0]})"


def _directory(settings: Settings) -> Finding:
    path = settings.connector.send_to_directory_path
    probe = path / ".write-check"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        return False, f"bundle directory {path}: {error.strerror}"
    return True, f"bundle directory {path}: writable"


def _platform(settings: Settings) -> Finding:
    """Ask the platform its version with the connector's token; registers nothing."""
    from pycti import OpenCTIApiClient

    url = settings.opencti.url
    token = settings.opencti.token.get_secret_value() if settings.opencti.token else ""
    try:
        client = OpenCTIApiClient(url, token, log_level="error", perform_health_check=False)
        version = client.query("query healthCheck { about { version } }")["data"]["about"][
            "version"
        ]
    except Exception as error:
        return False, f"OpenCTI at {url}: {redact(str(error), settings.secrets)[:200]}"
    return True, f"OpenCTI at {url}: reachable, version {version}"
