"""Attachments and delivery at scale: caps, names, recovery, bounded bundles, outages."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from mattermost_connector.config import MIB
from mattermost_connector.mattermost.client import PER_PAGE
from mattermost_connector.pipeline.new_posts import BATCH_POSTS
from mattermost_connector.state import StateStore
from mattermost_connector.stix import message_id
from tests.checks import objects_by_id, queue_messages, worker_reports
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN
from tests.fake_opencti import FakeOpenCTI
from tests.support import World, report_of


@pytest.fixture
def world(prefect_api: str, sim, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def attach(
    world: World,
    channel,
    name: str,
    size: int,
    mime: str = "application/pdf",
    message: str = "see file",
):
    data = random.Random(size).randbytes(size)
    info = world.sim.add_file(world.authors[0], name, data, mime)
    return world.sim.add_post(channel, world.authors[0], message, files=[info]), data


def files_of(world: World, channel, post) -> dict[str, bytes]:
    obj = objects_by_id(world.bundles())[message_id(world.context(channel), post["id"])]
    return {f["name"]: base64.b64decode(f["data"]) for f in obj.get("x_opencti_files", [])}


def artifact_files(world: World, channel, post) -> dict[str, bytes]:
    """Files delivered as Artifacts (payload_bin) linked from the post's message."""
    bundles = world.bundles()
    message = message_id(world.context(channel), post["id"])
    linked = {
        o["target_ref"]
        for b in bundles
        for o in b["objects"]
        if o["type"] == "relationship" and o["source_ref"] == message
    }
    return {
        o["x_opencti_additional_names"][0]: base64.b64decode(o["payload_bin"])
        for b in bundles
        for o in b["objects"]
        if o["type"] == "artifact" and o["id"] in linked and "payload_bin" in o
    }


def assert_replayed_on_an_artifact(world: World, channel, post, name: str, data: bytes) -> None:
    """Through pycti's import, in bundle order and reversed: the file ends on an Artifact
    related to the message (OpenCTI would ignore it sent again with the message)."""
    from tests.replay_platform import bundle_texts, replay

    url = world.context(channel).permalink(post["id"])
    for reverse in (False, True):
        platform = replay(bundle_texts(world.workdir / "bundles"), reverse=reverse)
        (message,) = [e for e in platform.of_type("Media-Content") if e.attributes["url"] == url]
        (artifact,) = [e for e in platform.related(message) if e.entity_type == "Artifact"]
        assert [(f.name, f.data) for f in artifact.files.values()] == [(name, data)]
        assert platform.marking_definitions(artifact.markings) == {"TLP:AMBER"}
        assert name not in {f.name for f in message.files.values()}


def test_size_cap_and_sanitised_names_are_recorded(world: World):
    channel = world.channel("files")
    small, small_data = attach(world, channel, "../../reports/q3\x07 report.pdf", 1000)
    big, big_data = attach(world, channel, "dump.bin", 300_000)
    world.configure([channel], MATTERMOST_MAX_ATTACHMENT_SIZE="200k")
    (report,) = world.sync()
    assert report["files"] == 1
    assert files_of(world, channel, small) == {"q3 report.pdf": small_data}
    big_obj = objects_by_id(world.bundles())[message_id(world.context(channel), big["id"])]
    assert "x_opencti_files" not in big_obj
    assert (
        "dump.bin (300000 bytes, application/pdf): over MATTERMOST_MAX_ATTACHMENT_SIZE (204800 bytes)"
        in big_obj["x_opencti_description"]
    )
    rows = {
        r["name"]: r
        for r in StateStore(f"sqlite:///{world.workdir / 'state.db'}").attachments(channel["id"])
    }
    assert rows["dump.bin"]["status"] == "too_large" and rows["dump.bin"]["size"] == 300_000
    import hashlib

    assert rows["q3 report.pdf"]["sha256"] == hashlib.sha256(small_data).hexdigest()
    assert rows["q3 report.pdf"]["status"] == "embedded"
    # raising the cap fetches what was skipped for size, on the next run
    world.configure([channel], MATTERMOST_MAX_ATTACHMENT_SIZE="1MiB")
    (report,) = world.sync()
    # the message was delivered: the file goes as an Artifact linked to it
    assert report["files"] == 1 and "dump.bin" not in files_of(world, channel, big)
    assert artifact_files(world, channel, big)["dump.bin"] == big_data
    assert_replayed_on_an_artifact(world, channel, big, "dump.bin", big_data)
    rows = StateStore(f"sqlite:///{world.workdir / 'state.db'}").attachments(channel["id"])
    assert {r["name"]: r["status"] for r in rows}["dump.bin"] == "uploaded"


