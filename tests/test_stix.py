"""The STIX mapping: valid 2.1, deterministic, marked, with files and thread links."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mattermost_connector.config import TLP
from mattermost_connector.stix import (
    Attachment,
    ChannelContext,
    iter_bundles,
    marking_id,
    message_id,
    safe_file_name,
)
from tests.checks import assert_valid_stix, undefined_refs

CONTEXT = ChannelContext(
    channel_id="c" * 26,
    name="threat-intel/ioc-sharing",
    description="Purpose: IOCs",
    team_name="threat-intel",
    channel_type="O",
    created_ms=1_600_000_000_000,
    server_url="https://chat.example.org",
)
ALICE = {"id": "a" * 26, "username": "alice", "email": "", "first_name": "Alice", "create_at": 1}
ROOT = {
    "id": "r" * 26,
    "user_id": ALICE["id"],
    "create_at": 1_700_000_000_000,
    "message": "root\nbody",
    "root_id": "",
}
REPLY = {
    "id": "p" * 26,
    "user_id": ALICE["id"],
    "create_at": 1_700_000_000_500,
    "message": "reply",
    "root_id": ROOT["id"],
    "edit_at": 1_700_000_009_000,
}


def bundle(tlp: TLP, attachments=None, posts=(ROOT, REPLY), users=None) -> dict:
    """All the posts in one bundle (no bounds), as the mapping builds it."""
    users = users if users is not None else {ALICE["id"]: ALICE}
    (part,) = iter_bundles(CONTEXT, list(posts), users, attachments or {}, tlp)
    parsed = json.loads(part.json)
    assert len(parsed["objects"]) == part.objects
    return parsed


@pytest.mark.parametrize("tlp", list(TLP))
def test_bundles_are_valid_stix_and_fully_marked(tlp: TLP):
    data = bundle(tlp)
    assert_valid_stix([data])
    markings = [o for o in data["objects"] if o["type"] == "marking-definition"]
    assert [m["id"] for m in markings] == [marking_id(tlp)]
    for obj in data["objects"]:
        if obj["type"] != "marking-definition":
            assert obj["object_marking_refs"] == [marking_id(tlp)]


def test_opencti_specific_markings_carry_their_definition():
    for tlp, name in ((TLP.CLEAR, "TLP:CLEAR"), (TLP.AMBER_STRICT, "TLP:AMBER+STRICT")):
        marking = bundle(tlp)["objects"][0]
        assert marking["x_opencti_definition"] == name
        assert marking["x_opencti_definition_type"] == "TLP"
    assert (
        marking_id(TLP.AMBER_STRICT) == "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37"
    )


def test_ids_and_content_are_deterministic():
    first, second = bundle(TLP.AMBER), bundle(TLP.AMBER)
    assert first["objects"] == second["objects"]
    assert first["id"] != second["id"]  # only the bundle envelope is new


def test_mapping_of_a_reply():
    objects = {o["id"]: o for o in bundle(TLP.GREEN)["objects"]}
    reply = objects[message_id(CONTEXT, REPLY["id"])]
    assert reply["url"] == "https://chat.example.org/threat-intel/pl/" + REPLY["id"]
    assert reply["content"] == "reply" and reply["media_category"] == "mattermost"
    assert reply["publication_date"] == "2023-11-14T22:13:20.5Z"
    identity = objects[reply["x_opencti_created_by_ref"]]
    assert identity["name"] == "@alice" and identity["identity_class"] == "individual"
    channel = next(o for o in objects.values() if o["type"] == "channel")
    assert channel["name"] == "threat-intel/ioc-sharing" and channel["channel_types"] == [
        "Mattermost"
    ]
    links = {
        (o["source_ref"], o["target_ref"]) for o in objects.values() if o["type"] == "relationship"
    }
    assert (reply["id"], message_id(CONTEXT, ROOT["id"])) in links
    assert (reply["id"], channel["id"]) in links
    assert "edited" in reply["x_opencti_description"]
    assert objects[message_id(CONTEXT, ROOT["id"])]["title"] == "root"


def test_direct_messages_use_the_redirect_permalink():
    direct = ChannelContext("d" * 26, "direct/@a,@b", None, None, "D", 0, "http://chat:8065")
    assert direct.permalink("x" * 26) == "http://chat:8065/_redirect/pl/" + "x" * 26


def test_attachments_become_files_and_failures_are_described(tmp_path: Path):
    data = b"\x00\x01binary\xff" * 100
    (tmp_path / "f1").write_bytes(data)
    attachments = {
        ROOT["id"]: [
            Attachment(
                "f" * 26, "iocs.bin", "application/octet-stream", len(data), tmp_path / "f1", "x"
            ),
            Attachment(
                "g" * 26,
                "big.zip",
                "application/zip",
                10**9,
                error="GET /files/g: 404",
                status="failed",
            ),
        ]
    }
    objects = {o["id"]: o for o in bundle(TLP.RED, attachments)["objects"]}
    root = objects[message_id(CONTEXT, ROOT["id"])]
    (entry,) = root["x_opencti_files"]
    assert base64.b64decode(entry["data"]) == data
    assert entry["name"] == "iocs.bin" and entry["object_marking_refs"] == [marking_id(TLP.RED)]
    assert "big.zip (1000000000 bytes, application/zip)" in root["x_opencti_description"]


def test_unknown_author_still_gets_an_identity():
    objects = bundle(TLP.AMBER, users={})["objects"]
    (identity,) = [o for o in objects if o["type"] == "identity"]
    assert identity["name"] == "@" + ALICE["id"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("a\x00b\nc.txt", "abc.txt"),
        ("", "attachment-f1"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ],
)
def test_file_names_are_sanitised(raw: str, expected: str):
    assert safe_file_name(raw, "f1") == expected


def round_trip(obj: dict) -> dict:
    import stix2

    return json.loads(stix2.parse(obj, allow_custom=True).serialize())


@pytest.mark.parametrize("tlp", [TLP.AMBER, TLP.RED])
def test_objects_equal_what_stix2_and_pycti_build(tmp_path: Path, tlp: TLP):
    """The dicts must be exactly what stix2's classes would serialise, ids included."""
    import pycti

    (tmp_path / "f").write_bytes(b"abc")
    deleted = {**REPLY, "id": "q" * 26, "delete_at": 1_700_000_100_042, "message": "gone é 漢"}
    odd_time = {**ROOT, "id": "s" * 26, "create_at": 1_700_000_000_007}
    attachments = {
        ROOT["id"]: [Attachment("f" * 26, "a.txt", "text/plain", 3, tmp_path / "f", "x")]
    }
    bot = {
        **ALICE,
        "id": "b" * 26,
        "username": "bot",
        "is_bot": True,
        "email": "b@x.org",
        "delete_at": 5,
    }
    data = bundle(
        tlp,
        attachments,
        posts=(ROOT, REPLY, deleted, odd_time, {**ROOT, "id": "t" * 26, "user_id": bot["id"]}),
        users={ALICE["id"]: ALICE, bot["id"]: bot},
    )
    kinds = set()
    for obj in data["objects"]:
        kinds.add(obj["type"])
        if obj["type"] != "marking-definition":
            assert round_trip(obj) == obj
        if obj["type"] == "media-content":
            assert obj["id"] == pycti.CustomObservableMediaContent(url=obj["url"]).id
        elif obj["type"] == "identity":
            assert obj["id"] == pycti.Identity.generate_id(obj["name"], "individual")
        elif obj["type"] == "channel":
            assert obj["id"] == pycti.Channel.generate_id(obj["name"])
        elif obj["type"] == "relationship":
            assert obj["id"] == pycti.StixCoreRelationship.generate_id(
                "related-to", obj["source_ref"], obj["target_ref"]
            )
    assert kinds == {"marking-definition", "channel", "identity", "media-content", "relationship"}


