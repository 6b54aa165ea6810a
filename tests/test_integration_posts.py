"""Integration posts (webhooks, bots): what the analyst sees reaches the Media-Content, an
edit of an attachment is an edit, a deleted one keeps its attachments, odd props never raise."""

from __future__ import annotations

import json

import pytest

from mattermost_connector import integration_posts
from mattermost_connector.changes import deleted_version, delivered_version, stale
from mattermost_connector.config import TLP
from mattermost_connector.integration_posts import render
from mattermost_connector.state import POST_COLUMNS, SCHEMA_VERSION, StateStore, post_values
from mattermost_connector.stix import ChannelContext, iter_bundles, message_objects
from tests.checks import assert_valid_stix
from tests.test_state import store_url  # noqa: F401  (SQLite and PostgreSQL)

CONTEXT = ChannelContext(
    channel_id="c" * 26,
    name="threat-intel/alerts",
    description=None,
    team_name="threat-intel",
    channel_type="O",
    created_ms=1_600_000_000_000,
    server_url="https://chat.example.org",
)
CREATOR = {"id": "u" * 26, "username": "soc-admin", "create_at": 1}
ALERT = {  # as the server stores it (tests/mattermost_webhooks.py process_attachments)
    "id": 0,
    "fallback": "MISP event 4242",
    "color": "danger",
    "pretext": "New event from [MISP](https://misp.example.org)",
    "author_name": "MISP",
    "author_link": "https://misp.example.org",
    "author_icon": "",
    "title": "Event 4242: APT phishing wave",
    "title_link": "https://misp.example.org/events/view/4242",
    "text": "Domains: evil.example, bad.example",
    "fields": [
        {"title": "Threat level", "value": "High", "short": True},
        {"title": "Attributes", "value": "17", "short": True},
    ],
    "image_url": "https://misp.example.org/img/4242.png",
    "thumb_url": "",
    "footer": "MISP feed",
    "footer_icon": "",
    "ts": None,
}
WEBHOOK_POST = {
    "id": "w" * 26,
    "user_id": CREATOR["id"],
    "channel_id": CONTEXT.channel_id,
    "root_id": "",
    "create_at": 1_700_000_000_000,
    "update_at": 1_700_000_000_000,
    "edit_at": 0,
    "delete_at": 0,
    "message": "",
    "type": "slack_attachment",
    "props": {
        "attachments": [ALERT],
        "from_webhook": "true",
        "override_username": "misp-bot",
        "override_icon_url": "https://misp.example.org/icon.png",
        "webhook_display_name": "MISP feed",
    },
    "metadata": {"priority": {"priority": "urgent", "requested_ack": True}},
}


def with_props(**changes) -> dict:
    post = json.loads(json.dumps(WEBHOOK_POST))
    post["props"].update(changes)
    return post


# -- rendering --------------------------------------------------------------------------


def test_the_content_is_each_part_in_display_order():
    shown = render(WEBHOOK_POST, CREATOR)
    assert shown.content == "\n".join(
        [
            "New event from [MISP](https://misp.example.org)",
            "MISP",
            "Event 4242: APT phishing wave",
            "Domains: evil.example, bad.example",
            "Threat level: High",
            "Attributes: 17",
            "MISP feed",
        ]
    )


def test_the_message_comes_first_then_each_attachment_apart():
    second = {"title": "Second", "text": "more", "fields": None}
    post = with_props(attachments=[ALERT, second])
    post["message"] = "Alert batch"
    content = render(post, CREATOR).content
    assert content.startswith("Alert batch\n\nNew event from")
    assert content.endswith("MISP feed\n\nSecond\nmore")


def test_links_become_references_once_each_in_display_order():
    shown = render(WEBHOOK_POST, CREATOR)
    assert [link.url for link in shown.links] == [
        "https://misp.example.org",
        "https://misp.example.org/events/view/4242",
        "https://misp.example.org/img/4242.png",
    ]
    assert shown.links[1].description == "title of attachment 1: Event 4242: APT phishing wave"
    twice = render(with_props(attachments=[ALERT, ALERT]), CREATOR)
    assert [link.url for link in twice.links] == [link.url for link in shown.links]
    references = integration_posts.external_references(shown.links)
    assert references[1] == {
        "source_name": "mattermost-attachment",
        "url": "https://misp.example.org/events/view/4242",
        "description": "title of attachment 1: Event 4242: APT phishing wave",
    }


def test_the_webhook_name_and_the_account_behind_it_are_noted():
    notes = render(WEBHOOK_POST, CREATOR).notes
    assert (
        notes[0]
        == 'shown as "misp-bot", posted by incoming webhook "MISP feed" of the account @soc-admin'
    )
    assert "icon: https://misp.example.org/icon.png" in notes
    bot = {**WEBHOOK_POST, "props": {"from_bot": "true"}, "metadata": {}}
    assert render(bot, CREATOR).notes == ("posted by the bot account @soc-admin",)