def test_a_file_that_fails_is_fetched_again_on_the_next_run(world: World):
    channel = world.channel("flaky-file")
    post, data = attach(world, channel, "evidence.zip", 5000, "application/zip")
    path = f"/api/v4/files/{post['file_ids'][0]}"
    world.sim.faults.failing_paths[path] = 503
    world.configure([channel])
    (report,) = world.sync()
    assert report["posts"] == 1 and report["files"] == 0
    first = objects_by_id(world.bundles())[message_id(world.context(channel), post["id"])]
    assert (
        "evidence.zip (5000 bytes, application/zip): GET /files/" in first["x_opencti_description"]
    )
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    assert store.attachments(channel["id"])[0]["status"] == "failed"
    del world.sim.faults.failing_paths[path]
    (report,) = world.sync()
    assert report["files"] == 1 and files_of(world, channel, post) == {}
    assert artifact_files(world, channel, post) == {"evidence.zip": data}
    assert_replayed_on_an_artifact(world, channel, post, "evidence.zip", data)
    assert store.attachments(channel["id"])[0]["status"] == "uploaded"
    (report,) = world.sync()  # settled: nothing fetched again
    assert report["files"] == 0 and report["updated"] == 0


def test_bundles_stay_under_their_bounds(world: World):
    channel = world.channel("bounded")
    world.populate(channel, 900, files_every=3)
    world.configure(
        [channel],
        CONNECTOR_BUNDLE_MAX_OBJECTS="150",
        CONNECTOR_BUNDLE_MAX_BYTES="1MiB",
        MATTERMOST_MAX_ATTACHMENT_SIZE="64k",
    )
    (report,) = world.sync()
    assert report["posts"] == 900
    paths = sorted((world.workdir / "bundles").glob("*.json"))
    assert len(paths) > 6
    for path in paths:
        assert path.stat().st_size <= 1 << 20
        assert len(json.loads(path.read_text())["objects"]) <= 150
    assert world.assert_complete(channel) == 900


def test_reimport_gives_identical_objects_and_file_entries(world: World):
    channel = world.channel("again")
    world.populate(channel, 120, files_every=10)
    world.configure([channel])
    world.sync()
    first = objects_by_id(world.bundles())
    (world.workdir / "state.db").unlink()  # forget everything: import it all again
    for path in (world.workdir / "bundles").glob("*.json"):
        path.unlink()
    world.configure([channel])
    world.sync()
    assert objects_by_id(world.bundles()) == first


def amqp_env(world: World, platform: FakeOpenCTI, **extra: str) -> dict[str, str]:
    return {
        "OPENCTI_URL": platform.url,
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": CONNECTOR_ID,
        "CONNECTOR_SEND_TO_QUEUE": "true",
        "CONNECTOR_SEND_TO_DIRECTORY": "false",
        "CONNECTOR_DELIVERY_RETRIES": "1",
        "CONNECTOR_DELIVERY_RETRY_DELAY": "0.1",
        **extra,
    }


