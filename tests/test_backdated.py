"""Posts that appear behind the cursor (a create_at older than what was delivered: set by an
integration or an admin, `mmctl import`, shared channels): imported in that run, through
`since` when it shows them, else through the complete check the channel's message count calls
for, and never labelled deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.changes import examine_since, listed_since, unaccounted
from mattermost_connector.cursor import Cursor
from mattermost_connector.state import message_digest
from mattermost_connector.stix import message_id
from tests.mattermost_sim import MattermostSimulator
from tests.support import World


@pytest.fixture
def world(prefect_api: str, sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def full_checks(world: World, channel: dict[str, Any], since_index: int) -> int:
    """Listings of the channel from its start (the complete check), after request `since_index`:
    the new-posts pass resumes with `after=`, `since` scans carry `since`."""
    return sum(
        1
        for r in world.sim.requests[since_index:]
        if r.path.endswith(f"{channel['id']}/posts") and not {"after", "since"} & r.query.keys()
    )


def labels(world: World, channel: dict[str, Any], post_id: str) -> list[list[str]]:
    """The labels of every delivered version of a post's message, in delivery order."""
    wanted = message_id(world.context(channel), post_id)
    return [
        o.get("x_opencti_labels", [])
        for b in world.bundles()
        for o in b["objects"]
        if o["id"] == wanted
    ]


def test_a_post_behind_the_cursor_but_after_the_watermark_comes_through_since(world: World):
    channel = world.channel("recent")
    posts = [world.sim.add_post(channel, world.authors[i % 3], f"now {i}") for i in range(30)]
    world.configure([channel])
    world.sync()
    mark = len(world.sim.requests)
    behind = world.sim.add_post(  # behind the cursor, after the `since` watermark
        channel, world.authors[0], "set an earlier time", create_at=posts[5]["create_at"] + 1
    )
    fresh = world.sim.add_post(channel, world.authors[1], "new")
    (report,) = world.sync()
    assert report["posts"] == 2 and report["updated"] == report["deleted"] == 0
    assert full_checks(world, channel, mark) == 0  # `since` showed it: no complete check
    counts = world.deliveries(channel, world.bundles())
    assert counts[behind["id"]] == counts[fresh["id"]] == 1
    assert len(counts) == 32 and set(counts.values()) == {1}
    assert labels(world, channel, behind["id"]) == [[]]
    (report,) = world.sync()  # nothing new: nothing sent, no complete check
    assert report["posts"] == 0 and full_checks(world, channel, mark) == 0


def test_a_post_older_than_the_watermark_is_found_by_the_count_and_never_labelled_deleted(
    world: World,
):
    channel = world.channel("imported")
    posts = world.populate(channel, 60)  # created long ago, as `mmctl import` would
    world.configure([channel])
    world.sync()
    world.sync()
    mark = len(world.sim.requests)
    behind = world.sim.add_post(
        channel, world.authors[2], "imported history", create_at=posts[20]["create_at"] + 1
    )
    gone = next(p for p in posts[30:] if p["root_id"])
    world.sim.delete_post(gone["id"])
    world.clock += 1000
    fresh = world.sim.add_post(channel, world.authors[0], "new", create_at=world.clock)
    (report,) = world.sync()
    assert full_checks(world, channel, mark) >= 1
    assert (report["posts"], report["updated"], report["deleted"]) == (2, 0, 1)
    counts = world.deliveries(channel, world.bundles())
    assert counts[behind["id"]] == counts[fresh["id"]] == 1
    assert labels(world, channel, behind["id"]) == [[]]  # delivered once, live
    assert labels(world, channel, gone["id"])[-1] == ["deleted"]
    mark = len(world.sim.requests)
    (report,) = world.sync()  # the count is explained now: no second complete check
    assert (report["posts"], report["updated"], report["deleted"]) == (0, 0, 0)
    assert full_checks(world, channel, mark) == 0
    assert labels(world, channel, behind["id"]) == [[]]
    assert world.assert_complete(channel) == 61 + 1 - 1


