"""Proof from OpenCTI's own code: our bundles replayed through pycti's import, as the worker
does for each message, into a platform that stores what the real one would
(tests/replay_platform.py). Checked against the simulator's data, not against our output."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from mattermost_connector.config import TLP
from mattermost_connector.stix import (
    ChannelContext,
    _bundle,
    channel_object,
    identity_object,
    marking_object,
    serialize,
)
from mattermost_prefect.tasks import resources
from tests.conftest import OWN_PREFIXES, apply_env, mattermost_env
from tests.mattermost_sim import Demo, MattermostSimulator, seed_demo
from tests.replay_platform import Entity, ReplayPlatform, bundle_texts, replay


@pytest.fixture(scope="module")
def synced(prefect_api, tmp_path_factory) -> Iterator[tuple[Demo, list[str]]]:
    """A real sync in directory mode (as `directory_env` sets it up), once for the module:
    the demo with 130 posts in its big channel (threads and attachments of every kind),
    bundles of at most 50 objects so threads span several."""
    from mattermost_prefect.flows.sync import mattermost_sync

    sim = MattermostSimulator().start()
    demo = seed_demo(sim, big=130)
    workdir = tmp_path_factory.mktemp("replay")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(workdir)
        for name in list(os.environ):
            if name.startswith(OWN_PREFIXES):
                monkeypatch.delenv(name)
        apply_env(
            monkeypatch,
            {
                **mattermost_env(demo),
                "CONNECTOR_SEND_TO_QUEUE": "false",
                "CONNECTOR_SEND_TO_DIRECTORY": "true",
                "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(workdir / "bundles"),
                "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
                "CONNECTOR_BUNDLE_MAX_OBJECTS": "50",
            },
        )
        try:
            state = mattermost_sync(return_state=True)
        finally:
            resources.reset()
    assert state.is_completed(), state.message
    texts = bundle_texts(workdir / "bundles")
    assert len(texts) > 3
    yield demo, texts
    sim.stop()


@pytest.fixture
def demo(synced) -> Demo:
    return synced[0]


@pytest.fixture
def bundles(synced) -> list[str]:
    return synced[1]


def permalink(demo: Demo, post: dict) -> str:
    """Mattermost's permalink: /<team>/pl/<post>, or /_redirect/pl/<post> outside a team."""
    channel = demo.sim.state.channels[post["channel_id"]]
    team = demo.sim.state.teams.get(channel.get("team_id") or "")
    where = team["name"] if team else "_redirect"
    return f"http://127.0.0.1:{demo.sim.port}/{where}/pl/{post['id']}"


def instant_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def message_entities(demo: Demo, platform: ReplayPlatform) -> list[tuple[dict, Entity]]:
    """Every live post of the demo with the media-content the platform stored for it."""
    messages = {e.attributes["url"]: e for e in platform.of_type("Media-Content")}
    posts = [p for c in demo.channels for p in demo.sim.live_posts(c["id"])]
    assert len(messages) == len(posts)
    return [(post, messages[permalink(demo, post)]) for post in posts]


def demo_files(demo: Demo) -> int:
    """The files of the posts a user sees, counted on the server."""
    return sum(len(p["file_ids"]) for c in demo.channels for p in demo.sim.live_posts(c["id"]))


def assert_files_stored(demo: Demo, platform: ReplayPlatform) -> int:
    """Each post's attachments on its media-content: name, bytes, type, and TLP marking."""
    count = 0
    for post, message in message_entities(demo, platform):
        stored = sorted(message.files.values(), key=lambda f: f.name)
        expected = sorted(
            (demo.sim.state.files[f] for f in post["file_ids"]), key=lambda f: f.info["name"]
        )
        assert [(f.name, f.data, f.mime_type) for f in stored] == [
            (s.info["name"], s.data, s.info["mime_type"]) for s in expected
        ]
        for file in stored:
            assert platform.marking_definitions(file.markings) == {"TLP:AMBER"}
        count += len(stored)
    return count