def drain(queue: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    bodies = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        bodies.append(message[2])
    connection.close()
    return bodies


def file_adder(world: World, rng: random.Random, data: dict[str, bytes]):
    """`add(name, size, mime)`: a file of random bytes uploaded by the first author, its bytes
    kept in `data` by file id to compare with what arrives."""

    def add(name: str, size: int, mime: str = "application/octet-stream") -> dict:
        blob = rng.randbytes(size)
        info = world.sim.add_file(world.authors[0], name, blob, mime)
        data[info["id"]] = blob
        return info

    return add


def heavy_posts(world: World, channel) -> tuple[list[dict], dict[str, bytes]]:
    """Issue 10's scenario, as the server allows it: a post holds at most 10 files
    (PostFileidsMaxRunes), so 10 files of 8 MiB on one post, and the 40 MiB file on a reply
    of its own with an 11 MiB one and two small files sharing one name."""
    data: dict[str, bytes] = {}
    add = file_adder(world, random.Random(10), data)

    ten = [add(f"photo-{n}.jpg", 8 * MIB, "image/jpeg") for n in range(10)]
    root = world.sim.add_post(channel, world.authors[0], "", files=ten)  # files, no text
    # 11 MiB: over what a 16 MiB message holds once encoded twice (about 9.4 MiB)
    dump = [add("memory.dmp", 40 * MIB), add("capture.pcap", 11 * MIB)]
    dump.append(add("notes.txt", 100, "text/plain"))
    dump.append(add("notes.txt", 200, "text/plain"))
    reply = world.sim.add_post(channel, world.authors[0], "the dump", root=root, files=dump)
    return [root, reply], data


def expected_names(world: World, post) -> dict[str, str]:
    """file id -> name as stored: same-named files numbered in the post's order."""
    names: dict[str, str] = {}
    for file_id in post["file_ids"]:
        name = world.sim.state.files[file_id].info["name"]
        stem, _, ext = name.rpartition(".")
        number, unique = 1, name
        while unique in names.values():
            number += 1
            unique = f"{stem} ({number}).{ext}"
        names[file_id] = unique
    return names


def test_ten_large_files_and_a_huge_one_are_all_in_the_directory(world: World):
    """Directory mode embeds every file byte for byte up to MATTERMOST_MAX_ATTACHMENT_SIZE
    (100 MiB by default), a post larger than CONNECTOR_BUNDLE_MAX_BYTES alone in its bundle."""
    channel = world.channel("heavy")
    posts, data = heavy_posts(world, channel)
    world.configure([channel])
    (report,) = world.sync()
    assert report["status"] == "completed" and report["files"] == 14
    for post in posts:
        names = expected_names(world, post)
        assert files_of(world, channel, post) == {names[f]: data[f] for f in post["file_ids"]}
    root = objects_by_id(world.bundles())[message_id(world.context(channel), posts[0]["id"])]
    names = ", ".join(f"photo-{n}.jpg" for n in range(10))  # 128 characters: cut at 120
    assert root["title"] == names[:117] + "..."
    rows = StateStore(f"sqlite:///{world.workdir / 'state.db'}").attachments(channel["id"])
    assert sorted(r["status"] for r in rows) == ["embedded"] * 14
    assert sorted(r["name"] for r in rows if r["post_id"] == posts[1]["id"]) == [
        "capture.pcap",
        "memory.dmp",
        "notes (2).txt",
        "notes.txt",
    ]


@pytest.fixture
def rabbitmq_16mib() -> Iterator[int]:
    """The broker's max_message_size at RabbitMQ 4's default, 16 MiB, restored after."""
    import subprocess

    def ctl(expression: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "eval", expression], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    before = ctl("application:get_env(rabbit, max_message_size).")
    ctl(f"application:set_env(rabbit, max_message_size, {16 * MIB}).")
    try:
        yield 16 * MIB
    finally:
        if before.startswith("{ok,"):
            ctl(f"application:set_env(rabbit, max_message_size, {before[4:-1]}).")
        else:
            ctl("application:unset_env(rabbit, max_message_size).")


@pytest.mark.amqp
def test_ten_large_files_and_a_huge_one_reach_opencti_through_a_16mib_rabbitmq(
    world: World, platform: FakeOpenCTI, push_queue: str, rabbitmq_16mib: int
):
    """No message over the broker's limit; every file delivered: those that fit with their
    message, the others each alone in a message as an Artifact with its bytes, the 40 MiB one
    uploaded (GraphQL multipart) as an Artifact; the messages link every Artifact."""
    channel = world.channel("heavy")
    posts, data = heavy_posts(world, channel)
    world.configure([channel], **amqp_env(world, platform))
    (report,) = world.sync()
    assert report["status"] == "completed" and report["files"] == 14
    bodies = drain(push_queue)
    assert bodies and max(len(body) for body in bodies) <= rabbitmq_16mib
    bundles = [json.loads(base64.b64decode(json.loads(b)["content"])) for b in bodies]
    context = world.context(channel)
    stored: dict[str, dict[str, bytes]] = {}  # object id -> name -> bytes
    links: set[tuple[str, str]] = set()
    for bundle in bundles:
        for obj in bundle["objects"]:
            files = stored.setdefault(obj["id"], {})
            for entry in obj.get("x_opencti_files", []):
                files[entry["name"]] = base64.b64decode(entry["data"])
            if obj["type"] == "artifact" and "payload_bin" in obj:
                files[obj["x_opencti_additional_names"][0]] = base64.b64decode(obj["payload_bin"])
            if obj["type"] == "relationship":
                links.add((obj["source_ref"], obj["target_ref"]))
    for push in platform.pushed_files:  # created, then its file pushed (importPush)
        upload, file = push["observable"], push["file"]
        stored.setdefault(upload["stix_id"], {})[file["filename"]] = file["data"]
        hashes = {h["algorithm"]: h["hash"] for h in upload["Artifact"]["hashes"]}
        assert hashes["SHA-256"] == hashlib.sha256(file["data"]).hexdigest()
        assert push["fileMarkings"] == upload["objectMarking"]
    uploaded = sorted(len(p["file"]["data"]) for p in platform.pushed_files)
    assert uploaded == [11 * MIB, 40 * MIB]
    for post in posts:
        message = message_id(context, post["id"])
        names = expected_names(world, post)
        delivered = dict(stored.get(message, {}))
        for source, target in links:
            if source == message and target.startswith("artifact--"):
                delivered.update(stored[target])
        assert delivered == {names[f]: data[f] for f in post["file_ids"]}
    rows = StateStore(f"sqlite:///{world.workdir / 'state.db'}").attachments(channel["id"])
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("uploaded") >= 9 and set(statuses) == {"embedded", "uploaded"}


@pytest.mark.amqp
def test_a_run_reuses_its_rabbitmq_connections_and_closes_them(
    world: World, platform: FakeOpenCTI, push_queue: str, monkeypatch: pytest.MonkeyPatch
):
    """pycti alone opens a connection per bundle; a run opens one per concurrent sender at
    most, and none stays open after it. The works still expect what the worker reports."""
    opened: list[pika.BlockingConnection] = []

    class Counted(pika.BlockingConnection):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    channel = world.channel("many-bundles")
    world.populate(channel, 1200)
    world.configure(
        [channel],
        **amqp_env(
            world, platform, CONNECTOR_BUNDLE_MAX_OBJECTS="60", CONNECTOR_DELIVERY_CONCURRENCY="3"
        ),
    )
    monkeypatch.setattr(pika, "BlockingConnection", Counted)
    (report,) = world.sync()
    monkeypatch.undo()
    assert report["status"] == "completed"
    assert 1 <= len(opened) <= 3 and not any(c.is_open for c in opened)
    messages = queue_messages(push_queue)
    assert (
        len(messages) >= 40
        and sum(len(m["bundle"]["objects"]) for m in messages) == report["objects"]
    )
    delivered = objects_by_id([m["bundle"] for m in messages])
    context = world.context(channel)
    assert all(
        message_id(context, p["id"]) in delivered for p in world.sim.live_posts(channel["id"])
    )
    assert sum(w.expectations for w in platform.works.values()) == worker_reports(messages)


def outage_then_recovery(
    world: World, platform: FakeOpenCTI, break_it, fix_it, read, error: str
) -> None:
    """`error`: what the failed channel's report must name (the service that refused)."""
    channel = world.channel("outage")
    world.populate(channel, 450)
    break_it()
    from mattermost_prefect.flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    (report,) = report_of(state)
    assert report["status"] == "failed"
    assert error in report["error"], report["error"]
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    assert store.cursor(channel["id"]) is None  # nothing confirmed, nothing advanced
    assert OPENCTI_TOKEN not in report["error"]
    fix_it()
    (report,) = world.sync()
    assert report["status"] == "completed"
    delivered = objects_by_id(read())
    context = world.context(channel)
    assert all(
        message_id(context, p["id"]) in delivered for p in world.sim.live_posts(channel["id"])
    )
    assert any(w.in_error for w in platform.works.values())  # the failed run's work says so


def test_platform_refusing_bundles_loses_nothing(world: World, platform: FakeOpenCTI):
    world.configure([], **amqp_env(world, platform, CONNECTOR_QUEUE_PROTOCOL="api"))

    def configure():
        world.configure(
            [c for c in world.sim.state.channels.values()],
            **amqp_env(world, platform, CONNECTOR_QUEUE_PROTOCOL="api"),
        )

    def break_it():
        configure()
        platform.fail_operations.add("StixBundlePush")

    def fix_it():
        platform.fail_operations.clear()
        platform.pushed_bundles.clear()

    outage_then_recovery(
        world,
        platform,
        break_it,
        fix_it,
        lambda: [p["bundle"] for p in platform.pushed_bundles],
        error="OpenCTI bundle delivery failed: ValueError: {'name': 'FUNCTIONAL_ERROR'",
    )


@pytest.mark.amqp
def test_rabbitmq_down_loses_nothing(world: World, platform: FakeOpenCTI, push_queue: str):
    def break_it():
        world.configure(
            list(world.sim.state.channels.values()), **amqp_env(world, platform, MQ_PORT="1")
        )

    def fix_it():
        world.monkeypatch.delenv("MQ_PORT")
        world.configure(list(world.sim.state.channels.values()), **amqp_env(world, platform))

    def read():
        return [json.loads(base64.b64decode(json.loads(b)["content"])) for b in drain(push_queue)]

    outage_then_recovery(
        world, platform, break_it, fix_it, read, error="RabbitMQ at 127.0.0.1:1 is unreachable"
    )


@pytest.mark.amqp
def test_refused_publish_fails_after_bounded_retries(
    world: World, platform: FakeOpenCTI, push_queue: str
):
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    admin = connection.channel()
    full = push_queue + "-full"
    admin.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})

    def break_it():
        admin.queue_bind(
            full, platform.push_exchange, routing_key=platform.push_routing(CONNECTOR_ID)
        )
        world.configure(list(world.sim.state.channels.values()), **amqp_env(world, platform))

    def fix_it():
        admin.queue_unbind(
            full, platform.push_exchange, routing_key=platform.push_routing(CONNECTOR_ID)
        )
        drain(push_queue)  # what the refused run managed to publish before the refusal

    def read():
        return [json.loads(base64.b64decode(json.loads(b)["content"])) for b in drain(push_queue)]

    try:
        outage_then_recovery(
            world, platform, break_it, fix_it, read, error="RabbitMQ refused the bundle"
        )
    finally:
        admin.queue_delete(full)
        connection.close()


