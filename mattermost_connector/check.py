"""`mattermost-connector check`: can this configuration work? Each part tried, none changed.

Every finding is one sentence. The platform is asked its version over plain HTTP rather than
through pycti, whose client retries an unreachable platform while logging "Waiting for
OpenCTI API to start" and costs a second of imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from mattermost_connector.config import MattermostSettings, Settings
from mattermost_connector.errors import (
    ChannelNotAccessible,
    DeliveryError,
    MattermostError,
    ServerUnavailable,
    fold,
    one_line,
)
from mattermost_connector.mattermost.channels import named_channel
from mattermost_connector.mattermost.client import MattermostClient, RetryPolicy
from mattermost_connector.mattermost.discovery import discover, resolve_teams
from mattermost_connector.redact import redact
from mattermost_connector.state import StateStore

Finding = tuple[bool, str]
# A check is interactive: one retry, soon, rather than a sync's patient backoff.
CHECK_RETRY = RetryPolicy(attempts=2, base_delay=0.5, max_delay=1.0)
PLATFORM_TIMEOUT = 15.0
# Before a run starts (`preflight`): each answer within this, so that a server that does not
# answer is reported within 5 s in all (two attempts, 0.5 s apart at most, plus start-up).
PREFLIGHT_TIMEOUT = 1.5
PREFLIGHT_THREADS = 8
TOKEN_REFUSED = "the token was refused; check OPENCTI_TOKEN"


def preflight(settings: Settings, channel_ids: list[str] | None = None) -> None:
    """What would make every channel of a run fail, checked before Prefect starts: the token,
    the channels listed by id (or `channel_ids`) when none of them is readable, the teams of
    MATTERMOST_TEAMS and the platform. Raises a ConnectorError whose one line names what is
    wrong. One unreadable channel among readable ones is the run's to report (it fails alone,
    naming its reason; the others are imported). A server that answers, but with 5xx, is
    left to the run's own patient retries."""
    mattermost = settings.mattermost
    try:
        _mattermost_preflight(mattermost, channel_ids)
    except ServerUnavailable as error:
        if not error.reachable:
            raise MattermostError(
                f"Mattermost at {mattermost.api_url}: {one_line(error)}; "
                f"{unreachable_hint(mattermost, error)}"
            ) from None
    if settings.connector.send_to_queue:
        ok, finding = _platform(settings, timeout=PREFLIGHT_TIMEOUT * 2)
        if not ok:
            raise DeliveryError(finding)


# OpenSSL's words when the server answers a TLS handshake in plain HTTP
_PLAIN_HTTP = ("wrong version number", "wrong_version_number", "record layer failure")


def unreachable_hint(settings: MattermostSettings, error: BaseException) -> str:
    """What to check when Mattermost does not answer: the protocol, when an https request
    met a server speaking plain http; else the host, the port and the server."""
    if settings.protocol == "https" and any(w in str(error).lower() for w in _PLAIN_HTTP):
        return (
            "the server answers in plain HTTP, not HTTPS: set MATTERMOST_PROTOCOL=http "
            "(or check MATTERMOST_PORT)"
        )
    return "check MATTERMOST_DOMAIN, MATTERMOST_PORT and that the server is up"


def _mattermost_preflight(settings: MattermostSettings, channel_ids: list[str] | None) -> None:
    quick = settings.model_copy(update={"timeout": min(settings.timeout, PREFLIGHT_TIMEOUT)})
    with MattermostClient(quick, retry=CHECK_RETRY) as client:
        client.me()
        excluded = set(settings.exclude_channel_ids)
        wanted = channel_ids or [c for c in settings.channel_ids if c not in excluded]
        with ThreadPoolExecutor(PREFLIGHT_THREADS) as pool:
            failures = [f for f in pool.map(lambda c: _channel_problem(client, c), wanted) if f]
        if failures and len(failures) == len(wanted):  # else the run imports the others
            raise ChannelNotAccessible("; ".join(failures) + "; check MATTERMOST_CHANNEL_IDS")
        if settings.teams and not channel_ids:
            resolve_teams(client, settings.teams)


def _channel_problem(client: MattermostClient, channel_id: str) -> str | None:
    """Why the channel cannot be synced (404, 403), or None. Other errors (the server gone
    meanwhile) are raised: they are the run's, not the channel's."""
    try:
        client.channel(channel_id)
    except MattermostError as error:
        if error.status in (403, 404):
            return f"channel {channel_id} is not accessible: {error.status} {error.error_id}"
        raise
    return None


def run_checks(settings: Settings) -> Iterator[Finding]:
    yield from _mattermost(settings)
    yield _state_store(settings)
    if settings.connector.send_to_directory:
        yield _directory(settings)
    if settings.connector.send_to_queue:
        yield _platform(settings)


