"""What "imported completely" means, checked object by object against the simulator."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from stix2validator import ValidationOptions, validate_string

from mattermost_connector.stix import message_id
from tests.mattermost_sim import MattermostSimulator

STIX = dict[str, Any]


def directory_bundles(path: Path) -> list[STIX]:
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))]


def queue_messages(queue: str) -> list[STIX]:
    """Drain the push queue: each message with its bundle decoded as the platform's worker
    would (`content` is base64 of the bundle's JSON)."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    messages = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        message = json.loads(body)
        assert message["bundle_type"] == "QUEUE_BUNDLE"
        message["bundle"] = json.loads(base64.b64decode(message.pop("content")))
        messages.append(message)
    connection.close()
    return messages


def queue_bundles(queue: str) -> list[STIX]:
    return [message["bundle"] for message in queue_messages(queue)]


def worker_reports(messages: list[STIX]) -> int:
    """How many expectations OpenCTI's worker reports for these messages (its push handler):
    one per object of a single-object or `no_split` bundle, which it imports itself. Any
    other bundle it would split and queue again, reporting nothing itself."""
    return sum(
        len(m["bundle"]["objects"])
        for m in messages
        if m.get("no_split") or len(m["bundle"]["objects"]) == 1
    )


def root_copies(bundle: STIX) -> set[str]:
    """Media-contents a bundle holds only because a reply refers to them: a thread root as
    last delivered, without the description a delivered message always has (stix.root_copy).
    Told apart object by object, as bundles may be split one object per message."""
    return {
        o["id"]
        for o in bundle["objects"]
        if o["type"] == "media-content" and "x_opencti_description" not in o
    }


def delivered_messages(bundle: STIX) -> list[STIX]:
    copies = root_copies(bundle)
    return [o for o in bundle["objects"] if o["type"] == "media-content" and o["id"] not in copies]


def objects_by_id(bundles: list[STIX]) -> dict[str, STIX]:
    """The last delivered version of each object (a root's copy never replaces it)."""
    found: dict[str, STIX] = {}
    for bundle in bundles:
        copies = root_copies(bundle)
        for obj in bundle["objects"]:
            if obj["id"] not in copies or obj["id"] not in found:
                found[obj["id"]] = obj
    return found


def assert_valid_stix(bundles: list[STIX]) -> None:
    options = ValidationOptions(version="2.1", strict=False)
    for bundle in bundles:
        result = validate_string(json.dumps(bundle), options)
        assert result.is_valid, [str(e) for e in result.errors]


def assert_channel_complete(
    sim: MattermostSimulator,
    context: Any,
    objects: dict[str, STIX],
    marking: str,
    bundles: list[STIX] | None = None,
) -> int:
    """Every live post of the channel is there once, with its text, thread link and files."""
    posts = sim.live_posts(context.channel_id)
    channel_ref = next(
        o["id"] for o in objects.values() if o["type"] == "channel" and o["name"] == context.name
    )
    relationships = {
        (o["source_ref"], o["target_ref"]) for o in objects.values() if o["type"] == "relationship"
    }
    for post in posts:
        mc_id = message_id(context, post["id"])
        assert mc_id in objects, f"post {post['id']} missing"
        mc = objects[mc_id]
        assert mc["url"] == context.permalink(post["id"])
        assert mc["content"] == post["message"]
        assert (mc_id, channel_ref) in relationships
        if post["root_id"]:
            assert (mc_id, message_id(context, post["root_id"])) in relationships
        author = sim.state.users[post["user_id"]]
        identity = objects[mc["x_opencti_created_by_ref"]]
        assert identity["name"] == f"@{author['username']}"
        files = {f["name"]: base64.b64decode(f["data"]) for f in mc.get("x_opencti_files", [])}
        expected = {
            sim.state.files[f].info["name"]: sim.state.files[f].data for f in post["file_ids"]
        }
        assert files == expected, f"post {post['id']} files differ"
    if bundles is not None:
        in_channel = {source for source, target in relationships if target == channel_ref}
        delivered = Counter(
            o["id"] for b in bundles for o in delivered_messages(b) if o["id"] in in_channel
        )
        assert set(delivered) == {message_id(context, p["id"]) for p in posts}, "extra messages"
        assert max(delivered.values(), default=1) == 1, "a message was delivered twice"
    for obj in objects.values():
        if obj["type"] != "marking-definition":
            assert obj.get("object_marking_refs") == [marking], obj["id"]
    return len(posts)


def undefined_refs(bundle: STIX) -> set[str]:
    """The ids a bundle's objects refer to (every *_ref and *_refs, markings and the files'
    markings included) that no object of the same bundle defines."""

    def refs(value: Any, key: str = "") -> set[str]:
        if isinstance(value, dict):
            return set().union(*(refs(v, k) for k, v in value.items() if k != "id"))
        if isinstance(value, list):
            return set().union(*(refs(v, key) for v in value))
        return {value} if key.endswith(("_ref", "_refs")) and isinstance(value, str) else set()

    defined = {obj["id"] for obj in bundle["objects"]}
    return set().union(*(refs(obj) for obj in bundle["objects"])) - defined


def expected_line(sim, channel: dict, bundles: list | None = None) -> str:
    """A channel's line in `sync`'s output, counted from the server's data and the bundle cap
    rather than copied from a run: per post its media-content and its link to the channel,
    plus a link to the root for a reply; per bundle the marking, the channel and its authors
    (the demo's authors alternate: every bundle holds all of them); and per bundle a copy of
    each thread root its replies refer to that it does not deliver itself (`bundles`: which
    posts each written bundle delivers; the root's author is already there)."""
    from mattermost_connector.config import ConnectorSettings
    from mattermost_connector.wording import amount

    posts = sim.live_posts(channel["id"])
    files = sum(len(p["file_ids"]) for p in posts)
    per_posts = 2 * len(posts) + sum(1 for p in posts if p["root_id"])
    header = 2 + len({p["user_id"] for p in posts})
    cap = ConnectorSettings.model_fields["bundle_max_objects"].default
    count = math.ceil(per_posts / (cap - header - 2))  # whole posts: at most 2 left unused
    copies = 0
    for bundle in bundles or []:
        carried = {m["url"].rsplit("/", 1)[-1] for m in delivered_messages(bundle)}
        roots = {sim.state.posts[i]["root_id"] for i in carried} - {""}
        copies += len(roots - carried)
    objects = per_posts + count * header + copies
    fates = f" ({files} embedded)" if files else ""  # a directory embeds every file under the cap
    return (
        f"ok, {amount(len(posts), 'post')}, {amount(files, 'file')}{fates}, "
        f"{amount(objects, 'object')}"
    )


def channel_bundles(bundles: list[STIX], name: str) -> list[STIX]:
    """The bundles that deliver the channel named `name` (each holds its Channel object)."""
    return [b for b in bundles if any(o.get("name") == name for o in b["objects"])]