def test_a_failed_delivery_leaves_no_spooled_files_behind(world: World, platform: FakeOpenCTI):
    """The next batch (files included) is read while this one is delivered: when delivery
    fails, what that read-ahead downloaded is removed with the run's spool, not left in /tmp."""
    channel = world.channel("spool")
    world.populate(channel, BATCH_POSTS + 300, files_every=40)  # files in both batches
    world.configure([channel], **amqp_env(world, platform, CONNECTOR_QUEUE_PROTOCOL="api"))
    platform.fail_operations.add("StixBundlePush")
    listings = []

    def slow_second_batch_files(path: str, query: dict) -> None:
        if path.endswith("/posts") and "after" in query:
            listings.append(path)
        elif path.startswith("/api/v4/files/") and len(listings) > BATCH_POSTS // PER_PAGE:
            time.sleep(0.3)  # still downloading when the first batch's delivery fails

    world.sim.on_request = slow_second_batch_files
    spools = f"mattermost-{channel['id']}-*"
    before = set(Path(tempfile.gettempdir()).glob(spools))
    from mattermost_prefect.flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    assert set(Path(tempfile.gettempdir()).glob(spools)) == before


@pytest.mark.amqp
def test_every_file_fate_is_reported_and_a_failed_upload_is_tried_again(
    world: World, platform: FakeOpenCTI, push_queue: str
):
    """One queue message holds about 786,000 bundle bytes here: a small file goes with its
    message, a 500 KB one alone in a message as an Artifact, a 700 KB one would be uploaded
    but the platform refuses it, a 3 MB one is over the cap, one download fails. Every fate
    is in the report; the refused upload is not the channel's failure, and the next run
    uploads it; the post whose file failed is deleted meanwhile: its file is gone."""
    channel = world.channel("fates")
    attach(world, channel, "small.txt", 1000, "text/plain")
    attach(world, channel, "mid.bin", 500_000)
    _, refused_data = attach(world, channel, "refused.bin", 700_000)
    attach(world, channel, "huge.iso", 3_000_000)
    flaky, _ = attach(world, channel, "flaky.zip", 2000, "application/zip")
    world.sim.faults.failing_paths[f"/api/v4/files/{flaky['file_ids'][0]}"] = 503
    platform.fail_operations.add("StixCyberObservableEdit")
    world.configure(
        [channel],
        **amqp_env(
            world,
            platform,
            CONNECTOR_QUEUE_MAX_MESSAGE_SIZE="1MiB",
            MATTERMOST_MAX_ATTACHMENT_SIZE="2MiB",
        ),
    )
    (report,) = world.sync()
    assert report["status"] == "completed", report["error"]
    assert report["fates"] == {"embedded": 1, "uploaded": 1, "too_large": 1, "failed": 2}
    from mattermost_connector.channel_run import ChannelResult

    assert (
        "(1 embedded, 1 uploaded, 1 too large, 2 failed)"
        in ChannelResult.from_row(report).summary()
    )
    rows = {
        r["name"]: r
        for r in StateStore(f"sqlite:///{world.workdir / 'state.db'}").attachments(channel["id"])
    }
    assert rows["refused.bin"]["status"] == "failed"
    assert "StixCyberObservableEdit refused" in rows["refused.bin"]["error"]
    platform.fail_operations.clear()
    world.sim.delete_post(flaky["id"])
    drain(push_queue)
    (report,) = world.sync()
    assert report["status"] == "completed", report["error"]
    assert report["fates"] == {"uploaded": 1, "gone": 1}
    (push,) = platform.pushed_files
    assert push["file"]["data"] == refused_data and push["file"]["filename"] == "refused.bin"
    assert platform.observables[-1]["stix_id"] == push["observable"]["stix_id"]