def test_replayed_bundles_store_every_message_as_the_simulator_has_it(demo, bundles):
    platform = replay(bundles)
    channels_seen: dict[str, str] = {}
    for post, message in message_entities(demo, platform):
        assert message.attributes["content"] == post["message"]
        assert instant_ms(message.attributes["publication_date"]) == post["create_at"]
        assert platform.marking_definitions(message.markings) == {"TLP:AMBER"}
        author = platform.resolve(message.created_by)
        user = demo.sim.state.users[post["user_id"]]
        assert (author.entity_type, author.attributes["name"]) == (
            "Individual",
            f"@{user['username']}",
        )
        (channel,) = [e for e in platform.related(message) if e.entity_type == "Channel"]
        assert channels_seen.setdefault(post["channel_id"], channel.internal_id) == (
            channel.internal_id
        )
    assert assert_files_stored(demo, platform) == demo_files(demo) > 0
    assert_replies_related_to_their_root(demo, platform)
    # every id we wrote is the one the platform computes itself: no second identity
    assert [e.stix_ids for e in [*platform.entities, *platform.relationships]] == [
        [] for _ in [*platform.entities, *platform.relationships]
    ]
    names = {platform.resolve(i).attributes["name"] for i in channels_seen.values()}
    team_names = {f"threat-intel/{c['name']}" for c in demo.channels if c["type"] in ("O", "P")}
    assert team_names < names and len(names) == 3
    (direct,) = names - team_names
    assert "@alice" in direct and "@octi-reader" in direct


def assert_replies_related_to_their_root(demo: Demo, platform: ReplayPlatform) -> None:
    """Each reply related-to its thread's root, whatever order the messages came in: every
    bundle carries the roots its replies refer to, so nothing is refused or given up."""
    assert platform.missing_references == []
    by_url = {e.attributes["url"]: e for e in platform.of_type("Media-Content")}
    replies = 0
    for post, message in message_entities(demo, platform):
        roots = [e for e in platform.related(message) if e.entity_type == "Media-Content"]
        if not post["root_id"]:
            assert roots == []
            continue
        replies += 1
        assert roots == [by_url[permalink(demo, demo.sim.state.posts[post["root_id"]])]]
    assert replies > 20
    messages = len(platform.of_type("Media-Content"))
    assert len(platform.relationships) == messages + replies  # each to its channel, and root


def test_bundles_imported_in_reverse_order_miss_no_reference(demo, bundles):
    imported = bundles[::-1]
    platform = replay(imported)
    assert_replies_related_to_their_root(demo, platform)
    assert [m.unresolved for m in platform.missing_references] == []


def test_bundles_imported_in_reverse_order_keep_every_file(demo, bundles):
    """A message imported again (an upsert) does not take new files: each file must come
    with the message's first import, whatever the order."""
    assert assert_files_stored(demo, replay(bundles, reverse=True)) == demo_files(demo)


def bundle_json(parts: Iterator[str]) -> str:
    """A bundle of serialised objects, joined as the connector joins them (stix._bundle)."""
    return "".join(_bundle([[part] for part in parts]))  # type: ignore[misc]


def _message_bundle(file_name: str, data: bytes) -> str:
    """One post's media-content carrying one file, as x_opencti_files, in its own bundle."""
    context = ChannelContext("c1", "team/chan", None, "team", "O", 1_700_000_000_000, "http://mm")
    user = {"id": "u1", "username": "alice"}
    message = {
        "type": "media-content",
        "spec_version": "2.1",
        "id": "media-content--6d1ec4f5-0d3c-5a0b-9a3b-6b1f1a2c3d4e",
        "content": "same post",
        "url": "http://mm/team/pl/p1",
        "object_marking_refs": [marking_object(TLP.AMBER)["id"]],
        "x_opencti_files": [
            {
                "name": file_name,
                "data": base64.b64encode(data).decode(),
                "mime_type": "text/plain",
                "object_marking_refs": [marking_object(TLP.AMBER)["id"]],
                "no_trigger_import": True,
            }
        ],
    }
    parts = [
        marking_object(TLP.AMBER),
        channel_object(context, TLP.AMBER),
        identity_object(user, TLP.AMBER),
        message,
    ]
    return bundle_json(serialize(p) for p in parts)


def test_a_second_bundle_for_the_same_media_content_does_not_add_its_files():
    """Upsert of an existing observable: the platform reads only the singular `file`
    (upsert-utils.js generateFileInputsForUpsert), pycti sends the plural `files`: the first
    bundle's file is kept, the second one's is not stored."""
    first = _message_bundle("first.txt", b"first file\r\n")
    second = _message_bundle("second.txt", b"second file\r\n")
    platform = replay([first, second])
    (message,) = platform.of_type("Media-Content")
    assert [(f.name, f.data) for f in message.files.values()] == [("first.txt", b"first file\r\n")]
    assert [(f.name, f.data) for f in message.ignored_files] == [("second.txt", b"second file\r\n")]
    assert platform.missing_references == []


