"""Incremental extraction across runs: nothing lost, nothing duplicated, edits and deletions
followed, against everything the simulator (the real server's behaviour) does."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.pipeline.new_posts import BATCH_POSTS
from mattermost_connector.state import StateStore
from mattermost_connector.stix import channel_id, message_id
from tests.checks import (
    assert_valid_stix,
    delivered_messages,
    objects_by_id,
    undefined_refs,
)
from tests.mattermost_sim import MattermostSimulator
from tests.support import World, report_of


@pytest.fixture
def world(prefect_api: str, sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def test_5000_first_run_then_10000_new_posts_exactly_once(world: World):
    channel = world.channel("big")
    world.populate(channel, 5000)
    world.configure([channel])
    (report,) = world.sync()
    assert report["posts"] == 5000
    first = world.deliveries(channel, world.bundles())
    assert len(first) == 5000 and set(first.values()) == {1}
    world.populate(channel, 10_000)
    (report,) = world.sync()
    assert report["posts"] == 10_000
    counts = world.deliveries(channel, world.bundles())
    assert len(counts) == 15_000 and set(counts.values()) == {1}
    assert world.assert_complete(channel) == 15_000
    assert not any("since" in r.query and r.query["since"] != ["0"] for r in world.sim.requests[:5])
    # every root was delivered before or with its replies, even those in the batch being
    # delivered while the next one was read: no root was fetched on its own
    assert not [r.path for r in world.sim.requests if r.path.startswith("/api/v4/posts/")]


def test_a_root_in_the_batch_still_loading_is_not_fetched_again(world: World, monkeypatch):
    """Three batches are in flight: while batch 1 is still being recorded, batch 3 is read.
    A reply there to a root of batch 1 must take that root as delivered (it is, before batch
    3 is loaded), not fetch and deliver it again."""
    from mattermost_connector.pipeline import loading

    channel = world.channel("long-thread")
    first = world.populate(channel, 1000)  # all within batch 1
    world.populate(channel, 2 * BATCH_POSTS)  # the rest of batch 1, batch 2, batch 3
    root = next(post for post in first if not post["root_id"])
    world.clock += 7
    reply = world.sim.add_post(channel, world.authors[1], "late", root=root, create_at=world.clock)
    record = loading.record

    def slowly_for_batch_one(services, run, bundle) -> None:
        if any(post["id"] == root["id"] for post in bundle.posts):
            time.sleep(2)  # batch 1 still loading while batch 3 is read
        record(services, run, bundle)

    monkeypatch.setattr(loading, "record", slowly_for_batch_one)
    world.configure([channel])
    (report,) = world.sync()
    assert report["status"] == "completed"
    assert not [r.path for r in world.sim.requests if r.path.startswith("/api/v4/posts/")]
    context = world.context(channel)
    counts = world.deliveries(channel, world.bundles())
    assert counts[root["id"]] == 1
    links = {
        (o["source_ref"], o["target_ref"])
        for b in world.bundles()
        for o in b["objects"]
        if o["type"] == "relationship"
    }
    assert (message_id(context, reply["id"]), message_id(context, root["id"])) in links


def test_posts_created_during_a_run_are_taken_by_it_or_the_next(world: World):
    channel = world.channel("busy")
    world.populate(channel, 1200)
    world.configure([channel])
    added: list[str] = []

    def write_while_reading(path: str, query: dict) -> None:
        if path.endswith("/posts") and "after" in query and len(added) < 40:
            now = world.sim.now()
            for _ in range(3):  # sharing one millisecond
                added.append(
                    world.sim.add_post(
                        channel, world.authors[0], f"live {len(added)}", create_at=now
                    )["id"]
                )

    world.sim.on_request = write_while_reading
    world.sync()
    world.sim.on_request = None
    world.sync()
    counts = world.deliveries(channel, world.bundles())
    assert set(added) <= set(counts)
    assert len(counts) == 1200 + len(added) and set(counts.values()) == {1}


def test_edits_deletions_and_reactions(world: World):
    channel = world.channel("edits")
    posts = world.populate(channel, 300)
    world.configure([channel])
    world.sync()
    sim = world.sim
    roots = [p for p in posts if not p["root_id"] and sim.state.replies.get(p["id"])]
    edited = [p for p in posts if p["root_id"] == ""][:5]
    for post in edited:
        sim.edit_post(post["id"], post["message"] + " (edited: actually benign)")
    doomed_root = next(r for r in roots if r not in edited)
    doomed_replies = [sim.state.posts[i] for i in sim.state.replies[doomed_root["id"]]]
    kept_text = {p["id"]: p["message"] for p in [doomed_root, *doomed_replies]}
    sim.delete_post(doomed_root["id"])
    for post in posts[100:110]:
        sim.react(post["id"])  # bumps update_at, changes nothing delivered
    (report,) = world.sync()
    assert (report["posts"], report["updated"], report["deleted"]) == (
        0,
        len(edited),
        1 + len(doomed_replies),
    )
    latest = world.bundles(latest_run_only=True)
    redelivered = world.deliveries(channel, latest)
    assert set(redelivered) == {p["id"] for p in edited} | set(kept_text)
    objects = objects_by_id(world.bundles())
    context = world.context(channel)
    for post in edited:
        assert objects[message_id(context, post["id"])]["content"].endswith(
            "(edited: actually benign)"
        )
    for post_id, text in kept_text.items():
        obj = objects[message_id(context, post_id)]
        assert obj["x_opencti_labels"] == ["deleted"] and obj["content"] == text
    history = [p for p in sim.state.posts.values() if p["original_id"]]
    assert history and not any(message_id(context, h["id"]) in objects for h in history)
    assert_valid_stix(latest)
    (report,) = world.sync()  # nothing changed since: nothing re-sent
    assert (report["posts"], report["updated"], report["deleted"]) == (0, 0, 0)
    assert world.deliveries(channel, world.bundles(latest_run_only=True)) == Counter()


def test_since_cap_falls_back_to_a_complete_check(world: World):
    channel = world.channel("storm")
    posts = world.populate(channel, 1500)
    world.configure([channel])
    world.sync()
    sim = world.sim
    for post in posts[:1100]:  # more changes than `since` returns
        sim.edit_post(post["id"], "rewritten " + post["id"])
    gone = [p for p in posts[1200:1300] if p["root_id"]][:3]
    for post in gone:
        sim.delete_post(post["id"])
    purged = next(p for p in posts[1300:1400] if p["root_id"])
    purged_text = purged["message"]
    sim.purge_post(purged["id"])
    (report,) = world.sync()
    assert report["updated"] == 1100 and report["deleted"] == len(gone) + 1
    objects = objects_by_id(world.bundles())
    context = world.context(channel)
    assert all(
        objects[message_id(context, p["id"])]["content"] == "rewritten " + p["id"]
        for p in posts[:1100]
    )
    purged_obj = objects[message_id(context, purged["id"])]
    assert purged_obj["x_opencti_labels"] == ["deleted"] and purged_obj["content"] == purged_text
    assert world.assert_complete(channel) == 1500 - len(gone) - 1


def test_deleted_posts_can_be_ignored(world: World):
    channel = world.channel("quiet")
    posts = world.populate(channel, 50)
    world.configure([channel], MATTERMOST_DELETED_POSTS="ignore")
    world.sync()
    leaf = next(p for p in posts if p["root_id"])
    world.sim.delete_post(leaf["id"])
    (report,) = world.sync()
    assert report["deleted"] == 1 and report["updated"] == 0
    assert world.deliveries(channel, world.bundles(latest_run_only=True)) == Counter()
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    assert store.delivered([leaf["id"]])[leaf["id"]]["delete_at"] > 0


def test_reply_to_a_root_before_the_start_brings_the_root_once(world: World):
    channel = world.channel("threads")
    old_root = world.sim.add_post(
        channel, world.authors[0], "old root", create_at=1_600_000_000_000
    )
    world.sim.add_post(
        channel, world.authors[1], "old reply", root=old_root, create_at=1_600_000_000_500
    )
    reply = world.sim.add_post(
        channel, world.authors[1], "new reply", root=old_root, create_at=1_700_000_000_000
    )
    world.configure([channel], MATTERMOST_START_TIMESTAMP="1650000000")
    (report,) = world.sync()
    assert report["posts"] == 2  # the reply and its root, fetched for it
    context = world.context(channel)
    objects = objects_by_id(world.bundles())
    links = {
        (o["source_ref"], o["target_ref"]) for o in objects.values() if o["type"] == "relationship"
    }
    assert (message_id(context, reply["id"]), message_id(context, old_root["id"])) in links
    assert objects[message_id(context, old_root["id"])]["content"] == "old root"
    assert [r.path for r in world.sim.requests].count(f"/api/v4/posts/{old_root['id']}") == 1
    world.sim.add_post(
        channel, world.authors[2], "later reply", root=old_root, create_at=1_700_000_100_000
    )
    (report,) = world.sync()
    assert report["posts"] == 1
    assert [r.path for r in world.sim.requests].count(f"/api/v4/posts/{old_root['id']}") == 1


def test_unfetchable_root_leaves_no_dangling_relationship(world: World):
    channel = world.channel("orphans")
    root = world.sim.add_post(channel, world.authors[0], "root", create_at=1_600_000_000_000)
    reply = world.sim.add_post(
        channel, world.authors[1], "reply", root=root, create_at=1_700_000_000_000
    )
    world.sim.delete_post(root["id"])  # deletes the reply too: re-create a live reply
    world.sim.state.posts[reply["id"]].update(delete_at=0)
    world.configure([channel], MATTERMOST_START_TIMESTAMP="1650000000")
    world.sync()
    (bundle,) = world.bundles()
    assert_valid_stix([bundle])
    assert undefined_refs(bundle) == set()
    context = world.context(channel)
    links = {
        (o["source_ref"], o["target_ref"]) for o in bundle["objects"] if o["type"] == "relationship"
    }
    # the reply keeps its channel, and only its channel: its root is nowhere to point at
    assert links == {(message_id(context, reply["id"]), channel_id(context))}


def test_system_messages_are_skipped_unless_asked(world: World):
    channel = world.channel("system")
    world.sim.add_post(
        channel,
        world.authors[0],
        "alice joined",
        type="system_join_channel",
        create_at=1_700_000_000_000,
    )
    for index in range(3):
        world.sim.add_post(
            channel, world.authors[1], f"msg {index}", create_at=1_700_000_001_000 + index
        )
    world.configure([channel])
    (report,) = world.sync()
    assert (report["posts"], report["skipped"]) == (3, 1)
    only_system = world.channel("only-system")
    for index in range(3):
        world.sim.add_post(
            only_system,
            world.authors[0],
            "joined",
            type="system_join_channel",
            create_at=1_700_000_000_000 + index,
        )
    world.configure([only_system])
    (report,) = world.sync()
    assert (report["posts"], report["skipped"]) == (0, 3)
    (report,) = world.sync()  # the cursor moved past them
    assert report["skipped"] == 0
    world.configure([channel], MATTERMOST_INCLUDE_SYSTEM_MESSAGES="true")
    world.sim.add_post(channel, world.authors[0], "bob left", type="system_leave_channel")
    (report,) = world.sync()
    assert (report["posts"], report["skipped"]) == (1, 0)


def test_a_channel_added_later_starts_from_the_start_timestamp(world: World):
    """Every post of the second channel is older than the first channel's cursor: a new
    channel starting where the others stand would take none of them."""
    first, second = world.channel("first"), world.channel("second")
    world.populate(second, 30)
    world.populate(first, 30)
    world.configure([first])
    world.sync()
    world.populate(first, 5)
    world.configure([first, second])
    reports = world.sync()
    assert [r["posts"] for r in reports] == [5, 30]
    assert world.assert_complete(second) == 30


def test_direct_and_group_conversations_and_authors(world: World, sim: MattermostSimulator):
    alice, bob, carol = world.authors
    sim.show_email = False
    direct = sim.add_direct_channel(world.reader, alice)
    group = sim.add_channel(
        None,
        "g" * 40,
        type="G",
        members=[world.reader, alice, bob],
        display_name="reader, bob, alice",
    )
    bot = sim.add_user("alertbot", is_bot=True)
    sim.state.members[group["id"]].add(bot["id"])
    sim.deactivate_user(carol["id"])
    sim.state.members[group["id"]].add(carol["id"])
    sim.add_post(direct, alice, "psst")
    for user in (bot, carol, bob):
        sim.add_post(group, user, f"hello from {user['username']}")
    world.configure([direct, group])
    world.sync()
    objects = objects_by_id(world.bundles())
    names = {o["name"] for o in objects.values() if o["type"] == "channel"}
    assert names == {"direct/@alice,@reader", "group/@alice,@bob,@reader"}
    urls = [o["url"] for o in objects.values() if o["type"] == "media-content"]
    assert urls and all("/_redirect/pl/" in url for url in urls)
    identities = {o["name"]: o for o in objects.values() if o["type"] == "identity"}
    assert "bot account" in identities["@alertbot"]["description"]
    assert "deactivated" in identities["@carol"]["description"]
    assert "email" not in identities["@bob"]["description"]  # hidden by the server: not needed


def test_a_faulty_rate_limited_server_loses_nothing(world: World):
    channel = world.channel("flaky")
    world.populate(channel, 2000, files_every=20)
    world.configure([channel])
    faults = world.sim.faults
    faults.error_rate, faults.drop_rate, faults.throttle_rate = 0.10, 0.05, 0.10
    (report,) = world.sync()
    assert report["posts"] == 2000
    assert world.assert_complete(channel) == 2000
    requests = world.sim.requests
    statuses = Counter(r.status for r in requests)
    assert statuses[429] and statuses[0] and (statuses[500] + statuses[502] + statuses[503])
    for index, request in enumerate(requests[:-1]):
        if request.status == 429:  # Retry-After here is 1 s: nothing sooner
            assert requests[index + 1].at - request.at >= 0.95


def test_a_malformed_post_fails_its_channel_in_one_line(world: World):
    from mattermost_prefect.flows.sync import mattermost_sync

    good, bad = world.channel("good"), world.channel("bad")
    world.populate(good, 30)
    posts = world.populate(bad, 30)
    del world.sim.state.posts[posts[7]["id"]]["user_id"]  # what a broken proxy might send
    world.configure([bad, good])
    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    failed, done = report_of(state)
    assert failed["status"] == "failed" and done["status"] == "completed"
    assert failed["error"] == (
        f"GET /channels/{bad['id']}/posts: post '{posts[7]['id']}' has no valid user_id (None)"
    )
    # asking again would return the same post: no request is made twice (the listing that
    # found it, and the check's one-post probe before the run, are different requests)
    listings = [r for r in world.sim.requests if r.path == f"/api/v4/channels/{bad['id']}/posts"]
    asked = [tuple(sorted((k, tuple(v)) for k, v in r.query.items())) for r in listings]
    assert asked and len(set(asked)) == len(asked), asked
    assert [r.status for r in listings] == [200] * len(listings)


def test_a_lease_the_state_store_refuses_fails_that_channel_in_one_line(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    import sqlalchemy.exc

    from mattermost_prefect.flows.sync import mattermost_sync

    refused, fine = world.channel("refused"), world.channel("fine")
    world.populate(refused, 5)
    world.populate(fine, 5)
    world.configure([refused, fine], CONNECTOR_DELIVERY_RETRY_DELAY="0.05")  # budget: 0.35 s
    real = StateStore.try_lease

    def try_lease(self, channel_id: str, holder: str, seconds: float) -> bool:
        if channel_id == refused["id"]:
            raise sqlalchemy.exc.OperationalError("UPDATE channel_leases", {}, Exception("locked"))
        return real(self, channel_id, holder, seconds)

    monkeypatch.setattr(StateStore, "try_lease", try_lease)
    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    failed, done = report_of(state)
    assert failed["error"] == (
        f"channel {refused['id']} not started: the state store refused its lease "
        "(OperationalError: (builtins.Exception) locked)"
    )
    assert done["status"] == "completed" and done["posts"] == 5


def test_renames_and_moves_keep_one_entity_each_and_every_bundle_stands_alone(world: World):
    """A channel renamed then moved to a team that is then renamed, and an author renamed:
    the Channel, the Individual and every earlier post keep the ids first delivered, edits
    and deletions land on them, the new names show; and no bundle of either run refers to
    an object it does not hold, though threads span many bundles."""
    sim, alice = world.sim, world.authors[0]
    channel = world.channel("ops")
    posts = world.populate(channel, 300)
    world.configure([channel], CONNECTOR_BUNDLE_MAX_OBJECTS="40")
    world.sync()
    first = world.context(channel)  # ids as first delivered, before any rename
    first_ids = {o["id"] for b in world.bundles() for o in b["objects"]}
    channel_id, alice_id = channel_stix_id(world.bundles()), identity_of(world.bundles(), "@alice")

    other = sim.add_team("other")
    sim.rename_channel(channel["id"], "ops-renamed")
    sim.move_channel(channel["id"], other)
    sim.rename_team(other["id"], "other-renamed")
    sim.rename_user(alice["id"], "alice2")
    root = next(p for p in posts if not p["root_id"] and p["user_id"] == alice["id"])
    doomed = next(p for p in posts if p["root_id"] and p["id"] != root["id"])
    sim.edit_post(root["id"], "root, edited after the renames")
    sim.delete_post(doomed["id"])
    # created now, as a client's reply is: a reply with an older time would move the root's
    # update_at back before the edit (as the server's SQL does), hiding the edit from `since`
    reply = sim.add_post(channel, alice, "a reply after the renames", root=root)
    world.sync()

    latest = world.bundles(latest_run_only=True)
    assert latest and all(undefined_refs(b) == set() for b in world.bundles())
    assert {channel_stix_id([b]) for b in latest} == {channel_id}
    channels = [o for b in latest for o in b["objects"] if o["type"] == "channel"]
    assert {(c["name"], tuple(c["aliases"])) for c in channels} == {
        ("other-renamed/ops-renamed", ("cti/ops",))
    }
    alice_now = [o for b in latest for o in b["objects"] if o.get("name") == "@alice2"]
    assert alice_now and {o["id"] for o in alice_now} == {alice_id}
    assert alice_now[0]["x_opencti_aliases"] == ["@alice"]
    objects = objects_by_id(world.bundles())
    edited, deleted = (
        objects[message_id(first, root["id"])],
        objects[message_id(first, doomed["id"])],
    )
    assert edited["content"] == "root, edited after the renames"
    assert deleted.get("x_opencti_labels") == ["deleted"]
    new = objects[message_id(first, reply["id"])]
    assert new["x_opencti_created_by_ref"] == alice_id
    links = {
        (o["source_ref"], o["target_ref"]) for o in objects.values() if o["type"] == "relationship"
    }
    assert (new["id"], message_id(first, root["id"])) in links
    assert (new["id"], channel_id) in links
    # nothing but the new reply got an id the first run had not delivered
    delivered_now = {o["id"] for b in latest for o in delivered_messages(b)}
    assert delivered_now - first_ids == {new["id"]}
    assert new["url"].startswith(first.permalink("")[: -len("pl/")])


def channel_stix_id(bundles: list[dict[str, Any]]) -> str:
    (found,) = {o["id"] for b in bundles for o in b["objects"] if o["type"] == "channel"}
    return found


def identity_of(bundles: list[dict[str, Any]], name: str) -> str:
    (found,) = {o["id"] for b in bundles for o in b["objects"] if o.get("name") == name}
    return found