def replay_queue(bodies: list[bytes], platform: FakeOpenCTI, order: str):  # -> ReplayPlatform
    """What OpenCTI stores of a queue-mode run: its uploads as pycti sent them (each before
    any bundle naming its Artifact was published), then every queued bundle through pycti's
    own import (tests/replay_platform.py): in `order` "forward", "reverse", or "copies
    first" (bundles holding a reply's copy of its root, then the others reversed)."""
    from tests.checks import root_copies
    from tests.replay_platform import ReplayPlatform

    replayed = ReplayPlatform().start()
    try:
        for push in platform.pushed_files:
            created = replayed.answer("StixCyberObservableAdd", push["observable"])
            internal = created["data"]["stixCyberObservableAdd"]["id"]
            replayed.answer("StixCyberObservableEdit", {**push, "id": internal})
        texts = [base64.b64decode(json.loads(body)["content"]).decode() for body in bodies]
        if order != "forward":
            texts = texts[::-1]
        if order == "copies first":
            texts.sort(key=lambda text: not root_copies(json.loads(text)))
        replayed.rejected = replayed.import_bundles(texts)
    finally:
        replayed.stop()
    return replayed


@pytest.mark.amqp
def test_queue_mode_files_of_every_size_reach_the_platform_through_pycti_in_any_order(
    world: World, platform: FakeOpenCTI, push_queue: str
):
    """Issue 10's scenario at a 1 MiB message (about 786,000 bundle bytes): a root with ten
    files of 300 KiB (one fits beside its message, the others go alone as Artifacts with
    their bytes), a reply with a 3 MiB and an 800 KiB file (uploaded) and two small files
    sharing a name; one of the root's files fails at first and is fetched by the next run,
    which also brings a reply (its bundle holds a copy of the root). The bundles of both
    runs, through pycti's import in order and reversed: every file's bytes are on the
    message or on an Artifact related to it, with its name, MIME type, hashes and marking."""
    from tests.replay_platform import Entity, ReplayPlatform

    channel = world.channel("heavy-replay")
    data: dict[str, bytes] = {}
    add = file_adder(world, random.Random(4), data)

    ten = [add(f"photo-{n}.jpg", 300 * 1024, "image/jpeg") for n in range(10)]
    root = world.sim.add_post(channel, world.authors[0], "", files=ten)
    dump = [add("memory.dmp", 3 * MIB), add("capture.pcap", 800 * 1024)]
    dump += [add("notes.txt", 100, "text/plain"), add("notes.txt", 200, "text/plain")]
    reply = world.sim.add_post(channel, world.authors[0], "the dump", root=root, files=dump)
    flaky = f"/api/v4/files/{ten[3]['id']}"
    world.sim.faults.failing_paths[flaky] = 503
    world.configure([channel], **amqp_env(world, platform, CONNECTOR_QUEUE_MAX_MESSAGE_SIZE="1MiB"))
    (report,) = world.sync()
    assert report["fates"]["failed"] == 1
    del world.sim.faults.failing_paths[flaky]
    late = world.sim.add_post(channel, world.authors[1], "seen it", root=root)
    (report,) = world.sync()
    # the root again: the file its first delivery embedded, and the one fetched now
    assert report["fates"] == {"embedded": 1, "uploaded": 1}
    bodies = drain(push_queue)
    assert max(len(body) for body in bodies) <= MIB
    assert sorted(len(p["file"]["data"]) for p in platform.pushed_files) == [800 * 1024, 3 * MIB]
    context = world.context(channel)

    def stored(replayed: ReplayPlatform, message: Entity) -> dict[str, bytes]:
        found = {}
        for file in message.files.values():
            assert replayed.marking_definitions(file.markings) == {"TLP:AMBER"}
            found[file.name] = (file.data, file.mime_type)
        for artifact in replayed.related(message):
            if artifact.entity_type != "Artifact":
                continue
            assert replayed.marking_definitions(artifact.markings) == {"TLP:AMBER"}
            (file,) = artifact.files.values()
            hashes = {h["algorithm"]: h["hash"] for h in artifact.attributes["hashes"]}
            assert hashes == {
                "MD5": hashlib.md5(file.data).hexdigest(),
                "SHA-1": hashlib.sha1(file.data).hexdigest(),
                "SHA-256": hashlib.sha256(file.data).hexdigest(),
            }
            assert artifact.attributes["x_opencti_additional_names"] == [file.name]
            assert artifact.attributes["mime_type"] == file.mime_type
            if file.markings:  # uploaded: the file marked as its Artifact
                assert replayed.marking_definitions(file.markings) == {"TLP:AMBER"}
            found[file.name] = (file.data, file.mime_type)
        return found

    for order in ("forward", "reverse", "copies first"):
        replayed = replay_queue(bodies, platform, order)
        assert replayed.rejected == [] and replayed.missing_references == []
        messages = {e.attributes["url"]: e for e in replayed.of_type("Media-Content")}
        for post in (root, reply, late):
            names = expected_names(world, post)
            message = messages[context.permalink(post["id"])]
            assert stored(replayed, message) == {
                names[f]: (data[f], world.sim.state.files[f].info["mime_type"])
                for f in post["file_ids"]
            }, (post["message"], order)


