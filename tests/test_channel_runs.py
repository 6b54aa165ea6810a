"""Each channel as its own run (a task run of the sync; a flow run on a work pool): several at once within CONNECTOR_CHANNEL_CONCURRENCY,
leases still respected, every post delivered once, a few coarse task runs per channel."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mattermost_connector.pipeline import lifecycle
from mattermost_connector.state import StateStore
from tests.mattermost_sim import MattermostSimulator
from tests.support import World


@pytest.fixture
def world(prefect_api: str, sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def flow_runs_of(parent_name: str) -> tuple[object, list[object]]:
    """The latest run named `parent_name`, and the flow runs it started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (parent,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[parent_name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            )
        )
    return parent, children


def task_runs_of(flow_run_id: object) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def test_channels_run_as_task_runs_of_the_sync_at_most_the_bound_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    channels = [world.channel(f"feed-{n}") for n in range(6)]
    for channel in channels:
        world.populate(channel, 40, files_every=7)
    world.configure(channels, CONNECTOR_CHANNEL_CONCURRENCY="2")

    running: set[str] = set()
    entered: set[str] = set()
    peak: list[int] = [0]
    guard = threading.Condition()
    real_open = lifecycle.channel_context  # the first thing opening a channel does

    def paired_open(client, channel_id, *args, **kwargs):
        """Each channel waits in its open until a second one runs beside it (or none is left
        to come): the bound is reached however slowly subflows start on a loaded machine."""
        with guard:
            running.add(channel_id)
            entered.add(channel_id)
            peak[0] = max(peak[0], len(running))
            guard.notify_all()
            assert guard.wait_for(
                lambda: len(running) >= 2 or len(entered) == len(channels), timeout=300
            )
        return real_open(client, channel_id, *args, **kwargs)

    real_close = lifecycle.close

    def close(services, channel_id, *args, **kwargs):
        try:
            return real_close(services, channel_id, *args, **kwargs)
        finally:
            with guard:
                running.discard(channel_id)
                guard.notify_all()

    monkeypatch.setattr(lifecycle, "channel_context", paired_open)
    monkeypatch.setattr(lifecycle, "close", close)
    report = world.sync()

    assert peak[0] == 2
    assert [row["channel_id"] for row in report] == [c["id"] for c in channels]
    assert all(row["status"] == "completed" and row["posts"] == 40 for row in report)
    bundles = world.bundles()
    for channel in channels:
        counts = world.deliveries(channel, bundles)
        assert len(counts) == 40 and set(counts.values()) == {1}

    parent, children = flow_runs_of("sync 6 channels")
    assert parent.state.is_completed()
    assert children == []  # on the embedded default, channels are task runs of the sync
    channel_runs = channel_task_runs(parent.id)
    # listed by id and never synced: named before they start (flows/names.py)
    assert sorted(run.name for run in channel_runs) == sorted(f"cti/{c['name']}" for c in channels)
    assert all(run.state.is_completed() for run in channel_runs)
    # the sync's run: selection, probe, one task run per channel (its steps are plain calls
    # inside it, tasks/inline.py), the report; before: a flow run per channel and 8-9 task
    # runs in each
    assert len(task_runs_of(parent.id)) == len(channels) + 3

    for channel in channels:
        world.populate(channel, 5)
    world.sync()
    parent, children = flow_runs_of("sync 6 channels")
    assert children == []
    assert len(task_runs_of(parent.id)) == len(channels) + 3
    names = sorted(run.name for run in channel_task_runs(parent.id))
    assert names == sorted(f"cti/{c['name']}" for c in channels)


def channel_task_runs(flow_run_id: object) -> list[object]:
    from mattermost_prefect.flows.channel import mattermost_channel_task

    key = mattermost_channel_task.task_key
    return [run for run in task_runs_of(flow_run_id) if run.task_key == key]