def test_the_priority_is_a_label_and_a_note():
    shown = render(WEBHOOK_POST, CREATOR)
    assert shown.labels == ("priority:urgent",)
    assert "priority: urgent" in shown.notes and "acknowledgement requested" in shown.notes
    standard = {**WEBHOOK_POST, "metadata": {"priority": {"priority": ""}}}
    assert render(standard, CREATOR).labels == ()
    important = {**WEBHOOK_POST, "metadata": {"priority": {"priority": "important"}}}
    assert render(important, CREATOR).labels == ("priority:important",)


def test_a_person_s_post_is_its_message_alone():
    post = {"id": "p" * 26, "message": "  hello\n", "props": {"disable_group_highlight": True}}
    assert render(post, CREATOR) == integration_posts.Shown("  hello\n")


def test_values_print_as_the_web_app_does_and_fallback_stands_in_for_nothing_else():
    fields = [{"title": "n", "value": 3.0}, {"title": "ok", "value": True}, None, {"value": 2.5}]
    post = with_props(attachments=[{"fields": fields}, {"fallback": "only this"}])
    assert render(post, CREATOR).content == "n: 3\nok: true\n2.5\n\nonly this"


@pytest.mark.parametrize(
    "props, note",
    [
        ({"attachments": "not a list"}, "props.attachments ignored: a str, not a list"),
        ({"attachments": [1, None]}, "props.attachments[0] ignored: a int"),
        ({"attachments": [{"fields": "x"}]}, "attachment 1.fields ignored: a str, not a list"),
        ({"attachments": [{"fields": ["x"]}]}, "attachment 1.fields[0] ignored: a str"),
        (
            {"attachments": [{"title": "t", "title_link": "javascript:alert(1)"}]},
            "title_link of attachment 1 left out: not an http(s) URL",
        ),
    ],
)
def test_malformed_props_are_named_never_raised(props, note):
    post = {**WEBHOOK_POST, "props": props, "metadata": {}}
    shown = render(post, CREATOR)
    assert any(n.startswith(note) for n in shown.notes), shown.notes
    message, _ = message_objects(post, CONTEXT, CREATOR, [], TLP.AMBER)
    assert note in message["x_opencti_description"]


def test_props_or_priority_of_the_wrong_type_are_named():
    post = {**WEBHOOK_POST, "props": "oops", "metadata": {"priority": "urgent"}}
    shown = render(post, CREATOR)
    assert shown.notes == (
        "props ignored: a str, not an object",
        "metadata.priority ignored: a str",
    )
    assert shown.content == "" and shown.labels == ()


def test_the_attachments_text_and_the_links_are_bounded():
    long = with_props(attachments=[{"text": "x" * 40_000}])
    shown = render(long, CREATOR)
    assert len(shown.content) == integration_posts.ATTACHMENTS_TEXT_MAX
    assert any(
        n.startswith("attachments' text cut to its first 16383 of 40000") for n in shown.notes
    )
    many = with_props(
        attachments=[{"title": f"t{i}", "title_link": f"https://x.example/{i}"} for i in range(30)]
    )
    shown = render(many, CREATOR)
    assert len(shown.links) == integration_posts.LINKS_MAX
    assert "10 more links left out" in shown.notes
    noisy = with_props(attachments=list(range(50)))
    assert len(render(noisy, CREATOR).notes) <= integration_posts.NOTES_MAX + 3


# -- the Media-Content --------------------------------------------------------------------


def test_the_media_content_carries_content_references_label_and_notes():
    message, _ = message_objects(WEBHOOK_POST, CONTEXT, CREATOR, [], TLP.AMBER)
    assert message["content"] == render(WEBHOOK_POST, CREATOR).content
    assert message["title"] == "New event from [MISP](https://misp.example.org)"
    assert message["x_opencti_labels"] == ["priority:urgent"]
    assert [r["url"] for r in message["x_opencti_external_references"]] == [
        "https://misp.example.org",
        "https://misp.example.org/events/view/4242",
        "https://misp.example.org/img/4242.png",
    ]
    description = message["x_opencti_description"].split("; ")
    assert description[0] == "Mattermost message by @soc-admin in threat-intel/alerts"
    assert description[1].startswith('shown as "misp-bot", posted by incoming webhook')
    deleted = {**WEBHOOK_POST, "delete_at": 1_700_000_100_000}
    message, _ = message_objects(deleted, CONTEXT, CREATOR, [], TLP.AMBER)
    assert message["x_opencti_labels"] == ["priority:urgent", "deleted"]


