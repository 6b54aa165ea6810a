"""The cursor walk: complete, exactly once, resumable, whatever the ties and the channel size."""

from __future__ import annotations

import math
import random
from collections import Counter

from mattermost_connector.cursor import Cursor
from mattermost_connector.mattermost.posts import walk_posts
from tests.mattermost_sim import MattermostSimulator
from tests.support import make_client

TOKEN = "walk-token"


def channel_with(sim: MattermostSimulator, stamps: list[int]):
    user = sim.add_user("reader", token=TOKEN)
    team = sim.add_team("t")
    channel = sim.add_channel(team, "c", members=[user])
    for index, at in enumerate(stamps):
        sim.add_post(channel, user, f"m{index}", create_at=at)
    return user, channel


def walk_all(sim, channel, cursor, per_page=200, **kw):
    client = make_client(sim, TOKEN)
    taken, last = [], cursor
    for page in walk_posts(client, channel["id"], cursor, per_page=per_page, **kw):
        taken.extend(p["id"] for p in page.posts)
        last = page.cursor
    return taken, last


def test_first_run_takes_every_post_once_oldest_first(sim: MattermostSimulator):
    stamps = [1_000_000 + i * 10 for i in range(1234)]
    _, channel = channel_with(sim, stamps)
    taken, _ = walk_all(sim, channel, Cursor.start_at(0))
    assert len(taken) == 1234 and len(set(taken)) == 1234
    created = [sim.state.posts[i]["create_at"] for i in taken]
    assert created == sorted(created)
    assert not any("since" in r.query for r in sim.requests)


def test_ties_on_create_at_across_page_boundaries(sim: MattermostSimulator):
    # clusters of 7 posts per millisecond, pages of 5: every page boundary splits a cluster
    stamps = [2_000_000 + (i // 7) for i in range(300)]
    _, channel = channel_with(sim, stamps)
    taken, _ = walk_all(sim, channel, Cursor.start_at(0), per_page=5)
    assert Counter(taken).most_common(1)[0][1] == 1
    assert set(taken) == set(sim.state.posts)


def test_a_millisecond_holding_more_than_a_page(sim: MattermostSimulator):
    stamps = [3_000_000] * 3 + [3_000_001] * 23 + [3_000_002] * 4
    _, channel = channel_with(sim, stamps)
    taken, _ = walk_all(sim, channel, Cursor.start_at(0), per_page=5)
    assert sorted(taken) == sorted(sim.state.posts) and len(taken) == 30


def test_resume_takes_only_new_posts_including_same_millisecond(sim: MattermostSimulator):
    user, channel = channel_with(sim, [4_000_000 + i for i in range(50)] + [4_000_049])
    first, cursor = walk_all(sim, channel, Cursor.start_at(0), per_page=20)
    assert len(first) == 51
    late = [sim.add_post(channel, user, "late tie", create_at=4_000_049)["id"]]
    late += [
        sim.add_post(channel, user, f"new {i}", create_at=4_000_100 + i)["id"] for i in range(30)
    ]
    second, _ = walk_all(sim, channel, Cursor.from_dict(cursor.to_dict()), per_page=20)
    assert sorted(second) == sorted(late)


def test_start_timestamp_is_inclusive_and_found_by_bisection(sim: MattermostSimulator):
    before, after, per_page = 20_000, 600, 50
    stamps = [5_000_000_000 + i * 1000 for i in range(before + after)]
    _, channel = channel_with(sim, stamps)
    start_seconds = (5_000_000_000 + before * 1000) // 1000
    taken, _ = walk_all(sim, channel, Cursor.start_at(start_seconds), per_page=per_page)
    assert len(taken) == after
    assert min(sim.state.posts[i]["create_at"] for i in taken) == start_seconds * 1000
    # reading the pages from the start on costs after/per_page + 1 requests; finding the start
    # costs about 2*log2 of that, whatever lies before it (reading it: before/per_page = 400)
    reading = after // per_page + 1
    assert len(sim.requests) <= reading + 2 * math.ceil(math.log2(reading)) + 2


def test_deleted_posts_are_not_listed_and_do_not_shift_pages(sim: MattermostSimulator):
    _user, channel = channel_with(sim, [6_000_000 + i for i in range(100)])
    client = make_client(sim, TOKEN)
    walker = walk_posts(client, channel["id"], Cursor.start_at(0), per_page=10)
    taken = [p["id"] for p in next(walker).posts]
    for post_id in list(sim.state.posts)[10:15]:
        sim.delete_post(post_id)  # deleted while the walk is under way
    for page in walker:
        taken.extend(p["id"] for p in page.posts)
    assert set(taken) == {p["id"] for p in sim.live_posts(channel["id"])} | set(
        list(sim.state.posts)[:10]
    )


def test_purged_anchor_does_not_stall_the_channel(sim: MattermostSimulator):
    user, channel = channel_with(sim, [7_000_000 + i for i in range(40)])
    _, cursor = walk_all(sim, channel, Cursor.start_at(0), per_page=10)
    sim.purge_post(cursor.anchor_id)
    new = [
        sim.add_post(channel, user, f"after purge {i}", create_at=7_000_100 + i)["id"]
        for i in range(5)
    ]
    taken, _ = walk_all(sim, channel, cursor, per_page=10, last_post_at=channel["last_post_at"])
    assert sorted(taken) == sorted(new)


def test_empty_channel_yields_nothing_and_keeps_its_start(sim: MattermostSimulator):
    _, channel = channel_with(sim, [])
    taken, cursor = walk_all(sim, channel, Cursor.start_at(100))
    assert taken == [] and cursor == Cursor.start_at(100)


def test_a_millisecond_reordered_while_paged_is_taken_exactly(sim: MattermostSimulator):
    """Tied posts change places whenever one is updated (no Id tie-break on the server): the
    walk must still take each post of a millisecond larger than a page exactly once."""
    stamps = [4_000_000] * 2 + [4_000_001] * 23 + [4_000_002] * 3
    _, channel = channel_with(sim, stamps)
    tied = [p["id"] for p in sim.state.posts.values() if p["create_at"] == 4_000_001]
    chooser = random.Random(5)

    def someone_reacts(path: str, query: dict) -> None:
        if path.endswith("/posts"):
            for post_id in chooser.sample(tied, 4):
                sim.react(post_id)

    sim.on_request = someone_reacts
    for trial in range(5):
        taken, _ = walk_all(sim, channel, Cursor.start_at(0), per_page=5)
        assert Counter(taken).most_common(1)[0][1] == 1, f"trial {trial}: a post twice"
        assert set(taken) == set(sim.state.posts), f"trial {trial}: a post skipped"


def test_the_walk_asks_for_no_thread_context(sim: MattermostSimulator):
    """Every listing the walk reads says skipFetchThreads=true: else the server adds every post
    of every thread a page touches (post_store.go getPostsAround), which the walk discards."""
    user, channel = channel_with(sim, [6_000_000 + i for i in range(12)])
    root = next(iter(sim.state.posts.values()))
    for i in range(30):
        sim.add_post(channel, user, f"reply {i}", root=root, create_at=6_000_100 + i)
    walk_all(sim, channel, Cursor.start_at(0), per_page=5)
    listings = [r for r in sim.requests if r.path.endswith("/posts")]
    assert listings and all(r.query.get("skipFetchThreads") == ["true"] for r in listings)