def test_posts_created_and_deleted_between_runs_call_for_no_complete_check(world: World):
    channel = world.channel("chatty")
    world.populate(channel, 20)
    world.configure([channel])
    world.sync()
    mark = len(world.sim.requests)
    brief = world.sim.add_post(channel, world.authors[0], "oops, wrong channel")
    world.sim.delete_post(brief["id"])
    world.sim.add_post(channel, world.authors[1], "joined", type="system_join_channel")
    kept = world.sim.add_post(channel, world.authors[1], "kept")
    (report,) = world.sync()
    assert report["posts"] == 1 and report["skipped"] == 1
    assert full_checks(world, channel, mark) == 0
    assert world.deliveries(channel, world.bundles())[kept["id"]] == 1


def test_posts_created_while_a_run_lists_call_for_no_complete_check(world: World):
    """They are listed by that run, after it read the count: the next run's count has them,
    though it does not list them again."""
    channel = world.channel("live")
    world.populate(channel, 300)
    world.configure([channel])
    added: list[str] = []

    def write_while_reading(path: str, query: dict) -> None:
        if path.endswith("/posts") and "after" in query and not added:
            added.extend(
                world.sim.add_post(channel, world.authors[0], f"live {i}")["id"] for i in range(3)
            )

    world.sim.on_request = write_while_reading
    (report,) = world.sync()
    world.sim.on_request = None
    assert report["posts"] == 303
    mark = len(world.sim.requests)
    (report,) = world.sync()
    assert report["posts"] == 0 and full_checks(world, channel, mark) == 0


# -- the domain rules, without Prefect -------------------------------------------------------


def post(pid: str, create_at: int, update_at: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "create_at": create_at,
        "update_at": create_at if update_at is None else update_at,
        "delete_at": 0,
        "edit_at": 0,
        "user_id": "u",
        "root_id": "",
        "message": pid,
        "type": "",
        **extra,
    }


def test_examine_since_sorts_rows_behind_the_cursor_and_counts_the_unlisted():
    opened = Cursor(boundary_ms=500, boundary_ids=("b",))
    rows = [
        post("old-root", 100, 100),  # a root sent along (not changed since): ignored
        post("behind", 300, 900),  # live, never delivered, behind the cursor: import it
        post("tie", 500, 900),  # created in the cursor's millisecond, not taken: new-posts'
        post("ahead", 700, 900),  # after the cursor: the new-posts pass's
        post("too-old", 50, 900),  # behind, but before the start: counted, not imported
        post("brief", 650, 950, delete_at=950),  # created and deleted between two runs
        post("ancient-deleted", 20, 950, delete_at=950),  # its creation was counted before
        post("history", 300, 900, original_id="x", delete_at=900),  # an edit-history row
        post("join", 200, 900, type="system_join_channel"),  # skipped, never counted
        post("done", 400, 900),  # delivered already (a reaction): nothing
    ]
    delivered = {"done": {"edit_at": 0, "delete_at": 0, "message_sha256": message_digest("done")}}
    found = examine_since(
        rows,
        delivered,
        800,
        opened_at=opened,
        start_ms=60,
        include_system=False,
        checked=(10, 600, 0),
        last_post_at=700,
    )
    assert [p["id"] for p in found.behind] == ["behind"]
    assert found.unlisted == 3  # behind, too-old, brief
    assert found.stale == []


def test_the_count_needs_every_post_it_grew_by_to_be_seen():
    listed = [
        post("a", 610),
        post("b", 650, type="system_join_channel"),  # not in the count
        post("c", 600),  # at the last check's last_post_at: counted then
        post("d", 710),  # after this run read the count: not in it
    ]
    assert listed_since(listed, (10, 600, 0), 700) == (1, 1)
    assert listed_since(listed, None, 700) == (0, 1)  # no check yet: only what is ahead
    assert unaccounted((10, 600, 0), 13, 1 + 2) == 0
    assert unaccounted((10, 600, 0), 14, 1 + 2) == 1
    assert unaccounted((10, 600, 1), 14, 1 + 2) == 0  # one listed ahead by the last run
    assert unaccounted(None, 14, 0) == 0
