"""A run's spool: the temporary directory its downloads and bundles wait in until delivered,
and the markers beside a bundle that let a retried load skip what an attempt did."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from mattermost_connector.errors import local_fault

log = logging.getLogger("mattermost_connector.load")

SPOOL_PREFIX = "mattermost-{channel_id}-"


def new_spool(channel_id: str) -> Path:
    """The run's spool directory in the temporary directory, after removing those of earlier
    runs of the channel that were killed before clearing theirs (the caller holds the
    channel's lease: no other run of it is using one)."""
    prefix = SPOOL_PREFIX.format(channel_id=channel_id)
    temp = Path(tempfile.gettempdir())
    for left in temp.glob(f"{prefix}*"):
        if left.is_dir():
            log.info("channel %s: removing %s, left by a run that was killed", channel_id, left)
            shutil.rmtree(left, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as error:
        local = local_fault(error, temp)
        if local is None:
            raise
        raise local from None


def sent_marker(bundle: Path, destination: str) -> Path:
    """Beside a spooled bundle: it reached `destination` (a broker's confirm, a renamed
    file). A retried load skips it there, so a retry re-sends only what may not have been
    delivered."""
    return bundle.with_name(f"{bundle.name}.sent-{destination}")


def recorded_marker(bundle: Path) -> Path:
    """Beside a spooled bundle that moves no cursor: recorded already, not to send again."""
    return bundle.with_name(f"{bundle.name}.recorded")