def test_bundles_with_integration_posts_are_valid_stix_and_deterministic():
    reply = {
        **WEBHOOK_POST,
        "id": "r" * 26,
        "root_id": WEBHOOK_POST["id"],
        "create_at": 1_700_000_000_001,
    }
    users = {CREATOR["id"]: CREATOR}
    first = [
        json.loads(p.json)
        for p in iter_bundles(CONTEXT, [WEBHOOK_POST, reply], users, {}, TLP.AMBER)
    ]
    again = [
        json.loads(p.json)
        for p in iter_bundles(CONTEXT, [WEBHOOK_POST, reply], users, {}, TLP.AMBER)
    ]
    assert_valid_stix(first)
    assert [b["objects"] for b in first] == [b["objects"] for b in again]


def test_a_large_integration_reply_with_its_root_stays_within_a_queue_message():
    """A root whose files fill its room leaves REPLY_RESERVE for a reply: the largest
    integration reply (message and attachments' text at their caps, escaped at 6 bytes a
    character, every link) still fits beside its copy."""
    from mattermost_connector.stix import REPLY_RESERVE

    worst = "\x01" * 16_383  # JSON-escaped as \u0001: 6 bytes each
    links = [
        {"title": "t" * 500, "title_link": "https://x.example/" + "a" * 2_000 + str(i)}
        for i in range(20)
    ]
    reply = {
        **WEBHOOK_POST,
        "id": "r" * 26,
        "root_id": "o" * 26,
        "message": worst,
        "props": {**WEBHOOK_POST["props"], "attachments": [{"text": worst * 3}, *links]},
    }
    message, relations = message_objects(reply, CONTEXT, CREATOR, [], TLP.AMBER)
    size = sum(len(json.dumps(o, separators=(",", ":"))) for o in [message, *relations])
    assert size < REPLY_RESERVE - 32 * 1024  # left for the two authors and ten Artifacts


# -- edits and deletions --------------------------------------------------------------------


def _stored(post: dict) -> dict:
    return dict(zip(POST_COLUMNS, post_values(CONTEXT.channel_id, post), strict=True))


def test_an_attachment_edited_without_edit_at_is_an_edit():
    """An integration's PUT /posts/{id} sets edit_at on current servers; older ones, and a
    plugin's update, change the props alone: the digest sees it either way."""
    stored = {WEBHOOK_POST["id"]: _stored(WEBHOOK_POST)}
    reaction = {**WEBHOOK_POST, "update_at": WEBHOOK_POST["update_at"] + 5}
    assert stale([reaction], stored) == []
    edited = with_props(attachments=[{**ALERT, "text": "Domains: evil.example"}])
    edited["update_at"] += 5
    assert stale([edited], stored) == [edited]
    renamed = with_props(webhook_display_name="MISP (prod)")
    assert stale([renamed], stored) == [renamed]
    reprioritised = {**WEBHOOK_POST, "metadata": {"priority": {"priority": "important"}}}
    assert stale([reprioritised], stored) == [reprioritised]


def test_a_post_without_integration_parts_keeps_its_old_digest():
    """Digests stored before integration posts were read are the message's: still equal."""
    plain = {
        **WEBHOOK_POST,
        "props": {"disable_group_highlight": True},
        "metadata": {},
        "message": "hi",
    }
    assert _stored(plain)["message_sha256"] == integration_posts.hashlib.sha256(b"hi").hexdigest()
    assert _stored(plain)["integration"] is None


def test_a_deleted_integration_post_is_delivered_again_with_its_attachments():
    stored = _stored(WEBHOOK_POST)
    gone = {**WEBHOOK_POST, "message": "", "metadata": {}, "delete_at": 1_700_000_200_000}
    (again,) = stale([gone], {WEBHOOK_POST["id"]: stored})
    shown = render(again, CREATOR)
    assert shown == render(WEBHOOK_POST, CREATOR)
    assert render(deleted_version(stored, 5), CREATOR) == shown
    assert render(delivered_version(stored), CREATOR) == shown  # a reply's copy of its root


