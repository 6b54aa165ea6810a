"""The simulator's post listings, as the server's (store/sqlstore/post_store.go): the page
size's default and cap, and `since`'s LIMIT 1000. The connector's side is in
tests/test_client.py and tests/test_invariants.py."""

from __future__ import annotations

from tests.mattermost_sim import Demo
from tests.support import make_client


def test_the_server_defaults_and_caps_page_size(demo: Demo):
    client = make_client(demo.sim, demo.token)
    channel_id = demo.channels[0]["id"]
    assert len(client._http.get(f"/channels/{channel_id}/posts").json()["order"]) == 60
    assert len(client.posts(channel_id, per_page=1000)) == 200


def test_since_is_capped_at_exactly_1000_rows(demo: Demo):
    """The server's LIMIT 1000: of 1,050 posts changed after `since` (no threads, so no root
    is sent along), exactly 1,000 come back, each once."""
    sim = demo.sim
    reader = next(u for u in demo.users if u["username"] == "octi-reader")
    channel = sim.add_channel(sim.add_team("capped"), "capped", members=[reader])
    posts = [sim.add_post(channel, reader, f"p{n}") for n in range(1050)]
    answer = make_client(sim, demo.token).posts(channel["id"], since=1)
    ids = [p["id"] for p in answer]
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) <= {p["id"] for p in posts}