def test_replay_helper_takes_a_directory_in_name_order(tmp_path: Path):
    (tmp_path / "b.json").write_text(_message_bundle("b.txt", b"b"))
    (tmp_path / "a.json").write_text(_message_bundle("a.txt", b"a"))
    platform = replay(tmp_path)
    (message,) = platform.of_type("Media-Content")
    assert [f.name for f in message.files.values()] == ["a.txt"]
    assert isinstance(platform, ReplayPlatform)
    assert json.loads(bundle_texts(tmp_path)[0])["objects"][3]["x_opencti_files"][0]["name"] == (
        "a.txt"
    )


# -- files, whatever the import order ----------------------------------------------------


@pytest.fixture
def world(prefect_api, sim, workdir, monkeypatch):
    from tests.support import World

    return World(sim, workdir, monkeypatch)


def _files_of(platform: ReplayPlatform, message: Entity) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, MIME type): the message's own files and those of its Artifacts."""
    found = {f.name: (f.data, f.mime_type) for f in message.files.values()}
    for artifact in platform.related(message):
        if artifact.entity_type == "Artifact":
            found.update({f.name: (f.data, f.mime_type) for f in artifact.files.values()})
    return found


def _stored_message(platform: ReplayPlatform, url: str) -> dict:
    """What an analyst sees of a message: its attributes, author, markings, files."""
    (message,) = [e for e in platform.of_type("Media-Content") if e.attributes["url"] == url]
    keys = ("content", "title", "url", "publication_date", "x_opencti_description")
    return {
        **{key: message.attributes.get(key) for key in keys},
        "author": platform.resolve(message.created_by).attributes["name"],
        "markings": platform.marking_definitions(message.markings),
        "files": {
            f.name: (f.data, f.mime_type, tuple(sorted(platform.marking_definitions(f.markings))))
            for f in message.files.values()
        },
    }


def _shuffled(texts: list[str], seed: int) -> list[str]:
    import random

    texts = list(texts)
    random.Random(seed).shuffle(texts)
    return texts


def test_thread_roots_keep_their_files_whatever_the_import_order(world):
    """A root's files are stored only with its first import, which may be a copy of it in a
    reply's bundle (a later bundle of the run, or a later run): imported in any order, every
    root ends with every file, and exactly as a forward import leaves it."""
    import random

    channel = world.channel("threads")
    rng = random.Random(7)

    def attach(name: str, size: int, mime: str) -> tuple[dict, bytes]:
        data = rng.randbytes(size)
        return world.sim.add_file(world.authors[0], name, data, mime), data

    expected: dict[str, dict[str, tuple[bytes, str]]] = {}
    roots = []
    for n, text in enumerate(["look at these", ""]):  # the second: files alone, no text
        files = [
            attach(f"shot-{n}.png", 3000 + n, "image/png"),
            attach("same.txt", 10, "text/plain"),
        ]
        files.append(attach("same.txt", 20, "text/plain"))
        root = world.sim.add_post(channel, world.authors[0], text, files=[f for f, _ in files])
        names = [f"shot-{n}.png", "same.txt", "same (2).txt"]
        expected[root["id"]] = {
            name: (data, info["mime_type"]) for name, (info, data) in zip(names, files, strict=True)
        }
        roots.append(root)
    for n in range(12):  # replies spread over later bundles
        world.sim.add_post(channel, world.authors[n % 3], f"reply {n}", root=roots[n % 2])
    world.configure([channel], CONNECTOR_BUNDLE_MAX_OBJECTS="10")
    world.sync()
    for n in range(4):  # and in a later run
        world.sim.add_post(channel, world.authors[1], f"late reply {n}", root=roots[n % 2])
    world.sync()
    texts = bundle_texts(world.workdir / "bundles")
    assert len(texts) >= 4
    context = world.context(channel)
    urls = [context.permalink(root["id"]) for root in roots]
    forward = replay(texts)
    assert forward.rejected == [] and forward.missing_references == []
    for root, url in zip(roots, urls, strict=True):
        (message,) = [e for e in forward.of_type("Media-Content") if e.attributes["url"] == url]
        assert _files_of(forward, message) == expected[root["id"]]
    orders = {"reverse": texts[::-1], **{f"shuffled {s}": _shuffled(texts, s) for s in range(3)}}
    for label, order in orders.items():
        platform = replay(order)
        assert platform.rejected == [] and platform.missing_references == [], label
        for url in urls:
            assert _stored_message(platform, url) == _stored_message(forward, url), label


# -- integration posts ------------------------------------------------------------------------


