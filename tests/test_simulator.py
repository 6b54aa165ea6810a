"""The simulator must be no kinder than the real server (docs/mattermost-api.md)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.mattermost_sim import AppError, MattermostSimulator


@pytest.fixture
def world(sim: MattermostSimulator):
    me = sim.add_user("me", token="tok")
    channel = sim.add_channel(sim.add_team("t"), "c", members=[me])
    posts = [sim.add_post(channel, me, f"m{i}", create_at=1000 + i // 2) for i in range(10)]
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4", headers={"Authorization": "Bearer tok"}
    )
    return sim, channel, posts, client


def listing(client, channel, **params):
    return client.get(f"/channels/{channel['id']}/posts", params=params)


def test_after_and_before_are_strict_on_create_at(world):
    sim, channel, posts, client = world
    anchor = posts[4]  # create_at 1002, shared with posts[5]
    after = listing(client, channel, after=anchor["id"]).json()
    assert {sim.state.posts[i]["create_at"] for i in after["order"]} == {1003, 1004}
    before = listing(client, channel, before=anchor["id"]).json()
    assert {sim.state.posts[i]["create_at"] for i in before["order"]} == {1000, 1001}
    assert posts[5]["id"] not in after["order"] + before["order"]  # the tie is skipped both ways


def test_after_pages_ascending_but_answers_newest_first(world):
    sim, channel, posts, client = world
    page0 = listing(client, channel, after=posts[0]["id"], per_page=3, page=0).json()["order"]
    stamps = [sim.state.posts[i]["create_at"] for i in page0]
    assert stamps == sorted(stamps, reverse=True) and max(stamps) <= 1002


def test_unknown_anchor_is_an_empty_list_and_bad_id_a_400(world):
    _, channel, _, client = world
    empty = listing(client, channel, after="z" * 26)
    assert empty.status_code == 200 and empty.json()["order"] == []
    bad = listing(client, channel, after="not-an-id")
    assert bad.status_code == 400 and bad.json()["id"] == "api.context.invalid_url_param.app_error"
    assert bad.json()["request_id"] == bad.headers["X-Request-ID"]


def test_deleted_posts_only_in_since_and_include_deleted_needs_admin(world):
    sim, channel, posts, client = world
    sim.edit_post(posts[1]["id"], "edited")
    sim.delete_post(posts[2]["id"])
    live = listing(client, channel, per_page=200).json()["order"]
    assert posts[2]["id"] not in live and len(live) == 9
    since = listing(client, channel, since=1).json()
    rows = [since["posts"][i] for i in since["order"]]
    assert any(r["original_id"] == posts[1]["id"] for r in rows)  # edit-history row
    deleted = next(r for r in rows if r["id"] == posts[2]["id"])
    assert deleted["delete_at"] and deleted["message"] == "" and deleted["metadata"] == {}
    assert listing(client, channel, include_deleted="true").status_code == 403


def test_etag_and_default_page_size(world):
    _, channel, _, client = world
    first = listing(client, channel)
    assert len(first.json()["order"]) == 10
    again = client.get(
        f"/channels/{channel['id']}/posts", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304
    assert "ETag" not in listing(client, channel, since=1).headers


def test_token_in_query_string_is_refused(world):
    _, channel, _, _ = world
    response = httpx.get(
        f"http://127.0.0.1:{world[0].port}/api/v4/channels/{channel['id']}",
        params={"access_token": "tok"},
    )
    assert (
        response.status_code == 401
        and response.json()["id"] == "api.context.token_provided.app_error"
    )


def test_rate_limit_answers_plain_text_with_relative_reset(world):
    sim, channel, _, client = world
    sim.faults.rate_limit_per_sec, sim.faults.rate_limit_burst = 1, 1
    statuses = [listing(client, channel) for _ in range(4)]
    limited = next(r for r in statuses if r.status_code == 429)
    assert limited.text == "limit exceeded\n" and int(limited.headers["Retry-After"]) >= 1
    assert int(limited.headers["X-RateLimit-Reset"]) < 1000  # relative seconds, not an epoch


def test_a_post_holds_ten_files_and_eleven_are_refused(world):
    """Like Post.IsValid (PostFileidsMaxRunes = 300 runes of JSON ids): ten files are kept,
    all served back; an eleventh makes the post invalid, it is not cut to ten."""
    sim, channel, _, client = world
    me = next(user for user in sim.state.users.values() if user["username"] == "me")
    infos = [sim.add_file(me, f"f{i}.txt", f"data {i}".encode(), "text/plain") for i in range(11)]
    post = sim.add_post(channel, me, "ten", files=infos[:10])
    served = client.get(f"/posts/{post['id']}").json()
    assert served["file_ids"] == [f["id"] for f in infos[:10]]
    assert [f["name"] for f in served["metadata"]["files"]] == [f"f{i}.txt" for i in range(10)]
    with pytest.raises(AppError) as refused:
        sim.add_post(channel, me, "eleven", files=infos)
    assert refused.value.status == 400
    assert refused.value.error_id == "model.post.is_valid.file_ids.app_error"


def test_rate_limit_headers_follow_throttled_gcra(world):
    """throttled's GCRA (rate.go): Limit = burst + 1, Remaining = requests that would pass
    now, Reset = seconds until the bucket is full again, Retry-After = until one may pass."""
    sim, channel, _, client = world
    sim.faults.rate_limit_per_sec, sim.faults.rate_limit_burst = 0.5, 3  # one request per 2 s
    answers = [listing(client, channel) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Limit"] for r in answers] == ["4"] * 5
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in answers] == [3, 2, 1, 0, 0]
    # Reset counts to a full bucket: 2 s per request spent, not 2 s to the next one
    assert [int(r.headers["X-RateLimit-Reset"]) for r in answers] == [2, 4, 6, 8, 8]
    assert "Retry-After" not in answers[0].headers
    assert answers[4].headers["Retry-After"] == "2"
    # a retry before Retry-After is refused again, and does not spend anything
    again = listing(client, channel)
    assert again.status_code == 429 and again.headers["X-RateLimit-Remaining"] == "0"


def test_rate_limit_pacing_on_remaining_costs_the_full_reset(world):
    """A client that waits X-RateLimit-Reset when Remaining runs out finds the bucket full:
    it gets Limit requests through at once, never a 429."""
    import time

    sim, channel, _, client = world
    sim.faults.rate_limit_per_sec, sim.faults.rate_limit_burst = 2, 3
    spent = [listing(client, channel) for _ in range(4)]
    assert spent[-1].headers["X-RateLimit-Remaining"] == "0"
    time.sleep(int(spent[-1].headers["X-RateLimit-Reset"]))
    assert [listing(client, channel).status_code for _ in range(4)] == [200] * 4


def test_injected_429s_hold_until_their_wait_and_some_lack_retry_after(world):
    import time

    sim, channel, _, client = world
    sim.faults.throttle_rate, sim.faults.retry_after = 1.0, 1
    first = listing(client, channel)
    assert first.status_code == 429 and first.headers["X-RateLimit-Reset"] == "1"
    sim.faults.throttle_rate = 0.0
    # retried at once: still refused, whatever the retry's own fault roll
    early = [listing(client, channel) for _ in range(20)]
    assert {r.status_code for r in early} == {429}
    with_retry_after = [r for r in [first, *early] if "Retry-After" in r.headers]
    assert 0 < len(with_retry_after) < 21  # some carry only X-RateLimit-Reset
    time.sleep(1.05)
    assert listing(client, channel).status_code == 200


def test_5xx_also_come_as_the_reverse_proxy_html_pages(world):
    sim, channel, _, client = world
    sim.faults.error_rate = 1.0
    answers = [listing(client, channel) for _ in range(40)]
    by_status = {r.status_code: r for r in answers}
    assert set(by_status) == {500, 502, 503, 504}
    for status in (502, 504):
        page = by_status[status]
        assert page.headers["Content-Type"] == "text/html"
        assert page.text.startswith("<html>") and f"<h1>{status} " in page.text
        assert "X-Request-ID" not in page.headers
    assert by_status[503].json()["status_code"] == 503  # the server's own: an AppError


def test_an_old_create_at_is_kept_and_counted_but_does_not_move_last_post_at(world):
    """post.go PreSave keeps a set create_at and sets update_at to it; SaveMultiple adds one
    to total_msg_count (not for join/leave messages) and takes GREATEST for last_post_at."""
    sim, channel, posts, client = world
    me = sim.state.users[posts[0]["user_id"]]
    before = client.get(f"/channels/{channel['id']}").json()
    old = sim.add_post(channel, me, "imported", create_at=500)
    sim.add_post(channel, me, "joined", type="system_join_channel")
    after = client.get(f"/channels/{channel['id']}").json()
    assert after["total_msg_count"] == before["total_msg_count"] + 1
    assert after["total_msg_count_root"] == before["total_msg_count_root"] + 1
    assert after["last_post_at"] > before["last_post_at"]  # the join message, not the old one
    sim.add_post(channel, me, "imported too", create_at=600)
    unmoved = client.get(f"/channels/{channel['id']}").json()["last_post_at"]
    assert unmoved == after["last_post_at"]
    shown = client.get(f"/posts/{old['id']}").json()
    assert shown["create_at"] == shown["update_at"] == 500
    since = listing(client, channel, since=after["last_post_at"] - 1).json()["order"]
    assert old["id"] not in since  # behind a `since` watermark: never listed by it
    reply = sim.add_post(channel, me, "old reply", root=posts[9], create_at=700)
    assert sim.state.posts[posts[9]["id"]]["update_at"] == reply["create_at"] == 700


def test_deleting_a_post_deletes_its_files_not_its_count(world):
    sim, channel, posts, client = world
    me = sim.state.users[posts[0]["user_id"]]
    info = sim.add_file(me, "x.txt", b"data", "text/plain")
    post = sim.add_post(channel, me, "with a file", files=[info])
    assert client.get(f"/files/{info['id']}").content == b"data"
    count = client.get(f"/channels/{channel['id']}").json()["total_msg_count"]
    sim.delete_post(post["id"])
    for path in (f"/files/{info['id']}", f"/files/{info['id']}/info"):
        gone = client.get(path)
        assert gone.status_code == 404 and gone.json()["id"] == "app.file_info.get.app_error"
    assert client.get(f"/channels/{channel['id']}").json()["total_msg_count"] == count


def test_archived_channels_readable_or_refused(world):
    sim, channel, posts, client = world
    me = sim.state.users[posts[0]["user_id"]]
    sim.archive_channel(channel["id"], me)
    shown = client.get(f"/channels/{channel['id']}").json()
    assert shown["delete_at"] > 0  # the channel itself is still answered
    rows = listing(client, channel, per_page=200).json()
    assert len(rows["order"]) == 11  # readable (the default), with the archive message
    assert rows["posts"][rows["order"][0]]["type"] == "system_channel_deleted"
    sim.view_archived_channels = False
    refused = listing(client, channel)
    assert refused.status_code == 403
    assert refused.json()["id"] == "api.user.view_archived_channels.get_posts_for_channel.app_error"


def test_users_the_account_may_not_see(world):
    sim, _, posts, client = world
    me = sim.state.users[posts[0]["user_id"]]
    other = sim.add_user("hidden")
    sim.hide_user(other["id"])
    refused = client.get(f"/users/{other['id']}")
    assert (
        refused.status_code == 403 and refused.json()["id"] == "api.context.permissions.app_error"
    )
    found = client.post("/users/ids", json=[me["id"], other["id"]]).json()
    assert [user["id"] for user in found] == [me["id"]]  # left out, without an error


def test_a_post_can_be_created_through_the_api_as_mattermost_does(world):
    """api4/post.go createPost: what `python -m tests.mattermost_sim --demo` tells a user to call, to give
    `live` something new (tests/demo.py)."""
    sim, channel, _, client = world
    created = client.post("/posts", json={"channel_id": channel["id"], "message": "fresh"})
    assert created.status_code == 200, created.text
    post = created.json()
    assert (post["message"], post["channel_id"], post["root_id"]) == ("fresh", channel["id"], "")
    assert listing(client, channel).json()["order"][0] == post["id"]
    reply = client.post(
        "/posts", json={"channel_id": channel["id"], "message": "re", "root_id": post["id"]}
    ).json()
    assert reply["root_id"] == post["id"]
    outsider = sim.add_channel(sim.add_team("other"), "closed", type="P", members=[])
    refused = client.post("/posts", json={"channel_id": outsider["id"], "message": "x"})
    assert refused.status_code == 403
    assert client.post("/posts", json={"channel_id": channel["id"]}).status_code == 400


def test_the_demo_gives_the_simulator_new_posts(sim: MattermostSimulator):
    import subprocess

    from tests.demo import add_posts
    from tests.mattermost_sim import post_command, seed_demo

    demo = seed_demo(sim, big=10)
    before = len(sim.live_posts(demo.channels[0]["id"]))
    add_posts(sim, demo, 3)
    assert len(sim.live_posts(demo.channels[0]["id"])) == before + 3
    done = subprocess.run(post_command(sim, demo), shell=True, capture_output=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["message"] == "a new indicator"
    assert len(sim.live_posts(demo.channels[0]["id"])) == before + 4
