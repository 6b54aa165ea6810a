"""Errors the connector raises on purpose, each with a message fit for one line of output."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every expected failure: the CLI prints its message without a traceback."""


class ConfigError(ConnectorError):
    """A configuration variable is missing or invalid (exit code 2)."""


class MattermostError(ConnectorError):
    """The Mattermost server answered with an error or could not be reached."""

    def __init__(
        self, message: str, *, status: int | None = None, error_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id


class AuthenticationError(MattermostError):
    """401: the token is missing, revoked or expired. Retrying cannot help."""


class MalformedPost(MattermostError):
    """A post without a field the connector relies on (id, create_at, user_id): asking again
    returns the same post, so retrying cannot help."""


class ChannelNotAccessible(MattermostError):
    """403 or 404 on a channel: unknown, or the token's user may not read it."""


class ChannelArchived(ChannelNotAccessible):
    """403 `api.user.view_archived_channels.*`: the channel is archived and the server does not
    let anyone read archived channels (TeamSettings.ExperimentalViewArchivedChannels off, on
    servers up to v10; api4/post.go getPostsForChannel). Skipped, not failed: nothing to import
    until an administrator allows it or unarchives the channel."""


class DeliveryError(ConnectorError):
    """A bundle could not be delivered to OpenCTI or written to the directory."""
