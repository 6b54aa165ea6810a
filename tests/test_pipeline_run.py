"""A channel's whole run as plain Python: `run.run_channel` over `plain_steps`, against the
Mattermost simulator, a SQLite state store and a bundle directory; no Prefect. What every
driver relies on: the lease is given back, an archived channel is skipped, a refused token
stops the run after closing it, a held lease keeps the run waiting."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.config import load_settings
from mattermost_connector.delivery import destinations
from mattermost_connector.errors import AuthenticationError
from mattermost_connector.kinds import RunStatus
from mattermost_connector.mattermost.client import MattermostClient, RetryPolicy
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.pipeline import lease
from mattermost_connector.pipeline.run import run_channel
from mattermost_connector.pipeline.services import Services
from mattermost_connector.pipeline.steps import Steps, plain_steps
from mattermost_connector.state import StateStore
from tests.mattermost_sim import MattermostSimulator
from tests.support import TOKEN, World


@pytest.fixture
def world(sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def services(world: World, channels: list[dict[str, Any]]) -> Services:
    """The process's services as a driver builds them, with a short retry budget."""
    world.configure(channels, CONNECTOR_DELIVERY_RETRIES="1", CONNECTOR_DELIVERY_RETRY_DELAY="0.01")
    settings = load_settings()
    client = MattermostClient(settings.mattermost, retry=RetryPolicy(base_delay=0.01))
    store = StateStore(settings.connector.state_database_url)
    return Services(settings, client, store, destinations(settings), UserDirectory(client))


def steps_of(world: World, channels: list[dict[str, Any]]) -> tuple[Steps, StateStore]:
    found = services(world, channels)
    return plain_steps(found), found.store


def test_a_run_gives_its_lease_back_whether_it_completes_or_fails(world: World):
    channel = world.channel("ops")
    world.populate(channel, 30)
    steps, store = steps_of(world, [channel])
    result = run_channel(steps, channel["id"])
    assert result.status == RunStatus.COMPLETED and result.counts.posts == 30
    assert store.lease_holder(channel["id"]) is None
    world.sim.state.channels.pop(channel["id"])  # gone: the next run fails (404)
    failed = run_channel(steps, channel["id"])
    assert failed.status == RunStatus.FAILED and failed.error
    assert store.lease_holder(channel["id"]) is None


def test_an_archived_channel_the_server_refuses_is_skipped_not_failed(world: World):
    channel = world.channel("archived")
    world.populate(channel, 10)
    world.sim.archive_channel(channel["id"], world.authors[0])
    world.sim.view_archived_channels = False
    steps, store = steps_of(world, [channel])
    result = run_channel(steps, channel["id"])
    assert result.status == RunStatus.ARCHIVED and result.counts.posts == 0
    assert result.error and result.error.startswith("archived")
    assert [r.status for r in store.runs(channel_id=channel["id"])] == [RunStatus.ARCHIVED]
    assert store.lease_holder(channel["id"]) is None


def test_a_token_refused_mid_run_stops_the_run_once_it_is_closed(world: World):
    """Revoked once the channel is opened: the run raises the refusal (it stops the whole
    sync), but first closes its history row, its OpenCTI work and spool, and its lease."""
    channel = world.channel("revoked")
    world.populate(channel, 20)
    steps, store = steps_of(world, [channel])

    def open_then_revoke(*args: Any) -> Any:
        opened = steps.open_channel(*args)
        world.sim.state.tokens.pop(TOKEN)
        return opened

    with pytest.raises(AuthenticationError):
        run_channel(replace(steps, open_channel=open_then_revoke), channel["id"])
    (run,) = store.runs(channel_id=channel["id"])
    assert run.status == RunStatus.FAILED and run.posts == 0 and "401" in (run.error or "")
    assert store.lease_holder(channel["id"]) is None


def test_a_held_lease_keeps_the_run_waiting_until_it_is_released(world: World, monkeypatch):
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.05)
    channel = world.channel("held")
    world.populate(channel, 5)
    steps, store = steps_of(world, [channel])
    assert store.try_lease(channel["id"], "another-process", 60)
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(run_channel(steps, channel["id"])))
    runner.start()
    time.sleep(0.5)
    assert runner.is_alive() and not store.runs(channel_id=channel["id"])  # not started
    store.release_lease(channel["id"], "another-process")
    runner.join(30)
    (result,) = results
    assert result.status == RunStatus.COMPLETED and result.counts.posts == 5
    assert store.lease_holder(channel["id"]) is None