def test_a_webhook_post_is_stored_with_its_attachments_links_and_priority(world):
    """A webhook's alert (attachments only, an override name, urgent), its attachment edited
    on a server that sets no edit_at for it, then deleted: OpenCTI ends with the edited text,
    the links as external references, the webhook and account noted, labelled urgent and
    deleted."""
    from mattermost_connector.integration_posts import render
    from tests.mattermost_webhooks import add_incoming_webhook, post_webhook, update_post

    channel = world.channel("alerts")
    creator = world.authors[0]
    hook = add_incoming_webhook(world.sim, channel, creator, "MISP feed", username="misp-bot")
    attachment = {
        "pretext": "New event from <https://misp.example.org|MISP>",
        "title": "Event 4242",
        "title_link": "https://misp.example.org/events/view/4242",
        "text": "evil.example",
        "fields": [{"title": "Threat level", "value": 1, "short": True}],
        "footer": "MISP",
    }
    (post,) = post_webhook(
        world.sim,
        hook,
        attachments=[attachment],
        priority={"priority": "urgent"},
        username_override=True,
    )
    world.sim.add_post(channel, world.authors[1], "blocking it", root=post)
    world.configure([channel])
    world.sync()
    edited = {
        **world.sim.state.posts[post["id"]]["props"]["attachments"][0],
        "text": "evil.example, worse.example",
    }
    update_post(world.sim, post["id"], attachments=[edited], compares_attachments=False)
    assert world.sim.state.posts[post["id"]]["edit_at"] == 0
    world.sync()
    world.sim.delete_post(post["id"])
    world.sync()

    platform = replay(bundle_texts(world.workdir / "bundles"))
    assert platform.rejected == [] and platform.missing_references == []
    url = world.context(channel).permalink(post["id"])
    stored = _stored_message(platform, url)
    assert stored["content"] == (
        "New event from [MISP](https://misp.example.org)\nEvent 4242\n"
        "evil.example, worse.example\nThreat level: 1\nMISP"
    )
    assert stored["content"] == render(world.sim.state.posts[post["id"]], creator).content
    assert stored["author"] == "@alice"
    assert (
        'shown as "misp-bot", posted by incoming webhook "MISP feed" of the account @alice'
        in (stored["x_opencti_description"])
    )
    (message,) = [e for e in platform.of_type("Media-Content") if e.attributes["url"] == url]
    references = [platform.resolve(r).attributes for r in message.references]
    assert [(r["url"], r["source_name"]) for r in references] == [
        ("https://misp.example.org/events/view/4242", "mattermost-attachment")
    ]
    labels = {platform.resolve(label).attributes["value"] for label in message.labels}
    assert labels == {"priority:urgent", "deleted"}


# -- indicators in messages (MATTERMOST_EXTRACT_OBSERVABLES) -----------------------------


def test_synced_indicators_and_their_links_are_stored_and_an_edit_adds_its_own(world):
    """A real sync with extraction on, then an edit adding an indicator and removing one,
    replayed through pycti: every indicator one entity, linked from each message naming it;
    the edit's new indicator linked, the removed one still linked."""
    channel = world.channel("ioc-sharing")
    alice, bob, _ = world.authors
    first = world.sim.add_post(
        channel, alice, "C2 at 185.220.101[.]4, payload hxxps://evil-site[.]ru/p", create_at=1
    )
    world.sim.add_post(channel, bob, "185.220.101.4 again, and CVE-2021-44228", create_at=2)
    world.sim.add_post(channel, bob, "version 1.2.3.4 of report.pdf, @alice.dev", create_at=3)
    world.configure([channel], MATTERMOST_EXTRACT_OBSERVABLES="true")
    world.sync()
    world.sim.edit_post(first["id"], "C2 moved to 45.9.148[.]3")
    world.sync()
    platform = replay([json.dumps(b) for b in world.bundles()])
    assert platform.rejected == [] and platform.missing_references == []
    names = {
        kind: sorted(
            e.attributes.get("value") or e.attributes["name"] for e in platform.of_type(kind)
        )
        for kind in ("IPv4-Addr", "Url", "Vulnerability", "Domain-Name")
    }
    assert names == {
        "IPv4-Addr": ["185.220.101.4", "45.9.148.3"],
        "Url": ["https://evil-site.ru/p"],
        "Vulnerability": ["CVE-2021-44228"],
        "Domain-Name": [],
    }
    context = world.context(channel)
    messages = {e.attributes["url"]: e for e in platform.of_type("Media-Content")}
    edited = messages[context.permalink(first["id"])]
    assert edited.attributes["content"] == "C2 moved to 45.9.148[.]3"
    linked = {e.attributes.get("value") for e in platform.related(edited)}
    assert {"185.220.101.4", "https://evil-site.ru/p", "45.9.148.3"} <= linked
    ip = next(e for e in platform.of_type("IPv4-Addr") if e.attributes["value"] == "185.220.101.4")
    assert sum(1 for r in platform.relationships if r.to_id == ip.internal_id) == 2
