"""The simulator serves integration posts as the server stores them (tests/mattermost_webhooks.py
cites the server files): props, attachments rewritten, priority, splits, attachment edits."""

from __future__ import annotations

import httpx
import pytest

from tests.mattermost_sim import MattermostSimulator
from tests.mattermost_webhooks import (
    MAX_POST_SIZE,
    add_incoming_webhook,
    go_value,
    post_webhook,
    update_post,
)


@pytest.fixture
def world(sim: MattermostSimulator):
    me = sim.add_user("soc-admin", token="tok")
    channel = sim.add_channel(sim.add_team("t"), "alerts", members=[me])
    hook = add_incoming_webhook(sim, channel, me, "MISP feed", username="misp-bot")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4", headers={"Authorization": "Bearer tok"}
    )
    return sim, me, channel, hook, client


def served(client: httpx.Client, channel: dict, post_id: str) -> dict:
    answer = client.get(f"/channels/{channel['id']}/posts", params={"per_page": 200}).json()
    return answer["posts"][post_id]


def test_a_webhook_post_is_its_creator_s_with_the_webhook_s_props(world):
    sim, me, channel, hook, client = world
    (post,) = post_webhook(
        sim,
        hook,
        "See <https://misp.example.org/e/1|event 1> <!channel>",
        props={"card": "x", "from_webhook": "false", "override_username": "spoof"},
        username_override=True,
        icon_override=True,
        icon_url="https://misp.example.org/i.png",
    )
    shown = served(client, channel, post["id"])
    assert shown["user_id"] == me["id"] and shown["type"] == ""
    assert shown["message"] == "See [event 1](https://misp.example.org/e/1) @channel"
    assert shown["props"] == {
        "from_webhook": "true",
        "override_username": "misp-bot",
        "override_icon_url": "https://misp.example.org/i.png",
        "webhook_display_name": "MISP feed",
        "card": "x",
    }


def test_without_the_override_settings_no_name_or_icon_is_stored(world):
    sim, _, channel, hook, client = world
    (post,) = post_webhook(sim, hook, "hi", username="x", icon_url="https://i.example/i.png")
    assert served(client, channel, post["id"])["props"] == {
        "from_webhook": "true",
        "webhook_display_name": "MISP feed",
    }
    bare = add_incoming_webhook(sim, channel, sim.state.users[hook["user_id"]], "Bare")
    (post,) = post_webhook(sim, bare, "hi", username_override=True)
    assert served(client, channel, post["id"])["props"]["override_username"] == "webhook"


def test_attachments_are_stored_as_the_server_rewrites_them(world):
    sim, me, channel, hook, client = world
    attachment = {
        "pretext": "From <https://misp.example.org|MISP> for <@" + me["id"] + ">",
        "title": "Event <!here>",
        "text": "<https://x.example/a|a> and <https://x.example/b|b>",
        "fields": [
            {"title": "Level", "value": 3, "short": True},
            None,
            {"title": "Big", "value": 1000000},
            {"title": "Link", "value": "<https://v.example|v>"},
            {"title": "Empty", "value": None},
        ],
        "unknown_key": "dropped",
        "actions": [],
    }
    (post,) = post_webhook(sim, hook, attachments=[None, attachment])
    shown = served(client, channel, post["id"])
    assert shown["type"] == "slack_attachment" and shown["message"] == ""
    (stored,) = shown["props"]["attachments"]
    assert stored == {
        "id": 0,
        "fallback": "",
        "color": "",
        "pretext": "From [MISP](https://misp.example.org) for @soc-admin",
        "author_name": "",
        "author_link": "",
        "author_icon": "",
        "title": "Event @here",
        "title_link": "",
        "text": "[a](https://x.example/a) and [b](https://x.example/b)",
        "fields": [
            {"title": "Level", "value": "3", "short": True},
            {"title": "Big", "value": "1e+06", "short": False},
            {"title": "Link", "value": "[v](https://v.example)", "short": False},
            {"title": "Empty", "value": None, "short": False},
        ],
        "image_url": "",
        "thumb_url": "",
        "footer": "",
        "footer_icon": "",
        "ts": None,
    }


def test_go_prints_values_as_fmt_v_does():
    assert [go_value(v) for v in (3, 2.5, 1e6, 123456, 1e-5, True, [1, "a"], {"b": 1})] == [
        "3",
        "2.5",
        "1e+06",
        "123456",
        "1e-05",
        "true",
        "[1 a]",
        "map[b:1]",
    ]


def test_a_priority_is_served_in_the_metadata(world):
    sim, _, channel, hook, client = world
    priority = {"priority": "urgent", "requested_ack": True}
    (post,) = post_webhook(sim, hook, "alert", priority=priority)
    assert served(client, channel, post["id"])["metadata"]["priority"] == priority
    with pytest.raises(ValueError, match="priority"):
        post_webhook(sim, hook, "alert", priority={"requested_ack": True})


def test_a_long_text_is_split_and_the_attachments_go_on_the_last_post(world):
    sim, _, channel, hook, client = world
    posts = post_webhook(sim, hook, "x" * (MAX_POST_SIZE + 5), attachments=[{"text": "t"}])
    assert [len(p["message"]) for p in posts] == [MAX_POST_SIZE, 5]
    assert "attachments" not in served(client, channel, posts[0]["id"])["props"]
    assert served(client, channel, posts[1]["id"])["props"]["attachments"][0]["text"] == "t"


def test_an_attachment_edit_sets_edit_at_and_keeps_a_history_row(world):
    sim, _, channel, hook, client = world
    (post,) = post_webhook(sim, hook, attachments=[{"text": "v1"}])
    same = update_post(sim, post["id"], attachments=post["props"]["attachments"])
    assert same["edit_at"] == 0
    edited = update_post(
        sim, post["id"], attachments=[{**post["props"]["attachments"][0], "text": "v2"}]
    )
    assert edited["edit_at"] == edited["update_at"] > edited["create_at"]
    since = client.get(f"/channels/{channel['id']}/posts", params={"since": 1}).json()
    history = [p for p in since["posts"].values() if p["original_id"] == post["id"]]
    assert len(history) == 2 and {h["delete_at"] > 0 for h in history} == {True}