def _mattermost(settings: Settings) -> Iterator[Finding]:
    with MattermostClient(settings.mattermost, retry=CHECK_RETRY) as client:
        try:
            me = client.me()
        except ServerUnavailable as error:
            hint = "" if error.reachable else f"; {unreachable_hint(settings.mattermost, error)}"
            yield False, f"Mattermost at {settings.mattermost.api_url}: {one_line(error)}{hint}"
            return
        except MattermostError as error:
            yield False, f"Mattermost token at {settings.mattermost.api_url}: {one_line(error)}"
            return
        yield True, f"Mattermost token: valid, acting as @{me.get('username')}"
        for channel_id in settings.mattermost.channel_ids:
            try:
                _, name, _ = named_channel(client, channel_id)
                client.posts(channel_id, per_page=1, skipFetchThreads="true")
            except MattermostError as error:
                yield False, f"channel {channel_id}: {one_line(error)}"
            else:
                yield True, f"channel {channel_id} ({name}): readable"
        if settings.mattermost.discovers:
            try:
                found = discover(client, settings.mattermost)
            except MattermostError as error:
                yield False, one_line(error)
            else:
                yield True, f"channels to sync: {len(found.channel_ids)} (found now on the server)"


def _state_store(settings: Settings) -> Finding:
    """An existing store is opened (its schema brought up to date, as any run would); a
    SQLite file not created yet is not: its directory is checked writable instead, so that
    `check` creates nothing."""
    url = settings.connector.state_database_url
    missing = _sqlite_file_not_created(url)
    if missing is not None:
        problem = _not_writable(missing.parent)
        if problem:
            return False, f"state store {missing}: {problem}"
        return True, f"state store: {missing} not created yet, at the first run (writable)"
    try:
        store = StateStore(url)
        store.touch()
        store.close()
    except Exception as error:  # every failure, ConnectorError included, is a finding
        return False, f"state store: {one_line(error)}"
    return True, f"state store: writable ({url.split('://')[0]})"


def _sqlite_file_not_created(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def _not_writable(path: Path) -> str | None:
    """Why nothing could be created at `path` (its nearest existing ancestor not a writable
    directory), or None."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _directory(settings: Settings) -> Finding:
    path = settings.connector.send_to_directory_path
    if not path.exists():
        problem = _not_writable(path)
        if problem:
            return False, f"bundle directory {path}: {problem}"
        return True, f"bundle directory {path}: not created yet, at the first run (writable)"
    probe = path / ".write-check"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        return False, f"bundle directory {path}: {error.strerror}"
    return True, f"bundle directory {path}: writable"


def _ask_version(settings: Settings, timeout: float) -> httpx.Response:
    """The platform's answer to a version query with the connector's token."""
    token = settings.opencti.token.get_secret_value() if settings.opencti.token else ""
    # pycti's helper verifies the platform's certificate only with OPENCTI_SSL_VERIFY=true
    verify = os.environ.get("OPENCTI_SSL_VERIFY", "false").strip().lower() in {"true", "1", "yes"}
    return httpx.post(
        f"{settings.opencti.url}/graphql",
        json={"query": "query healthCheck { about { version } }"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
        verify=verify,
    )


def _platform(settings: Settings, timeout: float = PLATFORM_TIMEOUT) -> Finding:
    """Ask the platform its version with the connector's token; registers nothing."""
    url = settings.opencti.url
    try:
        response = _ask_version(settings, timeout)
    except httpx.HTTPError as error:
        return False, f"OpenCTI at {url}: {_unreachable(error, timeout)}"
    problem = _platform_problem(response)
    if problem:
        return False, f"OpenCTI at {url}: {redact(problem, settings.secrets)}"
    version = response.json()["data"]["about"]["version"]
    return True, f"OpenCTI at {url}: reachable, version {version}"


def token_refused(settings: Settings, timeout: float = PLATFORM_TIMEOUT) -> bool:
    """Whether the platform answers and refuses OPENCTI_TOKEN: a permanent fault, which
    pycti reports as the platform "not reachable", like a transient one."""
    try:
        response = _ask_version(settings, timeout)
    except httpx.HTTPError:
        return False
    return _platform_problem(response) == TOKEN_REFUSED


def _unreachable(error: httpx.HTTPError, timeout: float = PLATFORM_TIMEOUT) -> str:
    reason = {
        httpx.ConnectTimeout: "no answer within the connection timeout",
        httpx.ReadTimeout: f"no answer within {timeout:g} s",
    }.get(type(error))
    if reason is None:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error)
        reason = f"cannot connect ({detail or type(error).__name__})"
    return f"not reachable: {reason}; check OPENCTI_URL and that the platform is up"


def _platform_problem(response: httpx.Response) -> str | None:
    """None when the answer holds a version; else what is wrong, in one sentence."""
    if response.status_code != 200:
        return f"answered HTTP {response.status_code} on /graphql: is OPENCTI_URL the platform's?"
    try:
        body = response.json()
    except ValueError:
        return "answered something that is not JSON on /graphql: is OPENCTI_URL the platform's?"
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        message = str(errors[0].get("message", "")) if isinstance(errors[0], dict) else ""
        if "logged in" in message.lower() or "auth" in message.lower():
            return TOKEN_REFUSED
        return f"refused the query: {fold(message, limit=200)}"
    try:
        body["data"]["about"]["version"]
    except (KeyError, TypeError):
        return "answered without a version: is OPENCTI_URL the platform's?"
    return None