def test_the_state_store_keeps_the_integration_parts(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.record_posts(CONTEXT.channel_id, [WEBHOOK_POST])
    stored = store.delivered([WEBHOOK_POST["id"]])[WEBHOOK_POST["id"]]
    assert render(delivered_version(stored), CREATOR) == render(WEBHOOK_POST, CREATOR)
    assert stale([WEBHOOK_POST], {WEBHOOK_POST["id"]: stored}) == []


def test_a_v6_store_gains_the_column_keeping_its_rows(store_url):  # noqa: F811
    """A store written before integration posts were read (SQLite and PostgreSQL): its rows
    stay, and read back as posts of their message alone."""
    import sqlalchemy as sa

    columns = (
        "post_id VARCHAR(64) PRIMARY KEY, channel_id VARCHAR(64) NOT NULL, root_id VARCHAR(64),"
        " user_id VARCHAR(64) NOT NULL, create_at BIGINT NOT NULL, update_at BIGINT NOT NULL,"
        " edit_at BIGINT NOT NULL, delete_at BIGINT NOT NULL, message_sha256 VARCHAR(64) NOT NULL,"
        " message TEXT NOT NULL, seen_run INTEGER"
    )
    digest = integration_posts.hashlib.sha256(b"old").hexdigest()
    StateStore(store_url).close()  # every table of the current schema, then back to v6
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE delivered_posts"))
        connection.execute(sa.text(f"CREATE TABLE delivered_posts ({columns})"))
        connection.execute(
            sa.text(
                "INSERT INTO delivered_posts VALUES "
                f"('p', 'c', NULL, 'u', 1, 1, 0, 0, '{digest}', 'old', NULL)"
            )
        )
        connection.execute(sa.text("UPDATE schema_version SET version = 6"))
    engine.dispose()
    store = StateStore(store_url)
    assert store.version() == SCHEMA_VERSION
    stored = store.delivered(["p"])["p"]
    assert stored["integration"] is None
    assert render(delivered_version(stored), CREATOR).content == "old"
    assert stale([{**delivered_version(stored), "props": {}}], {"p": stored}) == []
    store.record_posts("c", [WEBHOOK_POST])
    assert store.delivered([WEBHOOK_POST["id"]])[WEBHOOK_POST["id"]]["integration"]


def test_a_root_s_copy_and_the_largest_integration_reply_fit_one_queue_message(tmp_path):
    """The root embeds its files up to its room less REPLY_RESERVE; a reply at every cap
    (message and attachments' text escaped at 6 bytes a character, LINKS_MAX long links) then
    fits beside the root's copy with those files."""
    import random

    from mattermost_connector.stix import Attachment

    rng = random.Random(5)
    max_bytes = 1_600_000  # a quarter of it is more than REPLY_RESERVE: the reserve binds
    files = []
    for index, size in enumerate([103_000] * 10):  # ten: a post's most
        path = tmp_path / f"r{index}"
        path.write_bytes(rng.randbytes(size))
        files.append(Attachment(f"r{index:025d}", f"r{index}.bin", "image/png", size, path))
    root = {**WEBHOOK_POST, "message": "root"}
    users = {CREATOR["id"]: CREATOR}
    (root_part,) = [
        p
        for p in iter_bundles(
            CONTEXT, [root], users, {root["id"]: files}, TLP.AMBER, max_bytes=max_bytes, queue=True
        )
        if p.posts
    ]
    embedded = [a for _, a in root_part.attachments if a.status == "embedded"]
    assert 0 < len(embedded) < len(files)
    worst = "\x01" * 16_383
    links = [
        {"title": "t" * 500, "title_link": "https://x.example/" + "a" * 2_000 + str(i)}
        for i in range(integration_posts.LINKS_MAX)
    ]
    reply = {
        **WEBHOOK_POST,
        "id": "r" * 26,
        "root_id": root["id"],
        "create_at": root["create_at"] + 1,
        "message": worst,
        "props": {**WEBHOOK_POST["props"], "attachments": [{"text": worst * 2}, *links]},
    }
    parts = list(
        iter_bundles(
            CONTEXT,
            [reply],
            users,
            {root["id"]: embedded},
            TLP.AMBER,
            roots={root["id"]: root},
            max_bytes=max_bytes,
            queue=True,
        )
    )
    assert [part.size <= max_bytes for part in parts] == [True] * len(parts)
    assert json.loads(parts[-1].json)["objects"]  # the reply and the root's copy, together


def test_indicator_extraction_reads_the_post_as_shown():
    """With MATTERMOST_EXTRACT_OBSERVABLES, an integration post's indicators are read from
    its content as rendered: an attachment's author name and a fallback standing alone
    count too."""
    from types import SimpleNamespace

    from mattermost_connector.observables import observer_for

    settings = SimpleNamespace(
        extract_observables=True,
        observable_kinds=["ipv4-addr", "domain-name", "url"],
        domain="chat.example.org",
        observable_private_addresses=False,
    )
    observe = observer_for(settings)
    post = with_props(
        attachments=[{"author_name": "sensor 185.220.101[.]4"}, {"fallback": "C2 45.9.148[.]3"}]
    )
    values = [o.value for o in observe(post)]
    assert "185.220.101.4" in values and "45.9.148.3" in values