def test_message_ids_match_stix2_for_any_url():
    import pycti

    for name in ("team", "équipe", "チーム", "a b"):
        context = ChannelContext("c" * 26, "x", None, name, "O", 0, "https://chat.example.org:8443")
        assert (
            message_id(context, "p" * 26)
            == pycti.CustomObservableMediaContent(url=context.permalink("p" * 26)).id
        )


AWKWARD = [
    'a"b',
    "back\\slash",
    "ctl\x01\x1f\x7f",
    "tab\tnl\n",
    "é漢字",
    "emoji 🔥",
    "\u2028sep",
    "</script>",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_fast_ids_equal_pycti_and_stix2_generators(text: str):
    import pycti

    from mattermost_connector.stix import relationship_id

    source, target = f"media-content--{text}", f"channel--{text}"
    assert relationship_id(source, target) == pycti.StixCoreRelationship.generate_id(
        "related-to", source, target
    )
    context = ChannelContext("c" * 26, "x", None, text, "O", 0, "https://h")
    assert (
        message_id(context, "p" * 26)
        == pycti.CustomObservableMediaContent(url=context.permalink("p" * 26)).id
    )


@pytest.mark.parametrize("text", [*AWKWARD, "  Mixed Case  ", "İstanbul ǅ ß"])
def test_written_out_identity_and_channel_ids_equal_pycti(text: str):
    """stix.py computes them without importing pycti (a second and 40 MB per process)."""
    import pycti

    from mattermost_connector.stix import _channel_id, _identity_id

    assert _identity_id(text) == pycti.Identity.generate_id(text, "individual")
    assert _channel_id(text) == pycti.Channel.generate_id(text)


@pytest.mark.parametrize("tlp", [TLP.WHITE, TLP.GREEN, TLP.AMBER, TLP.RED])
def test_written_out_tlp_markings_equal_stix2s(tlp: TLP):
    import stix2

    from mattermost_connector.stix import marking_object

    expected = getattr(stix2, f"TLP_{tlp.name}")
    assert marking_object(tlp) == json.loads(expected.serialize())
    assert marking_id(tlp) == expected.id


def test_the_mapping_imports_neither_pycti_nor_stix2():
    """Their import is most of a directory sync's memory beside Prefect's."""
    import subprocess
    import sys

    code = "import sys, mattermost_connector.stix; print('pycti' in sys.modules, 'stix2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_files_beyond_one_message_travel_as_artifacts_and_none_exceeds_it(tmp_path: Path):
    """For OpenCTI every bundle fits `max_bytes` (one queue message): the files that fit go
    with their message, each other one alone in a bundle as an Artifact with its bytes (ids
    from its MD5, as OpenCTI's identifier.js), or, larger than any bundle, is to be uploaded;
    the message's own bundle, last, links every Artifact and completes the post."""
    import hashlib
    import random

    from mattermost_connector.stix import artifact_id

    rng = random.Random(3)
    files, data = [], {}
    sizes = [60_000] * 10 + [400_000]
    for index, size in enumerate(sizes):
        path = tmp_path / f"f{index}"
        path.write_bytes(rng.randbytes(size))
        name = "report.pdf" if index in (1, 2) else f"f{index}.bin"
        files.append(Attachment(f"{index:026d}", name, "application/pdf", size, path, "x"))
        data[files[-1].file_id] = path.read_bytes()
    post = {**ROOT, "message": ""}
    users = {ALICE["id"]: ALICE}
    max_bytes = 200_000
    parts = list(
        iter_bundles(
            CONTEXT, [post], users, {post["id"]: files}, TLP.AMBER, max_bytes=max_bytes, queue=True
        )
    )
    assert all(len(part.json.encode()) <= max_bytes for part in parts)
    assert [bool(part.posts) for part in parts] == [False] * (len(parts) - 1) + [True]
    final = json.loads(parts[-1].json)["objects"]
    (message,) = [o for o in final if o["type"] == "media-content"]
    assert all(
        "media-content" not in part.json for part in parts[:-1]
    )  # one copy: OpenCTI ignores files on an upsert
    names = [f.name for _, f in parts[-1].attachments]
    assert names[:4] == ["f0.bin", "report.pdf", "report (2).pdf", "f3.bin"]
    assert message["title"] == ", ".join(names)
    stored = {f["name"]: base64.b64decode(f["data"]) for f in message["x_opencti_files"]}
    for part in parts[:-1]:
        (artifact,) = [o for o in json.loads(part.json)["objects"] if o["type"] == "artifact"]
        stored[artifact["x_opencti_additional_names"][0]] = base64.b64decode(
            artifact["payload_bin"]
        )
    (upload,) = parts[-1].uploads
    assert upload.size == 400_000 and upload.name == "f10.bin"
    stored[upload.name] = upload.path.read_bytes()
    expected = {f.name: data[f.file_id] for _, f in parts[-1].attachments}
    assert stored == expected and len(stored) == 11
    linked = {o["target_ref"] for o in final if o["type"] == "relationship"}
    for _, attachment in parts[-1].attachments:
        if attachment.status == "uploaded":
            blob = data[attachment.file_id]
            assert attachment.md5 == hashlib.md5(blob).hexdigest()
            assert artifact_id({"MD5": attachment.md5}) in linked
    uploaded = [a.name for _, a in parts[-1].attachments if a.status == "uploaded"]
    assert len(uploaded) == len(parts) - 1 + 1 and "f10.bin" in uploaded
    assert all(name in message["x_opencti_description"] for name in uploaded)


def test_a_directory_keeps_every_file_of_a_post_in_its_message(tmp_path: Path):
    path = tmp_path / "big"
    path.write_bytes(b"z" * 300_000)
    files = [
        Attachment(f"{i:026d}", "same.txt", "text/plain", 300_000, path, "x") for i in range(3)
    ]
    (part,) = iter_bundles(
        CONTEXT, [ROOT], {ALICE["id"]: ALICE}, {ROOT["id"]: files}, TLP.AMBER, max_bytes=100_000
    )
    (message,) = [o for o in json.loads(part.json)["objects"] if o["type"] == "media-content"]
    assert [f["name"] for f in message["x_opencti_files"]] == [
        "same.txt",
        "same (2).txt",
        "same (3).txt",
    ]
    assert message["title"] == "root"


def test_every_bundle_defines_what_it_refers_to_with_threads_spread_over_bundles(tmp_path):
    bob = {"id": "b" * 26, "username": "bob", "create_at": 2}
    old_root = {**ROOT, "id": "o" * 26, "user_id": bob["id"], "message": "root long ago"}
    (tmp_path / "f").write_bytes(b"abc")
    posts, roots = [], [ROOT]
    for n in range(40):  # replies to a root of this batch, to one delivered before, new roots
        target = [ROOT, old_root, roots[-1]][n % 3]
        author = [ALICE, bob][n % 2]
        post = {**REPLY, "id": f"{n:026d}", "root_id": target["id"], "user_id": author["id"]}
        if n % 7 == 0:
            post = {**post, "root_id": ""}
            roots.append(post)
        posts.append(post)
    (tmp_path / "g").write_bytes(b"old")
    files = {
        ROOT["id"]: [Attachment("f" * 26, "a.txt", "text/plain", 3, tmp_path / "f", "x")],
        # a root delivered before: the file its first delivery embedded, spooled again
        old_root["id"]: [Attachment("g" * 26, "b.txt", "text/plain", 3, tmp_path / "g", "y")],
    }
    parts = list(
        iter_bundles(
            CONTEXT,
            [ROOT, *posts],
            {ALICE["id"]: ALICE, bob["id"]: bob},
            files,
            TLP.AMBER,
            roots={old_root["id"]: old_root},
            max_objects=12,
        )
    )
    assert len(parts) > 5
    links, copied = 0, set()
    for part in parts:
        assert undefined_refs(json.loads(part.json)) == set()
        objects = json.loads(part.json)["objects"]
        links += sum(1 for o in objects if o["type"] == "relationship") - len(part.posts)
        copies = [
            o
            for o in objects
            if o["type"] == "media-content"
            and o["id"] not in {message_id(CONTEXT, p["id"]) for p in part.posts}
        ]
        expected = {
            message_id(CONTEXT, ROOT["id"]): [("a.txt", b"abc")],
            message_id(CONTEXT, old_root["id"]): [("b.txt", b"old")],
        }
        for copy in copies:  # a root as delivered, with the files its first import must take
            assert "x_opencti_description" not in copy
            assert copy["content"] in {ROOT["message"], old_root["message"], REPLY["message"]}
            carried = [
                (f["name"], base64.b64decode(f["data"])) for f in copy.get("x_opencti_files", [])
            ]
            assert carried == expected.get(copy["id"], [])
            copied.add(copy["id"])
    assert set(expected) <= copied
    assert links == sum(1 for p in posts if p["root_id"])  # every reply linked to its root
    assert sum(len(p.posts) for p in parts) == len(posts) + 1  # copies are not deliveries


def test_a_reply_whose_root_is_nowhere_is_left_unlinked_not_dangling():
    (part,) = iter_bundles(CONTEXT, [REPLY], {ALICE["id"]: ALICE}, {}, TLP.AMBER)
    assert undefined_refs(json.loads(part.json)) == set()
    reply = next(o for o in json.loads(part.json)["objects"] if o["type"] == "media-content")
    assert "thread root not available" in reply["x_opencti_description"]


def test_renamed_channel_and_user_keep_their_first_ids_and_show_the_new_names():
    from dataclasses import replace

    import pycti

    from mattermost_connector.stix import FIRST_NAME, channel_object, identity_object

    moved = replace(
        CONTEXT,
        name="other-team/renamed",
        team_name="other-team",
        first_name=CONTEXT.name,
        link_team=CONTEXT.team_name,
    )
    assert message_id(moved, REPLY["id"]) == message_id(CONTEXT, REPLY["id"])
    channel = channel_object(moved, TLP.AMBER)
    assert channel["id"] == pycti.Channel.generate_id(CONTEXT.name)
    assert (channel["name"], channel["aliases"]) == ("other-team/renamed", [CONTEXT.name])
    assert "aliases" not in channel_object(replace(CONTEXT, first_name=CONTEXT.name), TLP.AMBER)
    renamed = {**ALICE, "username": "alice2", FIRST_NAME: "@alice"}
    identity = identity_object(renamed, TLP.AMBER)
    assert identity["id"] == pycti.Identity.generate_id("@alice", "individual")
    assert (identity["name"], identity["x_opencti_aliases"]) == ("@alice2", ["@alice"])
    assert "first imported as @alice" in identity["description"]
    assert round_trip(identity) == identity and round_trip(channel) == channel


def test_a_reply_listed_before_its_root_gets_no_second_copy_of_it():
    """Posts sharing a millisecond come in id order: a reply may precede its root."""
    early = {**REPLY, "create_at": ROOT["create_at"]}
    (part,) = iter_bundles(CONTEXT, [early, ROOT], {ALICE["id"]: ALICE}, {}, TLP.AMBER)
    objects = json.loads(part.json)["objects"]
    ids = [o["id"] for o in objects]
    assert len(ids) == len(set(ids)) == part.objects
    root = next(o for o in objects if o["id"] == message_id(CONTEXT, ROOT["id"]))
    assert "x_opencti_description" in root  # the delivered root, not the copy
    assert undefined_refs(json.loads(part.json)) == set()


def test_a_reply_and_its_root_copy_with_files_fit_one_queue_message(tmp_path: Path):
    """A root keeps room for one reply beside its copy: the root embeds what fits its
    message less that room, and a reply (long text, files of its own) in a later bundle
    carries the copy with those files, still within `max_bytes`; the reply's own files
    that do not fit go as Artifacts."""
    import random

    rng = random.Random(5)
    max_bytes = 800_000
    root_files, reply_files = [], []
    for index in range(8):
        path = tmp_path / f"r{index}"
        path.write_bytes(rng.randbytes(80_000))
        root_files.append(Attachment(f"r{index:025d}", f"r{index}.bin", "image/png", 80_000, path))
        path = tmp_path / f"p{index}"
        path.write_bytes(rng.randbytes(60_000))
        reply_files.append(Attachment(f"p{index:025d}", f"p{index}.bin", "image/png", 60_000, path))
    users = {ALICE["id"]: ALICE}
    (root_part,) = [
        p
        for p in iter_bundles(
            CONTEXT,
            [ROOT],
            users,
            {ROOT["id"]: root_files},
            TLP.AMBER,
            max_bytes=max_bytes,
            queue=True,
        )
        if p.posts
    ]
    embedded = [a for _, a in root_part.attachments if a.status == "embedded"]
    assert 0 < len(embedded) < len(root_files)
    reply = {**REPLY, "message": "\x01" * 16_000}  # 6 bytes each in JSON: the worst case
    parts = list(
        iter_bundles(
            CONTEXT,
            [reply],
            users,
            {reply["id"]: reply_files, ROOT["id"]: embedded},
            TLP.AMBER,
            roots={ROOT["id"]: ROOT},
            max_bytes=max_bytes,
            queue=True,
        )
    )
    assert all(part.size <= max_bytes for part in parts)
    objects = json.loads(parts[-1].json)["objects"]
    copy = next(o for o in objects if o["id"] == message_id(CONTEXT, ROOT["id"]))
    assert [f["name"] for f in copy["x_opencti_files"]] == [a.name for a in embedded]
    statuses = [a.status for _, a in parts[-1].attachments]
    assert "uploaded" in statuses


def test_files_overhead_is_exactly_what_embedding_files_adds_to_a_message():
    """What _plan_post reserves beside the entries when it fits files in a message: the
    media-content with its files, and its separator in the bundle, to the byte."""
    from mattermost_connector.stix import FILES_OVERHEAD, _segments_size, _size, _with_files

    message = '{"type":"media-content","id":"media-content--1","content":"é"}'
    for entries in ([['{"name":"a"}']], [['{"name":"a"}'], ['{"name":"bb"}', '"x"']]):
        embedded = _segments_size(_with_files(message, entries)) + len(", ")
        reserved = _size(message) + FILES_OVERHEAD + sum(_segments_size(e) + 1 for e in entries)
        assert embedded == reserved
