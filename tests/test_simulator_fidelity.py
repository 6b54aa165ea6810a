"""The simulator is no kinder than the server where posts can be lost (issue 22, section 2):
each behaviour below was read in the server's source, cited in tests/mattermost_sim.py and
tests/mattermost_websocket.py. Tests of the simulator itself, not of the connector."""

from __future__ import annotations

import httpx
import pytest

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
