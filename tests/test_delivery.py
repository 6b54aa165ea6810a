"""Attachments and delivery at scale: caps, names, recovery, bounded bundles, outages."""

from __future__ import annotations

import base64
import json
import random
import tempfile
import time
from pathlib import Path

import pika
import pytest

from mattermost_connector.config import DEFAULT_MAX_ATTACHMENT, RABBITMQ_MAX_MESSAGE
from mattermost_connector.mattermost.client import PER_PAGE
from mattermost_connector.state import StateStore
from mattermost_connector.stix import message_id
from tasks.extract import BATCH_POSTS
from tests.checks import objects_by_id, queue_messages, worker_reports
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN
from tests.fake_opencti import FakeOpenCTI
from tests.test_incremental import World


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


def test_size_cap_and_sanitised_names_are_recorded(world: World):
    channel = world.channel("files")
    small, small_data = attach(world, channel, "../../reports/q3\x07 report.pdf", 1000)
    big, _ = attach(world, channel, "dump.bin", 300_000)
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
    assert report["files"] == 1 and "dump.bin" in files_of(world, channel, big)


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
    assert report["files"] == 1 and files_of(world, channel, post) == {"evidence.zip": data}
    assert store.attachments(channel["id"])[0]["status"] == "embedded"
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


@pytest.mark.amqp
def test_five_files_at_the_cap_fit_one_rabbitmq_message(
    world: World, platform: FakeOpenCTI, push_queue: str
):
    channel = world.channel("heavy")
    rng = random.Random(5)
    text = "".join(
        rng.choice('é漢字🔥"\\\n') for _ in range(16383)
    )  # the longest, worst-escaped text
    posts = []
    for index in range(3):
        infos = [
            world.sim.add_file(
                world.authors[0],
                f"f{index}-{n}.bin",
                rng.randbytes(DEFAULT_MAX_ATTACHMENT),
                "application/octet-stream",
            )
            for n in range(5)
        ]
        posts.append(world.sim.add_post(channel, world.authors[0], text, files=infos))
    world.configure([channel], **amqp_env(world, platform))
    (report,) = world.sync()
    assert report["files"] == 15
    bodies = drain(push_queue)
    assert max(len(body) for body in bodies) < RABBITMQ_MAX_MESSAGE
    contents = [json.loads(base64.b64decode(json.loads(b)["content"])) for b in bodies]
    objects = objects_by_id(contents)
    for post in posts:
        obj = objects[message_id(world.context(channel), post["id"])]
        assert obj["content"] == text and len(obj["x_opencti_files"]) == 5
        for entry in obj["x_opencti_files"]:
            stored = next(
                f for f in world.sim.state.files.values() if f.info["name"] == entry["name"]
            )
            assert base64.b64decode(entry["data"]) == stored.data


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
    from flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    (report,) = state.result(raise_on_failure=False)
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
    from flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    assert set(Path(tempfile.gettempdir()).glob(spools)) == before
