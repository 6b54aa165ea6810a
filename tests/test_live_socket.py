"""Live mode's domain against the simulator's WebSocket, without Prefect: the socket (auth,
resume, gaps), the listener (due channels, reconnection, KEEPALIVE), the coalescing of
events into channel runs, the witness of changes. And the simulator's WebSocket itself."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from mattermost_connector.config import MattermostSettings
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import AuthenticationError
from mattermost_connector.live.announced import AnnouncedPosts, PeriodicCheck
from mattermost_connector.live.due import DueChannels
from mattermost_connector.live.listener import RESYNC, Listener
from mattermost_connector.live.socket import MattermostSocket, websocket_url
from mattermost_connector.live.witness import ChangeWitness
from tests.mattermost_sim import MattermostSimulator

TOKEN = "live-reader-token-never-print"


@pytest.fixture
def world(sim: MattermostSimulator) -> dict[str, Any]:
    reader = sim.add_user("reader", token=TOKEN)
    alice = sim.add_user("alice", token="alice-token")
    team = sim.add_team("cti")
    watched = sim.add_channel(team, "watched", members=[reader, alice])
    other = sim.add_channel(team, "other", members=[reader, alice])
    private = sim.add_channel(team, "private", members=[alice])  # the reader is not in it
    return {
        "reader": reader,
        "alice": alice,
        "watched": watched,
        "other": other,
        "private": private,
    }


def settings(sim: MattermostSimulator, **extra: Any) -> MattermostSettings:
    values = {
        "domain": "127.0.0.1",
        "port": sim.port,
        "protocol": "http",
        "token": TOKEN,
        "channel_ids": ["a" * 26],
        "timeout": 5,
        **extra,
    }
    return MattermostSettings(**values)


def url(sim: MattermostSimulator) -> str:
    return f"ws://127.0.0.1:{sim.port}/api/v4/websocket"


def received(socket: MattermostSocket, count: int, seconds: float = 5.0) -> list:
    events, deadline = [], time.monotonic() + seconds
    while len(events) < count and time.monotonic() < deadline:
        event = socket.receive(0.2)
        if event is not None:
            events.append(event)
    return events


# -- the socket -------------------------------------------------------------------------------


def test_socket_token_in_header_only_and_resume_without_gap(sim, world):
    socket = MattermostSocket(settings(sim))
    assert websocket_url(socket.settings) == url(sim)
    socket.open()
    (hello,) = received(socket, 1)
    assert hello.gap  # the first hello: nothing was seen before
    sim.add_post(world["watched"], world["alice"], "one")
    (one,) = received(socket, 1)
    assert (one.name, one.channel_id, one.gap) == ("posted", world["watched"]["id"], False)
    sim.websocket.drop()
    sim.add_post(world["watched"], world["alice"], "two")
    socket.open()  # resumes: the missed event is replayed, no hello, no gap
    (two,) = received(socket, 1)
    assert (two.name, two.post["message"], two.gap) == ("posted", "two", False)
    upgrades = sim.websocket.upgrades
    assert upgrades[-1]["query"]["connection_id"] == [hello.connection_id]
    assert upgrades[-1]["query"]["sequence_number"] == ["2"]
    for upgrade in upgrades:
        assert TOKEN not in upgrade["path"]
        assert upgrade["headers"]["Authorization"] == f"Bearer {TOKEN}"
    socket.close()


def test_socket_new_connection_id_is_a_gap(sim, world):
    socket = MattermostSocket(settings(sim))
    socket.open()
    received(socket, 1)
    sim.websocket.forget()  # the server lost our queue (restart, reaped)
    sim.add_post(world["watched"], world["alice"], "lost")
    socket.open()
    (hello,) = received(socket, 1)
    assert hello.name == "hello" and hello.gap
    socket.close()


def test_socket_refused_token(sim, world):
    socket = MattermostSocket(settings(sim, token="revoked-token-xyz"))
    with pytest.raises(AuthenticationError) as refused:
        socket.open()
    assert "revoked-token-xyz" not in str(refused.value)


# -- the listener -----------------------------------------------------------------------------


def start_listener(sim, channels, **kwargs) -> tuple[Listener, DueChannels, threading.Thread]:
    due = DueChannels(settle=0.05)
    options = {"keepalive": True, "delay": 0.05, "stop": threading.Event(), **kwargs}
    listener = Listener(MattermostSocket(settings(sim)), channels, due, **options)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    assert listener.connected.wait(5)
    return listener, due, thread


def take_all(due: DueChannels, seconds: float = 3.0) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for channel in due.take(0.2):
            for reason, count in channel.reasons.items():
                found.setdefault(channel.channel_id, {}).setdefault(reason, 0)
                found[channel.channel_id][reason] += count
        if found and due.pending() == 0:
            break
    return found


def test_listener_marks_selected_channels_due(sim, world):
    watched, other = world["watched"], world["other"]
    listener, due, thread = start_listener(sim, [watched["id"]])
    post = sim.add_post(watched, world["alice"], "one")
    sim.add_post(other, world["alice"], "not selected")
    sim.edit_post(post["id"], "edited")
    sim.delete_post(post["id"])
    assert take_all(due) == {watched["id"]: {"posted": 1, "post_edited": 1, "post_deleted": 1}}
    listener.stop.set()
    thread.join(5)
    assert not thread.is_alive() and listener.failure is None


def test_listener_resumes_after_a_drop_and_resyncs_after_a_lost_queue(sim, world):
    watched, other = world["watched"], world["other"]
    listener, due, thread = start_listener(sim, [watched["id"], other["id"]])
    sim.websocket.drop()
    sim.add_post(watched, world["alice"], "while dropped")
    assert take_all(due) == {watched["id"]: {"posted": 1}}  # replayed on resume
    assert listener.resyncs == 0
    sim.websocket.forget()
    sim.add_post(watched, world["alice"], "lost with the queue")
    found = take_all(due)
    assert found == {watched["id"]: {RESYNC: 1}, other["id"]: {RESYNC: 1}}
    assert listener.resyncs == 1
    listener.stop.set()
    thread.join(5)


def test_listener_backs_off_while_the_server_refuses(sim, world):
    listener, _due, thread = start_listener(sim, [world["watched"]["id"]], delay=0.2)
    sim.websocket.down(2.0)
    deadline = time.monotonic() + 8
    while sim.websocket.open_sockets == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.websocket.open_sockets == 1
    attempts = [u for u in sim.websocket.upgrades if "connection_id" in u["query"]]
    # at 0.2, 0.6, 1.4 s (refused), then 3.0 s (through): not one every poll
    assert len(attempts) == 4, len(attempts)
    listener.stop.set()
    thread.join(5)


def test_listener_without_keepalive_gives_up_at_the_first_disconnection(sim, world):
    listener, due, thread = start_listener(sim, [world["watched"]["id"]], keepalive=False)
    sim.websocket.drop()
    thread.join(5)
    assert not thread.is_alive()
    assert "KEEPALIVE=false" in (listener.failure or "")
    assert due.take(0.1) == []  # woken, nothing due


# -- coalescing -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_events_coalesce_and_a_busy_channel_waits_its_interval():
    clock = Clock()
    due = DueChannels(settle=0.1, busy_events=10, busy_interval=2.0, clock=clock)
    for _ in range(50):
        due.mark("c", "posted")
    assert due.take(0) == []  # not settled yet
    clock.now = 0.1
    (first,) = due.take(0)
    assert first.events == 50
    for _ in range(30):
        due.mark("c", "posted")
    clock.now = 1.0
    assert due.take(0) == []  # busy: two seconds between its runs
    clock.now = 2.1
    (second,) = due.take(0)
    assert second.events == 30
    due.mark("c", "posted")  # quiet again after a busy run: still waits the interval once
    clock.now = 4.2
    assert [d.events for d in due.take(0)] == [1]
    due.mark("c", "posted")
    clock.now = 4.3
    assert [d.events for d in due.take(0)] == [1]  # a quiet channel goes within `settle`


# -- the witness ------------------------------------------------------------------------------


def test_witness_is_complete_only_without_a_gap_since_the_last_run_opened(sim, world):
    from mattermost_connector.live.events import LiveEvent

    witness = ChangeWitness(clock_ms=lambda: 5_000)
    channel = world["watched"]["id"]
    post = {"id": "p1", "channel_id": channel, "root_id": "", "update_at": 1_000, "delete_at": 0}
    assert not witness.snapshot(channel).complete  # no run yet
    witness.opened(channel)
    witness.saw(LiveEvent("post_edited", 1, channel, post))  # after the listing, say
    witness.end_scan(channel)  # a first run: nothing scanned, nothing forgotten
    seen = witness.begin_scan(channel)
    assert seen.complete and set(seen.posts) == {"p1"}
    witness.saw(LiveEvent("post_deleted", 2, channel, post))  # during the scan
    witness.end_scan(channel)
    (deleted,) = witness.snapshot(channel).posts.values()  # the scan's edit is done with
    assert deleted["delete_at"] == deleted["update_at"] == 5_000  # marked deleted on receipt
    witness.opened(channel)
    witness.interrupted()  # a gap during the run
    witness.end_scan(channel)
    assert not witness.snapshot(channel).complete
    assert witness.snapshot(channel).posts == {}


# -- what the server does that loses events (issue 22) -------------------------------------------


def test_listener_resyncs_when_a_seq_skips(sim, world):
    """The server can skip a seq (an event that fails to encode in writePump): the event it
    held is lost, so every channel is caught up over REST."""
    watched, other = world["watched"], world["other"]
    listener, due, thread = start_listener(sim, [watched["id"], other["id"]])
    sim.websocket.lose_next(1)
    sim.add_post(watched, world["alice"], "its event is lost")
    sim.add_post(other, world["alice"], "its event arrives, one seq too far")
    found = take_all(due)
    assert found == {watched["id"]: {RESYNC: 1}, other["id"]: {RESYNC: 1, "posted": 1}}
    assert listener.resyncs == 1
    listener.stop.set()
    thread.join(5)


def test_listener_resyncs_when_reaped_soon_after_a_drop(sim, world):
    """A connection up longer than the reaper's threshold is reaped at its next tick, however
    recently it dropped: the resume gets a new connection id, and every channel is due."""
    watched = world["watched"]
    hub = sim.websocket
    hub.replay_seconds, hub.reap_interval = 0.4, 0.4
    listener, due, thread = start_listener(sim, [watched["id"]])
    time.sleep(0.5)
    hub.down(10.0)
    dropped = time.monotonic()
    next_tick = hub._origin + ((dropped - hub._origin) // 0.4 + 1) * 0.4
    hub.down_until = next_tick + 0.05  # back up before replay_seconds since the drop
    sim.add_post(watched, world["alice"], "while away")
    assert take_all(due) == {watched["id"]: {RESYNC: 1}}
    assert listener.resyncs == 1
    listener.stop.set()
    thread.join(5)


def test_listener_waits_what_a_429_on_the_upgrade_asks(sim, world):
    """The rate limiter wraps the upgrade too: a reconnection meeting a 429 waits its
    Retry-After instead of trying again at its own short delay."""
    listener, _due, thread = start_listener(sim, [world["watched"]["id"]], delay=0.05)
    sim.faults.rate_limit_per_sec, sim.faults.rate_limit_burst = 1.0, 1
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    while client.get("/users/me").status_code != 429:
        pass
    sim.websocket.drop()
    deadline = time.monotonic() + 8
    while listener.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.connections == 2
    refused = [r for r in sim.requests if r.path.endswith("/websocket") and r.status == 429]
    assert 1 <= len(refused) <= 2, len(refused)
    listener.stop.set()
    thread.join(5)


# -- announced posts: the listing may lag the event (read replicas) ------------------------------


def test_an_announced_post_is_looked_for_again_until_a_run_takes_it():
    clock = Clock()
    announced = AnnouncedPosts(first_retry=1.0, attempts=3, clock=clock)
    announced.announce("c", "p", create_at=5_000)
    behind = Cursor(boundary_ms=4_000)  # the run's listing did not show the post yet
    assert announced.confirm("c", behind, run_started=0.0) == ["p"]
    clock.now = 0.9
    assert announced.due() == []
    clock.now = 1.0
    assert announced.due() == ["c"] and announced.due() == []  # once per retry
    assert announced.confirm("c", behind, run_started=1.0) == ["p"]
    clock.now = 2.9
    assert announced.due() == []  # twice as long: 2 s after the second run
    clock.now = 3.0
    assert announced.due() == ["c"]
    past = Cursor(boundary_ms=5_000, boundary_ids=("p",))
    assert announced.confirm("c", past, run_started=3.0) == []
    clock.now = 100.0
    assert announced.due() == [] and announced.waiting("c") == set()


def test_an_announced_post_is_given_up_after_its_attempts_and_only_runs_after_it_count():
    clock = Clock()
    announced = AnnouncedPosts(first_retry=1.0, attempts=2, clock=clock)
    clock.now = 10.0
    announced.announce("c", "p", create_at=5_000)
    # a run that started before the event came: it is not expected to have taken the post
    assert announced.confirm("c", None, run_started=9.0) == ["p"]
    assert announced.next_retry_in() is None
    for _ in range(2):  # the attempts
        clock.now += 10.0
        assert announced.confirm("c", None, run_started=clock.now) == ["p"]
        assert announced.next_retry_in() is not None
    clock.now += 10.0
    assert announced.confirm("c", None, run_started=clock.now) == []  # given up
    assert announced.waiting("c") == set() and announced.given_up == 1


def test_a_deleted_post_is_no_longer_awaited_and_the_listener_announces_new_ones(sim, world):
    watched = world["watched"]
    listener, due, thread = start_listener(sim, [watched["id"], world["other"]["id"]])
    kept = sim.add_post(watched, world["alice"], "kept")
    gone = sim.add_post(watched, world["alice"], "deleted soon")
    sim.add_post(world["private"], world["alice"], "not ours")
    take_all(due)
    assert listener.announced.waiting(watched["id"]) == {kept["id"], gone["id"]}
    sim.delete_post(gone["id"])
    take_all(due)
    assert listener.announced.waiting(watched["id"]) == {kept["id"]}
    listener.stop.set()
    thread.join(5)


def test_the_periodic_check_comes_once_a_period():
    clock = Clock()
    check = PeriodicCheck(600.0, clock=clock)
    clock.now = 599.0
    assert not check.due() and check.next_in() == 1.0
    clock.now = 600.0
    assert check.due() and not check.due()
    clock.now = 1199.0
    assert not check.due()
    clock.now = 1200.0
    assert check.due()
