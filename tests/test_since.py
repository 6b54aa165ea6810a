"""`since` as the server answers it (post_store.go GetPostsSince; SqlPostStore.Delete): the
change scan counts what the server counts toward its 1,000-row cap, and reads only `order`."""

from __future__ import annotations

from mattermost_connector.changes import SINCE_CAP, scan_since
from tests.mattermost_sim import MattermostSimulator
from tests.support import make_client

TOKEN = "since-token"


def test_a_root_deletion_stamping_its_thread_again_can_fill_the_cap(sim: MattermostSimulator):
    """Deleting a root stamps again every row whose RootId is the root: its replies deleted
    before and the edit-history rows of its replies too. 1 + 600 + 600 rows: `since` may
    have been cut, though only 301 posts were live."""
    me = sim.add_user("reader", token=TOKEN)
    channel = sim.add_channel(sim.add_team("t"), "c", members=[me])
    root = sim.add_post(channel, me, "root", create_at=1_000_000)
    replies = [
        sim.add_post(channel, me, f"r{i}", root=root, create_at=1_000_001 + i) for i in range(600)
    ]
    for reply in replies:
        sim.edit_post(reply["id"], reply["message"] + " (edited)")
    for reply in replies[::2]:
        sim.delete_post(reply["id"])
    since = sim.now()
    sim.delete_post(root["id"])
    stamped = [p for p in sim.state.posts.values() if p["update_at"] > since]
    assert len(stamped) >= SINCE_CAP > sum(1 for p in stamped if not p["original_id"])
    assert scan_since(make_client(sim, TOKEN), channel["id"], since) is None


def test_a_reply_s_root_sent_along_is_not_a_change(sim: MattermostSimulator):
    me = sim.add_user("reader", token=TOKEN)
    channel = sim.add_channel(sim.add_team("t"), "c", members=[me])
    root = sim.add_post(channel, me, "root", create_at=2_000_000)
    reply = sim.add_post(channel, me, "reply", root=root, create_at=2_000_001)
    since = sim.now()
    sim.delete_post(reply["id"])
    rows = scan_since(make_client(sim, TOKEN), channel["id"], since)
    assert rows is not None and [row["id"] for row in rows] == [reply["id"]]
