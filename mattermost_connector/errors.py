"""Errors the connector raises on purpose, each with a message fit for one line of output,
and `one_line`: the one way any error becomes that line (run history, CLI, logs)."""

from __future__ import annotations

from collections.abc import Iterable

from mattermost_connector.redact import redact


class ConnectorError(Exception):
    """Base of every expected failure: the CLI prints its message without a traceback."""


class ConfigError(ConnectorError):
    """A configuration variable is missing or invalid (exit code 2)."""


class MetadataError(ConnectorError):
    """OpenCTI's metadata files cannot be generated (a variable without a README row)."""


class MattermostError(ConnectorError):
    """The Mattermost server answered with an error or could not be reached."""

    def __init__(
        self, message: str, *, status: int | None = None, error_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id


class ServerUnavailable(MattermostError):
    """Still failing after the client's retries: the server did not answer (`reachable`
    False: refused, timed out, dropped), or kept answering 5xx (`reachable` True)."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable


class AuthenticationError(MattermostError):
    """401: the token is missing, revoked or expired. Retrying cannot help."""


class MalformedPost(MattermostError):
    """A post without a field the connector relies on (id, create_at, user_id): asking again
    returns the same post, so retrying cannot help."""


class FileTooLarge(MattermostError):
    """An attachment proved larger than the size cap while it was downloaded."""

    def __init__(self, size: int) -> None:
        super().__init__(f"larger than the size cap ({size} bytes or more)")
        self.size = size


class ChannelNotAccessible(MattermostError):
    """403 or 404 on a channel: unknown, or the token's user may not read it."""


class ChannelArchived(ChannelNotAccessible):
    """403 `api.user.view_archived_channels.*`: the channel is archived and the server does not
    let anyone read archived channels (TeamSettings.ExperimentalViewArchivedChannels off, on
    servers up to v10; api4/post.go getPostsForChannel). Skipped, not failed: nothing to import
    until an administrator allows it or unarchives the channel."""


class DeliveryError(ConnectorError):
    """A bundle could not be delivered to OpenCTI or written to the directory."""


class LeaseError(ConnectorError):
    """The state store could not be asked for a channel's lease: the channel is not run."""


ELLIPSIS = "…"


def fold(text: str, secrets: Iterable[str] = (), limit: int = 1000) -> str:
    """`text` on one line: secrets masked (`secrets` and those registered for the logs),
    whitespace folded, at most `limit` characters, cut at a word boundary when there is one
    in the last half."""
    text = " ".join(redact(text, secrets).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS) + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > limit // 2 else cut[:-1]
    return cut.rstrip() + ELLIPSIS


def one_line(
    error: BaseException,
    secrets: Iterable[str] = (),
    *,
    limit: int = 1000,
    first_line: bool = False,
) -> str:
    """The line that reports `error`: an expected error (ConnectorError) by its message, any
    other prefixed with its type (`KeyError: 'id'`; the type alone when it has no message).
    `first_line` keeps the first line of the message only, for errors that append details
    (SQLAlchemy adds the statement and a link). Then `fold`: masked, folded, bounded."""
    message = str(error)
    if first_line:
        message = (message.strip().splitlines() or [""])[0]
    if not isinstance(error, ConnectorError):
        message = f"{type(error).__name__}: {message}" if message.strip() else type(error).__name__
    return fold(message, secrets, limit)
