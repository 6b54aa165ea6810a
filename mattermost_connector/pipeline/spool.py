"""A run's spool: the temporary directory its downloads and bundles wait in until delivered,
the markers beside a bundle that let a retried load skip what an attempt did, and the rule
for removing a spool a killed run left behind.

Several installs may share a host's temporary directory (a test instance beside production,
two clones' test suites) and sync the same channel; the channel's lease only orders the runs
of one state store. So a run removes a left-over spool only when it can prove it is its own
store's dead run: the directory holds an owner file naming its store (a hash of the state
database URL, made absolute) and its run, and no process holds that file's lock (each run
holds it, `flock`, from the spool's creation to its removal; the system drops the lock of a
process that dies). A spool without an owner file, with another store's, or locked, is left.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

from mattermost_connector.errors import local_fault

log = logging.getLogger("mattermost_connector.load")

SPOOL_PREFIX = "mattermost-{channel_id}-"
OWNER_FILE = ".owner"

_held: dict[Path, int] = {}  # spool -> the descriptor holding its owner file's lock
_held_lock = threading.Lock()


def store_identity(database_url: str) -> str:
    """The state store, named without its password: a hash of its URL, a SQLite path made
    absolute (two clones' `sqlite:///data/state.db` are two stores)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))
    rendered = url.render_as_string(hide_password=False)
    return hashlib.sha256(rendered.encode()).hexdigest()[:32]


def new_spool(channel_id: str, store: str, run_id: int | None) -> Path:
    """A fresh spool for a run of `channel_id` under `store` (store_identity), after removing
    those this store's killed runs of the channel left behind (the caller holds the channel's
    lease, so no live run of this store uses one; `is_dead_own` spares every other)."""
    prefix = SPOOL_PREFIX.format(channel_id=channel_id)
    temp = Path(tempfile.gettempdir())
    for left in temp.glob(f"{prefix}*"):
        if left.is_dir() and left not in _held and is_dead_own(left, store):
            log.info("channel %s: removing %s, left by a run that was killed", channel_id, left)
            shutil.rmtree(left, ignore_errors=True)
    try:
        spool = Path(tempfile.mkdtemp(prefix=prefix))
        _own(spool, store, run_id)
    except OSError as error:
        local = local_fault(error, temp)
        if local is None:
            raise
        raise local from None
    return spool


def is_dead_own(spool: Path, store: str) -> bool:
    """Whether `spool` is `store`'s, and its run's process is gone (its lock is free)."""
    owner = spool / OWNER_FILE
    try:
        descriptor = os.open(owner, os.O_RDWR)
    except OSError:
        return False  # no owner file: another install's, or one being created
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live run holds it
        try:
            named = json.loads(os.read(descriptor, 4096) or b"{}")
        except ValueError:
            return False
        return isinstance(named, dict) and named.get("store") == store
    finally:
        os.close(descriptor)


def release_spool(spool: Path) -> None:
    """Remove the run's spool, then let go of its lock."""
    shutil.rmtree(spool, ignore_errors=True)
    with _held_lock:
        descriptor = _held.pop(spool, None)
    if descriptor is not None:
        os.close(descriptor)


def _own(spool: Path, store: str, run_id: int | None) -> None:
    """Lock the owner file first, then name the store and run in it: a scan in between finds
    it locked, or empty (not provably its store's), and leaves the spool."""
    descriptor = os.open(spool / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        named = {"store": store, "run": run_id, "pid": os.getpid()}
        os.write(descriptor, json.dumps(named).encode())
    except OSError:
        os.close(descriptor)
        raise
    with _held_lock:
        _held[spool] = descriptor


def sent_marker(bundle: Path, destination: str) -> Path:
    """Beside a spooled bundle: it reached `destination` (a broker's confirm, a renamed
    file). A retried load skips it there, so a retry re-sends only what may not have been
    delivered."""
    return bundle.with_name(f"{bundle.name}.sent-{destination}")


def recorded_marker(bundle: Path) -> Path:
    """Beside a spooled bundle that moves no cursor: recorded already, not to send again."""
    return bundle.with_name(f"{bundle.name}.recorded")
