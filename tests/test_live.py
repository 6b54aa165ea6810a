"""Live mode end to end against the simulator: a live session delivers new posts, edits and
deletions within seconds, coalesces bursts, survives drops (resumed, or caught up when the
server lost its queue); the CLI exits 1 at a disconnection without KEEPALIVE and 0 on
SIGTERM once the delivery in flight is done; the token is in no URL and no output."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.live.due import BUSY_INTERVAL
from mattermost_connector.state import StateStore
from tests.conftest import clean_environ
from tests.mattermost_sim import MattermostSimulator
from tests.support import TOKEN, World


@pytest.fixture
def world(
    sim: MattermostSimulator, workdir: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str
) -> World:
    return World(sim, workdir, monkeypatch)


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def live(world: World) -> Iterator[Callable[..., Any]]:
    """Start a live session on the world's channels; stopped at the end."""
    from mattermost_prefect.flows.live import LiveSession
    from mattermost_prefect.tasks import resources

    sessions: list[LiveSession] = []

    def start(channels: list[dict[str, Any]], **env: str) -> LiveSession:
        world.configure(channels, **{"MATTERMOST_KEEPALIVE": "true", **env})
        session = LiveSession(resources.settings())
        session.start()
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.request_stop()
        session.wait()


def delivered(world: World, channel: dict[str, Any]) -> dict[str, int]:
    return dict(world.deliveries(channel, world.bundles()))


def messages(world: World) -> dict[str, dict[str, Any]]:
    from tests.checks import objects_by_id

    return {
        o["url"].rsplit("/", 1)[1]: o
        for o in objects_by_id(world.bundles()).values()
        if o["type"] == "media-content"
    }


def runs(world: World, channel: dict[str, Any]) -> int:
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    try:
        return len(store.runs(limit=10_000, channel_id=channel["id"]))
    finally:
        store.close()


# What the tests wait for are events (a post delivered, a run ended), each with a timeout far
# above the time it takes, so that a loaded machine makes them slower, not failed.
EVENT = 120


def runs_ended(world: World, channel: dict[str, Any]) -> bool:
    """The channel has run, and no run of it is still going (each wrote its outcome)."""
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    try:
        records = store.runs(limit=10_000, channel_id=channel["id"])
    finally:
        store.close()
    return bool(records) and all(str(r.status) != "running" for r in records)


def test_new_posts_edits_and_deletions_are_delivered_within_seconds(world: World, live):
    channel = world.channel("live")
    old = world.populate(channel, 30)
    session = live([channel])
    wait_for(lambda: len(delivered(world, channel)) == 30, 60, "the catch-up")
    author = world.authors[0]
    post = world.sim.add_post(channel, author, "fresh indicator 203.0.113.7")
    # delivered by the run its event triggered ("live events: ... 1 posted", below), not by a
    # later resync: how soon is the benchmark's to say (tests/bench_live.py)
    wait_for(lambda: post["id"] in delivered(world, channel), EVENT, "the new post")
    reply = world.sim.add_post(channel, author, "a reply", root=post)
    wait_for(lambda: reply["id"] in delivered(world, channel), EVENT, "the reply")
    world.sim.edit_post(old[3]["id"], "edited while live")
    wait_for(
        lambda: messages(world)[old[3]["id"]]["content"] == "edited while live",
        EVENT,
        "the edit",
    )
    world.sim.delete_post(old[5]["id"])
    wait_for(
        lambda: "deleted" in messages(world)[old[5]["id"]].get("x_opencti_labels", []),
        EVENT,
        "the deletion",
    )
    counts = delivered(world, channel)
    changed = {old[3]["id"], old[5]["id"]}  # and the replies deleted with old[5]
    untouched = [p for p in old if p["id"] not in changed and p["root_id"] != old[5]["id"]]
    assert all(counts[p["id"]] == 1 for p in untouched), counts
    assert counts[post["id"]] == 1 and counts[reply["id"]] == 1
    assert session.failure is None
    names = delivery_runs()
    # which channel, and why (a channel never synced is named by its id until its first run)
    assert f"live catch-up: {channel['id']} (1 catch-up)" in names
    assert "live events: cti/live (1 posted)" in names
    # the deletion's run: alone, or with an edit event that came in while the reply's run
    # (whose change scan delivered the edit already) was still going
    assert any(n.startswith("live events: cti/live (") and "1 post_deleted" in n for n in names), (
        names
    )
    assert len([n for n in names if n.startswith("live ") and "cti/live " in n]) <= 6


