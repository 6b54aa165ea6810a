"""Process-wide resources the tasks share: settings, HTTP client, state store, destinations,
the outcomes a closed run could not write yet, and the progress artifacts of running flow
runs. The only place singletons live: tasks hand them to the domain as `Services`.

Tasks receive references (channel ids, cursors), never clients: Prefect would try to hash them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from mattermost_connector.config import Settings, load_settings
from mattermost_connector.delivery import Destination, destinations
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.pipeline.services import Services, UnwrittenOutcomes
from mattermost_connector.redact import mask_secrets_in_logs
from mattermost_connector.state import StateStore

_lock = threading.RLock()
_cache: dict[str, Any] = {}


def _get(key: str, build: Any) -> Any:
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def settings() -> Settings:
    def build() -> Settings:
        loaded = load_settings()
        mask_secrets_in_logs(loaded.secrets)
        return loaded

    return _get("settings", build)


def client() -> MattermostClient:
    return _get("client", lambda: MattermostClient(settings().mattermost))


def store() -> StateStore:
    return _get("store", lambda: StateStore(settings().connector.state_database_url))


def outputs() -> list[Destination]:
    return _get("destinations", lambda: destinations(settings()))


def users(run_key: str) -> UserDirectory:
    """One user cache per flow run: a long-lived `serve` process must see renamed users."""
    with _lock:
        directory = _cache.get("users")
        if directory is None or directory[0] != run_key:
            directory = (run_key, UserDirectory(client()))
            _cache["users"] = directory
        return directory[1]


def services(run_key: str) -> Services:
    """The pipeline's dependencies in this process, with the user cache of flow run
    `run_key`."""
    return Services(
        settings=settings(),
        client=client(),
        store=store(),
        destinations=outputs(),
        users=users(run_key),
        witness=_cache.get("witness"),
        unwritten=_get("unwritten", UnwrittenOutcomes),
    )


def step_tasks(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The pipeline's steps as Prefect tasks (tasks/steps.py), built once per configuration:
    building them costs milliseconds a channel would pay each run."""
    return _get("step-tasks", build)


def progress_artifacts() -> dict[str, list[Any]]:
    """Flow run id -> [progress artifact id, channels done, channels in the run], for the
    runs in progress in this process (tasks/report.py)."""
    return _get("progress", dict)


def keep_connections(keep: bool) -> None:
    """A live session delivers every few seconds: its HTTP connections to Mattermost stay
    open between runs (httpx still closes those idle for 60 s)."""
    with _lock:
        _cache["keep_connections"] = keep


def use_witness(witness: ChangeWitness | None) -> None:
    """The live session's witness of changes, for the pipelines of this process (None: every
    change scan asks `since`)."""
    with _lock:
        _cache["witness"] = witness


def release_connections() -> None:
    """Close Mattermost connections after a run, unless a live session in this process
    reuses them (`keep_connections`)."""
    with _lock:
        if "client" in _cache and not _cache.get("keep_connections"):
            _cache.pop("client").close()


def reset() -> None:
    """Forget everything (tests; a configuration change)."""
    with _lock:
        if "client" in _cache:
            _cache["client"].close()
        if "store" in _cache:
            _cache["store"].close()
        _cache.clear()
