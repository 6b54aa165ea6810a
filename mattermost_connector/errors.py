"""Errors the connector raises on purpose, each with a message fit for one line of output,
and `one_line`: the one way any error becomes that line (run history, CLI, logs)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

from mattermost_connector.redact import redact


class Fault(StrEnum):
    """The kinds of fault, each with one retry policy (tasks/policy.py, README "Reliability")."""

    TRANSIENT = "transient"  # a connection refused, reset or timed out: the service is away
    BUSY = "busy"  # a server that answered it cannot now: 429, 5xx, a broker's nack
    LOCAL = "local"  # this machine's resources: disk full, quota, open files, memory
    PERMANENT = "permanent"  # asking again gets the same answer: token, access, bad input


class ConnectorError(Exception):
    """Base of every expected failure: the CLI prints its message without a traceback.
    `fault`: its kind, when the raiser knows it (else `fault_of` infers it)."""

    fault: Fault | None = None

    def __init__(self, *args: object, fault: Fault | None = None) -> None:
        super().__init__(*args)
        if fault is not None:
            self.fault = fault


class ConfigError(ConnectorError):
    """A configuration variable is missing or invalid (exit code 2)."""

    fault = Fault.PERMANENT


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

    fault = Fault.PERMANENT


class MalformedPost(MattermostError):
    """A post without a field the connector relies on (id, create_at, user_id): asking again
    returns the same post, so retrying cannot help."""

    fault = Fault.PERMANENT


class FileTooLarge(MattermostError):
    """An attachment proved larger than the size cap while it was downloaded."""

    def __init__(self, size: int) -> None:
        super().__init__(f"larger than the size cap ({size} bytes or more)")
        self.size = size


class ChannelNotAccessible(MattermostError):
    """403 or 404 on a channel: unknown, or the token's user may not read it."""

    fault = Fault.PERMANENT


class ChannelArchived(ChannelNotAccessible):
    """403 `api.user.view_archived_channels.*`: the channel is archived and the server does not
    let anyone read archived channels (TeamSettings.ExperimentalViewArchivedChannels off, on
    servers up to v10; api4/post.go getPostsForChannel). Skipped, not failed: nothing to import
    until an administrator allows it or unarchives the channel."""


class DeliveryError(ConnectorError):
    """A bundle could not be delivered to OpenCTI or written to the directory."""


class LeaseError(ConnectorError):
    """The state store could not be asked for a channel's lease: the channel is not run."""


class DiskFull(ConnectorError):
    """A local resource ran out while writing under `path`: the message names the path, the
    temporary directory in use and the space needed, so an operator can free or move it."""

    fault = Fault.LOCAL

    def __init__(self, path: Path, needed: int | None, reason: str) -> None:
        free = _free_bytes(path)
        super().__init__(
            f"{reason} writing {path}"
            + (f": {needed} bytes needed" if needed is not None else "")
            + (f", {free} free" if free is not None else "")
            + f" (temporary directory: {tempfile.gettempdir()}; set TMPDIR to move it)"
        )
        self.path, self.needed = path, needed


LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def local_fault(error: OSError, path: Path, needed: int | None = None) -> DiskFull | None:
    """`error` as a DiskFull naming `path` when it is a local resource running out."""
    if error.errno not in LOCAL_ERRNOS:
        return None
    return DiskFull(path, needed, error.strerror or os.strerror(error.errno or 0))


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


# Errors of the libraries the connector talks through whose cause is a connection: by name, so
# that the domain needs none of them imported to classify (pika, requests, SQLAlchemy, httpx).
TRANSIENT_NAMES = frozenset(
    {
        "AMQPConnectionError",
        "AMQPChannelError",
        "ConnectionClosed",
        "StreamLostError",
        "ChannelWrongStateError",
        "ConnectionWrongStateError",
        "OperationalError",
        "InterfaceError",
        "DisconnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "ConnectError",
        "RemoteDisconnected",
    }
)
BUSY_NAMES = frozenset({"NackError", "UnroutableError"})
# a statement the store refuses (a constraint, bad SQL): the same statement fails again
PERMANENT_NAMES = frozenset({"IntegrityError", "ProgrammingError", "DataError"})
# Answers that asking again cannot change: a malformed request, refused access, nothing there.
FINAL_STATUSES = frozenset({400, 403, 404})


def fault_of(error: BaseException) -> Fault:
    """The kind of `error`, which decides its retries (tasks/policy.py)."""
    if isinstance(error, ConnectorError) and error.fault is not None:
        return error.fault
    if isinstance(error, MattermostError):
        if error.status in FINAL_STATUSES:
            return Fault.PERMANENT
        return Fault.BUSY if error.status else Fault.TRANSIENT
    if isinstance(error, OSError) and error.errno in LOCAL_ERRNOS:
        return Fault.LOCAL
    if isinstance(error, (ConnectionError, TimeoutError)):
        return Fault.TRANSIENT
    if isinstance(error, PermissionError | FileNotFoundError | IsADirectoryError):
        return Fault.PERMANENT
    names = {klass.__name__ for klass in type(error).__mro__}
    if names & BUSY_NAMES:
        return Fault.BUSY
    if names & PERMANENT_NAMES:
        return Fault.PERMANENT
    if names & TRANSIENT_NAMES or "ConnectionError" in names:
        return Fault.TRANSIENT
    return Fault.TRANSIENT  # unknown: worth the same bounded retries as a dropped connection


ELLIPSIS = "…"


class RunFailed(ConnectorError):
    """A run that ended Failed, with its per-channel report rows: a flow's Failed state
    carries it as its data, which Prefect resolves as an exception (any other value there
    makes Prefect log a TypeError and a traceback)."""

    def __init__(self, message: str, report: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, report or [])
        self.report: list[dict[str, Any]] = report or []

    def __str__(self) -> str:
        return str(self.args[0])


def stops_the_run(error: BaseException) -> bool:
    """A refused token, or a Mattermost server that does not answer after the retries:
    every other channel of the run would fail the same way, each after the same retries, so
    no further channel starts (one run-level failure, not one per channel)."""
    if isinstance(error, AuthenticationError):
        return True
    return isinstance(error, ServerUnavailable) and not error.reachable


class RunStopped(ConnectorError):
    """The token was refused, or the server stopped answering, mid-run (stops_the_run): no
    further channel starts. `results`: the channels
    that finished before (ChannelResult)."""

    def __init__(self, reason: str, results: list[Any]) -> None:
        super().__init__(reason, results)
        self.reason, self.results = reason, results

    def __str__(self) -> str:
        return self.reason


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