def delivery_runs() -> list[str]:
    """The names of live mode's delivery task runs in Prefect (in its session's flow run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    live_flow = FlowFilter(name=FlowFilterName(any_=["mattermost-live"]))
    deliveries = TaskRunFilter(name=TaskRunFilterName(like_="live "))
    deadline = time.monotonic() + EVENT  # task runs reach the API through events, shortly
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_filter=live_flow, task_run_filter=deliveries, limit=200
            )
            names = [run.name for run in runs if run.name.startswith("live ")]
            if any("post_deleted" in name for name in names) or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def test_a_burst_is_coalesced_into_a_few_channel_runs(world: World, live):
    channel = world.channel("burst")
    world.populate(channel, 5)
    session = live([channel])
    wait_for(lambda: len(delivered(world, channel)) == 5, 60, "the catch-up")
    before = runs(world, channel)
    author = world.authors[1]
    burst = []
    began = time.monotonic()
    for index in range(300):  # 300 posts in about 3 s (longer on a loaded machine)
        burst.append(world.sim.add_post(channel, author, f"burst {index}"))
        time.sleep(0.01)
    lasted = time.monotonic() - began
    wanted = {p["id"] for p in burst}
    wait_for(lambda: wanted <= set(delivered(world, channel)), 60, "the burst")
    # nothing due any more, and every run it caused ended
    wait_for(
        lambda: session.due.pending() == 0 and runs_ended(world, channel), EVENT, "the last run"
    )
    caused = runs(world, channel) - before
    # DueChannels (its counts pinned exactly in tests/test_invariants.py): a first run
    # SETTLE_SECONDS after the first post, a second for the posts after it. A run caused by
    # BUSY_EVENTS posts or more is followed by the next BUSY_INTERVAL later at the soonest;
    # only the first may have fewer (the posts of its first 0.1 s), each later one holds
    # the posts of a whole channel run. So at most one run per BUSY_INTERVAL of the burst,
    # plus the first two and the one after its last post: at most 4 for 3 s, as 1,000 posts
    # in 10 s make 6 or 7 (README). Slower runs make fewer, never fewer than 2.
    assert 2 <= caused <= 3 + int(lasted // BUSY_INTERVAL), (caused, lasted)
    counts = delivered(world, channel)
    assert all(counts[post_id] == 1 for post_id in wanted)


def test_a_drop_is_resumed_and_a_lost_queue_is_caught_up(world: World, live):
    channel, other = world.channel("drops"), world.channel("quiet")
    world.populate(channel, 5)
    session = live([channel, other])
    wait_for(lambda: len(delivered(world, channel)) == 5, 60, "the catch-up")
    author = world.authors[2]
    world.sim.websocket.drop()
    resumed = world.sim.add_post(channel, author, "posted while dropped")
    wait_for(lambda: resumed["id"] in delivered(world, channel), EVENT, "the resumed event")
    assert session.listener.resyncs == 0
    world.sim.websocket.forget()  # the server lost our queue: a new connection id
    lost = world.sim.add_post(channel, author, "its event is lost")
    wait_for(lambda: lost["id"] in delivered(world, channel), EVENT, "the resync")
    assert session.listener.resyncs == 1
    assert delivered(world, channel)[lost["id"]] == 1


def test_no_token_in_any_url(world: World, live):
    channel = world.channel("urls")
    world.populate(channel, 3)
    live([channel])
    wait_for(lambda: len(delivered(world, channel)) == 3, 60, "the catch-up")
    world.sim.websocket.drop()
    post = world.sim.add_post(channel, world.authors[0], "after a drop")
    wait_for(lambda: post["id"] in delivered(world, channel), EVENT, "the post")
    upgrades = world.sim.websocket.upgrades
    assert len(upgrades) >= 2 and "connection_id" in upgrades[-1]["query"]
    for upgrade in upgrades:
        assert TOKEN not in upgrade["path"]
    for request in world.sim.requests:
        assert TOKEN not in request.path and TOKEN not in str(request.query)


# -- through the CLI ------------------------------------------------------------------------


def start_cli(world: World, channels: list[dict[str, Any]], **extra: str) -> subprocess.Popen:
    env = {
        **clean_environ(),
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(world.sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels),
        "MATTERMOST_KEEPALIVE_DELAY": "0.1",
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(world.workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{world.workdir / 'state.db'}",
        **extra,
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "mattermost-connector"), "live"],
        env=env,
        cwd=world.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_without_keepalive_exits_1_at_a_disconnection(world: World, prefect_api: str):
    channel = world.channel("supervised")
    world.populate(channel, 4)
    process = start_cli(world, [channel], MATTERMOST_KEEPALIVE="false", PREFECT_API_URL=prefect_api)
    try:
        wait_for(lambda: len(delivered(world, channel)) == 4, 90, "the catch-up")
        wait_for(lambda: world.sim.websocket.open_sockets == 1, 30, "the WebSocket")
        world.sim.websocket.drop()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, err[-2000:]
    assert "MATTERMOST_KEEPALIVE=false" in err
    assert "Traceback" not in err
    assert TOKEN not in out + err


def test_cli_sigterm_finishes_the_delivery_in_flight_and_exits_0(world: World, prefect_api: str):
    channel = world.channel("terminated")
    world.populate(channel, 4)
    process = start_cli(world, [channel], MATTERMOST_KEEPALIVE="true", PREFECT_API_URL=prefect_api)
    try:
        wait_for(lambda: len(delivered(world, channel)) == 4, 90, "the catch-up")
        wait_for(lambda: world.sim.websocket.open_sockets == 1, 30, "the WebSocket")
        wait_for(lambda: runs_ended(world, channel), EVENT, "the catch-up's run to end")
        world.sim.faults.latency = 0.4  # each request now takes 0.4 s: the delivery is slow
        reading = []
        world.sim.on_request = lambda path, query: reading.append(path)
        post = world.sim.add_post(channel, world.authors[0], "delivered despite SIGTERM")
        wait_for(lambda: any("/posts" in path for path in reading), EVENT, "the delivery start")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=90)
    finally:
        process.kill()
    assert process.returncode == 0, err[-2000:]
    assert delivered(world, channel).get(post["id"]) == 1  # finished, not abandoned
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    try:
        last = store.runs(limit=1, channel_id=channel["id"])[0]
    finally:
        store.close()
    assert str(last.status) == "completed"
    assert "Traceback" not in err
    assert TOKEN not in out + err


def test_changes_seen_live_replace_since_and_its_1000_row_cap(world: World, live):
    channel = world.channel("busy")
    old = world.populate(channel, 40)
    live([channel])
    wait_for(lambda: len(delivered(world, channel)) == 40, 60, "the catch-up")
    # the catch-up's run commits its changes: seen live from then on
    wait_for(lambda: runs_ended(world, channel), EVENT, "the catch-up's run to end")
    mark = len(world.sim.requests)
    author = world.authors[0]
    burst = [world.sim.add_post(channel, author, f"busy {i}") for i in range(1100)]
    world.sim.edit_post(old[2]["id"], "edited among 1,100 new posts")
    root = next(p for p in old if any(r["root_id"] == p["id"] for r in old))
    replies = [r for r in old if r["root_id"] == root["id"]]
    world.sim.delete_post(root["id"])  # one event; its replies are deleted without one
    wanted = {p["id"] for p in burst}
    wait_for(lambda: wanted <= set(delivered(world, channel)), 90, "the burst")

    def labelled(post: dict[str, Any]) -> bool:
        return "deleted" in messages(world)[post["id"]].get("x_opencti_labels", [])

    wait_for(lambda: all(labelled(p) for p in [root, *replies]), 30, "the deletions")
    wait_for(
        lambda: messages(world)[old[2]["id"]]["content"] == "edited among 1,100 new posts",
        30,
        "the edit",
    )
    asked = [r.query for r in world.sim.requests[mark:] if r.path.endswith("/posts")]
    assert not [q for q in asked if "since" in q]  # no `since`, so no cap, no full check
    assert not [q for q in asked if "after" not in q]  # no complete listing from the start


def test_serve_runs_the_listener_beside_the_deployments_when_live(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    from mattermost_prefect import cli
    from mattermost_prefect.deployments import serve as deployments

    channel = world.channel("served-live")
    world.populate(channel, 3)
    world.configure([channel], MATTERMOST_LIVE="true", MATTERMOST_KEEPALIVE="true")
    served: list[str] = []

    def serve_all(settings: Any) -> None:  # stands for Prefect's serve loop, while it runs
        served.append("serving")
        wait_for(lambda: len(delivered(world, channel)) == 3, 60, "the catch-up")
        post = world.sim.add_post(channel, world.authors[0], "while serving")
        wait_for(lambda: post["id"] in delivered(world, channel), EVENT, "the live delivery")

    monkeypatch.setattr(deployments, "serve_all", serve_all)
    assert cli.main(["serve"]) == 0
    assert served == ["serving"]
    # the listener stopped with serve
    wait_for(lambda: world.sim.websocket.open_sockets == 0, 5, "the WebSocket closed")


def test_a_post_the_replica_shows_late_and_one_no_event_brings_are_delivered(world: World, live):
    """A post no event brings (a public channel read without joining) is delivered by the
    periodic check (MATTERMOST_LIVE_CHECK_PERIOD). Listings read a replica that can lag the
    event: the post announced is looked for again until a run takes it (here within the
    check's period, right after a check)."""
    channel = world.channel("lagging")
    unjoined = world.sim.add_channel(world.team, "unjoined", members=world.authors)
    world.sim.join_team(world.team, world.reader)
    world.populate(channel, 3)
    session = live([channel, unjoined], MATTERMOST_LIVE_CHECK_PERIOD="PT6S")
    wait_for(lambda: len(delivered(world, channel)) == 3, 60, "the catch-up")
    silent = world.sim.add_post(unjoined, world.authors[1], "no event for this one")
    wait_for(lambda: silent["id"] in delivered(world, unjoined), 20, "the periodic check")
    whys = [name.split(":")[0] for name in delivery_runs()]
    assert any("check" in why for why in whys), whys
    world.sim.replica_lag = 1.0
    late = world.sim.add_post(channel, world.authors[0], "the replica shows it late")
    wait_for(lambda: late["id"] in delivered(world, channel), 20, "the late post")
    assert delivered(world, channel)[late["id"]] == 1
    wait_for(lambda: not session.announced.waiting(channel["id"]), 10, "the confirmation")
    names = delivery_runs()
    assert any("unconfirmed" in n.split(":")[0] and "cti/lagging" in n for n in names), names
