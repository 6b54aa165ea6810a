"""The simulator is no kinder than the server where posts can be lost (issue 22, section 2):
each behaviour below was read in the server's source, cited in tests/mattermost_sim.py and
tests/mattermost_websocket.py. Tests of the simulator itself, not of the connector."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.mattermost_sim import MattermostSimulator


@pytest.fixture
def world(sim: MattermostSimulator):
    me = sim.add_user("me", token="tok")
    channel = sim.add_channel(sim.add_team("t"), "c", members=[me])
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4", headers={"Authorization": "Bearer tok"}
    )
    return sim, me, channel, client


def listing(client, channel, **params) -> dict:
    answer = client.get(f"/channels/{channel['id']}/posts", params=params)
    answer.raise_for_status()
    return answer.json()


def test_an_update_moves_a_post_among_its_ties(world):
    sim, me, channel, client = world
    anchor = sim.add_post(channel, me, "before", create_at=5_000)
    tied = [sim.add_post(channel, me, f"t{i}", create_at=5_001) for i in range(8)]
    first = listing(client, channel, after=anchor["id"])["order"]
    assert listing(client, channel, after=anchor["id"])["order"] == first  # no change: stable
    orders = set()
    for post in tied:
        sim.react(post["id"])
        orders.add(tuple(listing(client, channel, after=anchor["id"])["order"]))
    assert len(orders - {tuple(first)}) >= 2  # updates reorder the millisecond
    assert all(set(order) == set(first) for order in orders)


# -- the WebSocket (tests/mattermost_websocket.py) ----------------------------------------------


def ws_url(sim: MattermostSimulator, **query) -> str:
    tail = "&".join(f"{name}={value}" for name, value in query.items())
    return f"ws://127.0.0.1:{sim.port}/api/v4/websocket" + (f"?{tail}" if tail else "")


HEADERS = {"Authorization": "Bearer tok"}


def test_a_seq_skips_when_an_event_fails_to_encode(world):
    sim, me, channel, _ = world
    ws = connect(ws_url(sim), additional_headers=HEADERS)
    assert json.loads(ws.recv(timeout=5))["seq"] == 0  # hello
    sim.websocket.lose_next(1)
    sim.add_post(channel, me, "lost in writePump")
    sim.add_post(channel, me, "sent")
    event = json.loads(ws.recv(timeout=5))
    assert event["seq"] == 2 and json.loads(event["data"]["post"])["message"] == "sent"
    ws.close()


def test_a_connection_is_reaped_by_its_connect_time_not_its_drop_time(world):
    sim = world[0]
    hub = sim.websocket
    hub.replay_seconds, hub.reap_interval = 0.8, 0.8
    ws = connect(ws_url(sim), additional_headers=HEADERS)
    connection_id = json.loads(ws.recv(timeout=5))["data"]["connection_id"]
    time.sleep(0.9)  # connected longer than the threshold
    hub.drop()
    dropped = time.monotonic()
    next_tick = hub._origin + ((dropped - hub._origin) // 0.8 + 1) * 0.8
    time.sleep(max(0.0, next_tick - time.monotonic() + 0.02))
    assert time.monotonic() - dropped < hub.replay_seconds  # dropped less than that ago
    late = connect(
        ws_url(sim, connection_id=connection_id, sequence_number=1), additional_headers=HEADERS
    )
    hello = json.loads(late.recv(timeout=5))
    assert hello["event"] == "hello" and hello["data"]["connection_id"] != connection_id
    late.close()


def test_the_upgrade_meets_the_rate_limiter(world):
    sim, _, _, client = world
    sim.faults.rate_limit_per_sec, sim.faults.rate_limit_burst = 1.0, 1
    while client.get("/users/me").status_code != 429:
        pass
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(sim), additional_headers=HEADERS)
    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) >= 1


# -- what the listings carry (post_store.go) -----------------------------------------------------


def test_since_sends_a_reply_s_root_in_posts_not_in_order(world):
    sim, me, channel, client = world
    root = sim.add_post(channel, me, "root", create_at=10_000)
    reply = sim.add_post(channel, me, "reply", root=root, create_at=10_005)
    since = sim.now()
    sim.delete_post(reply["id"])  # the root's row is not touched
    answer = listing(client, channel, since=since)
    assert answer["order"] == [reply["id"]]
    assert root["id"] in answer["posts"]
    assert answer["posts"][root["id"]]["update_at"] <= since


def test_deleting_a_root_stamps_again_every_row_of_its_thread(world):
    sim, me, channel, client = world
    root = sim.add_post(channel, me, "root", create_at=20_000)
    edited = sim.add_post(channel, me, "reply", root=root, create_at=20_001)
    gone = sim.add_post(channel, me, "reply, deleted first", root=root, create_at=20_002)
    sim.edit_post(edited["id"], "reply, edited")  # a history row whose RootId is the root
    sim.edit_post(root["id"], "root, edited")  # a history row whose RootId is ''
    sim.delete_post(gone["id"])
    since = sim.now()
    sim.delete_post(root["id"])
    answer = listing(client, channel, since=since)
    rows = [answer["posts"][i] for i in answer["order"]]
    history = [r for r in rows if r["original_id"]]
    assert {r["id"] for r in rows if not r["original_id"]} == {
        root["id"],
        edited["id"],
        gone["id"],
    }
    assert [r["original_id"] for r in history] == [edited["id"]]  # not the root's own
    assert len({r["update_at"] for r in rows}) == 1  # one stamp, counted toward the cap


def test_pages_carry_every_post_of_the_threads_they_touch(world):
    sim, me, channel, client = world
    first = sim.add_post(channel, me, "first", create_at=30_000)
    root = sim.add_post(channel, me, "root", create_at=30_001)
    replies = [
        sim.add_post(channel, me, f"reply {i}", root=root, create_at=30_010 + i) for i in range(5)
    ]
    sim.delete_post(replies[4]["id"])
    live = {r["id"] for r in replies[:4]}
    # `after`: the page holds the root alone; all its live replies come along
    after = listing(client, channel, after=first["id"], per_page=1)
    assert after["order"] == [root["id"]]
    assert set(after["posts"]) == {root["id"], *live}
    # the default page: a reply's whole thread comes along...
    newest = listing(client, channel, per_page=1)
    assert newest["order"] == [replies[3]["id"]]
    assert set(newest["posts"]) == {root["id"], *live}
    # ...but a root on it does not bring its replies (getParentsPosts looks at RootIds)
    oldest = listing(client, channel, per_page=1, page=4)
    assert oldest["order"] == [root["id"]]
    assert set(oldest["posts"]) == {root["id"]}


def test_listings_read_a_replica_that_lags_the_event(world):
    sim, me, channel, client = world
    sim.replica_lag = 0.5
    first = sim.add_post(channel, me, "first", create_at=40_000)
    time.sleep(0.6)
    ws = connect(ws_url(sim), additional_headers=HEADERS)
    json.loads(ws.recv(timeout=5))  # hello
    post = sim.add_post(channel, me, "new")
    sim.edit_post(first["id"], "first, edited")
    event = json.loads(ws.recv(timeout=5))
    assert event["event"] == "posted"  # the event is out at once...
    assert post["id"] not in listing(client, channel)["order"]  # ...the listing lags
    assert post["id"] not in listing(client, channel, after=first["id"])["order"]
    assert client.get(f"/posts/{post['id']}").status_code == 404
    assert listing(client, channel)["posts"][first["id"]]["message"] == "first"
    time.sleep(0.6)
    assert post["id"] in listing(client, channel, after=first["id"])["order"]
    assert listing(client, channel)["posts"][first["id"]]["message"] == "first, edited"
    ws.close()


def test_skip_fetch_threads_sends_the_roots_of_the_replies_only(world):
    sim, me, channel, client = world
    first = sim.add_post(channel, me, "first", create_at=50_000)
    root = sim.add_post(channel, me, "root", create_at=50_001)
    replies = [
        sim.add_post(channel, me, f"reply {i}", root=root, create_at=50_010 + i) for i in range(4)
    ]
    lean = listing(client, channel, after=first["id"], per_page=1, skipFetchThreads="true")
    assert set(lean["posts"]) == {root["id"]}
    lean = listing(client, channel, after=replies[0]["id"], per_page=1, skipFetchThreads="true")
    assert lean["order"] == [replies[1]["id"]]
    assert set(lean["posts"]) == {replies[1]["id"], root["id"]}