def test_a_channel_another_process_holds_is_run_only_once_it_is_released(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """A lease held elsewhere (a backfill, another machine) keeps the channel's run waiting,
    while the other channels go ahead concurrently."""
    from mattermost_connector.pipeline import lease

    monkeypatch.setattr(lease, "POLL_SECONDS", 0.1)
    held, *others = [world.channel(f"ops-{n}") for n in range(4)]
    for channel in (held, *others):
        world.populate(channel, 20)
    world.configure([held, *others], CONNECTOR_CHANNEL_CONCURRENCY="4")
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    assert store.try_lease(held["id"], "another-process", 60)
    released: list[float] = []

    def others_done() -> bool:
        ended = {r.channel_id for r in store.runs() if str(r.status) == "completed"}
        return {c["id"] for c in others} <= ended

    def release_later() -> None:
        """Released once the other channels' runs have all ended: they went ahead while it
        was held (if they waited for it, this gives up after 5 minutes and the test fails)."""
        deadline = time.monotonic() + 300
        while not others_done() and time.monotonic() < deadline:
            time.sleep(0.1)
        released.append(time.time())
        store.release_lease(held["id"], "another-process")

    releaser = threading.Thread(target=release_later)
    releaser.start()
    report = world.sync()
    releaser.join()
    assert all(row["status"] == "completed" and row["posts"] == 20 for row in report)
    runs = {run.channel_id: run for run in store.runs()}
    assert runs[held["id"]].started_at.timestamp() >= released[0] - 0.05
    # the others did not wait for it
    assert all(runs[c["id"]].ended_at.timestamp() < released[0] for c in others), [
        runs[c["id"]].ended_at.timestamp() - released[0] for c in others
    ]
    counts = world.deliveries(held, world.bundles())
    assert len(counts) == 20 and set(counts.values()) == {1}


def test_a_refused_token_reads_back_from_the_api_as_token_refused(world: World):
    """A channel run on a worker tells the sync that the token was refused by its state's
    name alone (flows.dispatch.dispatched): the Prefect API keeps that name."""
    from prefect.client.orchestration import get_client

    from mattermost_prefect.flows.channel import TOKEN_REFUSED, mattermost_channel

    channel = world.channel("refused")
    world.populate(channel, 3)
    world.configure([channel], MATTERMOST_TOKEN="revoked-token-abcdef")
    state = mattermost_channel(channel_id=channel["id"], return_state=True)
    assert state.is_failed() and state.name == TOKEN_REFUSED
    assert "check MATTERMOST_TOKEN" in state.message
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).state
    assert stored.name == TOKEN_REFUSED and stored.message == state.message


def test_a_token_refused_mid_run_stops_the_sync_after_the_channels_running(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The token revoked once the probe passed: the two channels running at once each stop
    at their first request, unretried; the third never starts. The channels were synced once
    before, so that their names are known (a never-synced channel's is asked for first)."""
    import mattermost_prefect.flows.sync as sync_flow
    from tests.support import TOKEN

    channels = [world.channel(f"revoked-{n}") for n in range(3)]
    for channel in channels:
        world.populate(channel, 5)
    world.configure(channels, CONNECTOR_CHANNEL_CONCURRENCY="2")
    world.sync()
    for channel in channels:
        world.populate(channel, 2)
    real_run_channels = sync_flow.run_channels

    def revoke_then_run(*args, **kwargs):
        world.sim.state.tokens.pop(TOKEN)
        before = len(world.sim.requests)
        try:
            return real_run_channels(*args, **kwargs)
        finally:
            revoke_then_run.requests = len(world.sim.requests) - before

    monkeypatch.setattr(sync_flow, "run_channels", revoke_then_run)
    state = sync_flow.mattermost_sync(return_state=True)

    assert state.is_failed() and state.message.startswith("run stopped: Mattermost refused")
    assert "check MATTERMOST_TOKEN" in state.message
    this_run = str(state.state_details.flow_run_id)
    runs = [
        run
        for run in StateStore(f"sqlite:///{world.workdir / 'state.db'}").runs()
        if run.flow_run_id == this_run
    ]
    assert revoke_then_run.requests == len(runs) == 2
    for run in runs:
        assert run.status == "failed" and "check MATTERMOST_TOKEN" in run.error