def test_directory_file_names_sort_in_bundle_order_with_concurrent_sends(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Bundles are sent CONNECTOR_DELIVERY_CONCURRENCY at once, so they land in any order
    (here the first one is held back while the others are written): names still sort in
    the run's bundle order, which is the posts' order, and a later run's after them."""
    from mattermost_connector.delivery import DirectoryDestination

    channel = world.channel("ordered")
    world.populate(channel, 300)
    send, calls = DirectoryDestination.send, []

    def late_first(self, work, bundle, objects, sequence=None) -> None:
        calls.append(sequence)
        if len(calls) == 1:
            time.sleep(1.0)  # the others are written meanwhile
        send(self, work, bundle, objects, sequence)

    monkeypatch.setattr(DirectoryDestination, "send", late_first)
    world.configure(
        [channel], CONNECTOR_DELIVERY_CONCURRENCY="4", CONNECTOR_BUNDLE_MAX_OBJECTS="40"
    )
    world.sync()
    world.populate(channel, 50)
    world.sync()
    context = world.context(channel)
    created = {
        message_id(context, p["id"]): p["create_at"] for p in world.sim.channel_rows(channel["id"])
    }
    from tests.checks import delivered_messages

    seen = [  # creation times of the messages, file after file in name order
        created[o["id"]]
        for bundle in world.bundles()
        for o in delivered_messages(bundle)
        if o["id"] in created
    ]
    assert len(calls) > 8 and len(seen) == 350
    assert seen == sorted(seen)
