"""The simulator's WebSocket, as the server's (app/platform/web_conn.go, web_hub.go): post
events to channel members only, `seq` numbering, the authentication challenge, and resuming
within the replay window only. The connector's side is in tests/test_live_socket.py."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.mattermost_sim import MattermostSimulator

TOKEN = "simulator-reader-token"


@pytest.fixture
def world(sim: MattermostSimulator) -> dict:
    reader = sim.add_user("reader", token=TOKEN)
    alice = sim.add_user("alice", token="alice-token")
    team = sim.add_team("cti")
    watched = sim.add_channel(team, "watched", members=[reader, alice])
    private = sim.add_channel(team, "private", members=[alice])  # the reader is not in it
    return {"reader": reader, "alice": alice, "watched": watched, "private": private}


def url(sim: MattermostSimulator) -> str:
    return f"ws://127.0.0.1:{sim.port}/api/v4/websocket"


def test_simulator_sends_post_events_to_members_only(sim, world):
    ws = connect(url(sim), additional_headers={"Authorization": f"Bearer {TOKEN}"})
    hello = json.loads(ws.recv(timeout=5))
    assert (hello["event"], hello["seq"]) == ("hello", 0)
    assert len(hello["data"]["connection_id"]) == 26
    sim.add_post(world["private"], world["alice"], "not for the reader")
    post = sim.add_post(world["watched"], world["alice"], "hello")
    event = json.loads(ws.recv(timeout=5))
    assert (event["event"], event["seq"]) == ("posted", 1)  # the private post never came
    assert isinstance(event["data"]["post"], str)  # a JSON string, as the server sends it
    assert json.loads(event["data"]["post"])["id"] == post["id"]
    assert event["data"]["channel_name"] == "watched"
    assert event["data"]["sender_name"] == "@alice"
    assert event["broadcast"]["channel_id"] == world["watched"]["id"]
    sim.edit_post(post["id"], "hello again")
    sim.delete_post(post["id"])
    edited, deleted = json.loads(ws.recv(timeout=5)), json.loads(ws.recv(timeout=5))
    assert (edited["event"], edited["seq"]) == ("post_edited", 2)
    assert json.loads(edited["data"]["post"])["message"] == "hello again"
    assert (deleted["event"], deleted["seq"]) == ("post_deleted", 3)
    assert json.loads(deleted["data"]["post"])["delete_at"] == 0  # as read before deleting
    assert deleted["data"]["delete_by"] == world["alice"]["id"]
    ws.close()


def test_simulator_authentication_challenge_and_refused_token(sim, world):
    ws = connect(url(sim))
    ws.send(json.dumps({"seq": 1, "action": "authentication_challenge", "data": {"token": TOKEN}}))
    answers = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
    assert {"status": "OK", "seq_reply": 1} in answers
    assert any(a.get("event") == "hello" for a in answers)
    ws.close()
    with pytest.raises(InvalidStatus) as refused:
        connect(url(sim), additional_headers={"Authorization": "Bearer wrong"})
    assert refused.value.response.status_code == 401


def test_simulator_resumes_within_its_replay_window_only(sim, world):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ws = connect(url(sim), additional_headers=headers)
    connection_id = json.loads(ws.recv(timeout=5))["data"]["connection_id"]
    sim.add_post(world["watched"], world["alice"], "one")
    assert json.loads(ws.recv(timeout=5))["seq"] == 1
    sim.websocket.drop()
    sim.add_post(world["watched"], world["alice"], "two, while away")
    # resume asking for seq 1 again: replayed from the dead queue, same seqs, no hello
    resumed = connect(
        f"{url(sim)}?connection_id={connection_id}&sequence_number=1", additional_headers=headers
    )
    seqs = [json.loads(resumed.recv(timeout=5))["seq"] for _ in range(2)]
    assert seqs == [1, 2]
    resumed.close()
    time.sleep(0.2)
    # past the replay window: a new connection id, seq 0
    sim.websocket.replay_seconds = 0.1
    sim.websocket.reap_interval = 0.1
    time.sleep(0.3)
    late = connect(
        f"{url(sim)}?connection_id={connection_id}&sequence_number=3", additional_headers=headers
    )
    hello = json.loads(late.recv(timeout=5))
    assert hello["event"] == "hello" and hello["seq"] == 0
    assert hello["data"]["connection_id"] != connection_id
    late.close()
