"""Faults of the platform, the broker, the state store and the disk (issue 16), cut mid-run
through a TCP proxy the test controls (tests/tcp_proxy.py), never by touching the machine's
services. Each checks: every post delivered (by the same run when the fault is shorter than
the retry budget, else by the next), each OpenCTI work expecting exactly the objects of the
messages it was sent and closed, the lease released, the run history's counts and cause,
duplicates within the README's bound (CONNECTOR_DELIVERY_CONCURRENCY bundles per fault)."""

from __future__ import annotations

import errno
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mattermost_connector.amqp import Publisher
from mattermost_connector.delivery import OpenCTIDestination
from mattermost_connector.kinds import RunStatus
from mattermost_connector.pipeline import lifecycle, loading
from mattermost_connector.pipeline.spool import OWNER_FILE, store_identity
from mattermost_connector.state import StateStore
from mattermost_connector.stix import message_id
from tests.checks import delivered_messages, queue_messages
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN, run_cli
from tests.fake_opencti import FakeOpenCTI
from tests.support import POSTGRES, TOKEN, World, report_of
from tests.tcp_proxy import TcpProxy

CONCURRENCY = 3
OUTAGE = 0.8  # shorter than the budget below: the same run recovers
BUDGET = {"CONNECTOR_DELIVERY_RETRIES": "3", "CONNECTOR_DELIVERY_RETRY_DELAY": "0.3"}  # 2.1 s


@pytest.fixture
def world(prefect_api: str, sim, workdir: Path, monkeypatch) -> World:
    monkeypatch.setattr(tempfile, "tempdir", str(workdir / "tmp"))
    (workdir / "tmp").mkdir()
    return World(sim, workdir, monkeypatch)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A schema of its own on the machine's PostgreSQL; the URL without host and port."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield schema
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def env(platform: FakeOpenCTI, **extra: str) -> dict[str, str]:
    return {
        "OPENCTI_URL": platform.url,
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": CONNECTOR_ID,
        "CONNECTOR_SEND_TO_QUEUE": "true",
        "CONNECTOR_SEND_TO_DIRECTORY": "false",
        "CONNECTOR_BUNDLE_MAX_OBJECTS": "60",
        "CONNECTOR_DELIVERY_CONCURRENCY": str(CONCURRENCY),
        **BUDGET,
        **extra,
    }


def on_call(monkeypatch, owner: Any, name: str, number: int, fault) -> list[int]:
    """Run `fault()` just before the `number`th call of `owner.name`; returns the call count."""
    original, calls = getattr(owner, name), [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == number:
            fault()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


def sync(world: World) -> tuple[Any, list[dict]]:
    from mattermost_prefect.flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    return state, report_of(state)


def check_works(platform: FakeOpenCTI, messages: list[dict], broker_faults: int = 0) -> None:
    """Each work is closed and expects the objects of the messages sent for it, as the
    worker will report them. Exactly, unless the broker's connection was lost while a publish
    awaited its confirm (`broker_faults`): such a message may have landed uncounted, at most
    CONNECTOR_DELIVERY_CONCURRENCY of them per fault (README, Reliability)."""
    sent: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        sent[message["work_id"]].append(len(message["bundle"]["objects"]))
    assert sent, "no message reached the queue"
    for work in platform.works.values():
        reported = sum(sent[work.id])
        unconfirmed = broker_faults * CONCURRENCY * max(sent[work.id], default=0)
        assert reported - unconfirmed <= work.expectations <= reported, (work, sent[work.id])
        assert work.status == "complete", work  # workToProcessed reached the platform


def check_posts(world: World, channel: dict, messages: list[dict], faults: int) -> None:
    """Every live post delivered; posts delivered twice within the bound: the bundles in
    flight (CONNECTOR_DELIVERY_CONCURRENCY) per fault."""
    bundles = [m["bundle"] for m in messages]
    context = world.context(channel)
    delivered = world.deliveries(channel, bundles)
    live = world.sim.live_posts(channel["id"])
    assert all(delivered[p["id"]] >= 1 for p in live), "a post was lost"
    per_bundle = max(len(delivered_messages(b)) for b in bundles)
    twice = sum(count - 1 for count in delivered.values())
    assert twice <= faults * CONCURRENCY * per_bundle, twice
    assert message_id(context, live[0]["id"])  # the ids the platform would hold


def store_of(world: World, url: str | None = None) -> StateStore:
    return StateStore(url or f"sqlite:///{world.workdir / 'state.db'}")


def check_history(store: StateStore, channel: dict, report: dict, status: RunStatus) -> None:
    (run, *_) = store.runs(channel_id=channel["id"])
    assert run.status == status, run
    assert (run.posts, run.objects) == (report["posts"], report["objects"]), (run, report)
    assert store.lease_holder(channel["id"]) is None  # released


@pytest.mark.amqp
def test_rabbitmq_cut_mid_load_is_ridden_out_and_counted_once(
    world: World, platform: FakeOpenCTI, push_queue: str, monkeypatch
):
    channel = world.channel("broker-blip")
    world.populate(channel, 500)
    proxy = TcpProxy(5672)
    world.configure([channel], **env(platform, MQ_PORT=str(proxy.port)))
    on_call(monkeypatch, Publisher, "publish", 4, lambda: proxy.outage(OUTAGE))
    state, (report,) = sync(world)
    proxy.close()
    assert state.is_completed(), report
    assert proxy.cuts >= 1  # the fault did hit
    messages = queue_messages(push_queue)
    check_works(platform, messages, broker_faults=1)
    check_posts(world, channel, messages, faults=1)
    resent = len(messages) - len({m["bundle"]["id"] for m in messages})
    assert resent <= CONCURRENCY  # only a publish the cut left unconfirmed may be sent again
    check_history(store_of(world), channel, report, RunStatus.COMPLETED)


@pytest.mark.amqp
def test_rabbitmq_down_longer_than_the_budget_fails_the_channel_and_the_next_run_delivers(
    world: World, platform: FakeOpenCTI, push_queue: str, monkeypatch
):
    channel = world.channel("broker-down")
    world.populate(channel, 500)
    proxy = TcpProxy(5672)
    world.configure([channel], **env(platform, MQ_PORT=str(proxy.port)))
    on_call(monkeypatch, Publisher, "publish", 5, proxy.cut)
    started = time.monotonic()
    state, (report,) = sync(world)
    assert time.monotonic() - started < 30
    assert state.is_failed() and report["status"] == "failed"
    assert f"RabbitMQ at 127.0.0.1:{proxy.port} is unreachable" in report["error"]
    assert report["posts"] > 0 and report["objects"] > 0  # what it did deliver, recorded
    store = store_of(world)
    check_history(store, channel, report, RunStatus.FAILED)
    assert "RabbitMQ" in (store.runs(channel_id=channel["id"])[0].error or "")
    (failed_work,) = platform.works.values()
    assert failed_work.in_error and failed_work.status == "complete"
    proxy.restore()
    state, (report,) = sync(world)
    proxy.close()
    assert state.is_completed(), report
    messages = queue_messages(push_queue)
    check_works(platform, messages, broker_faults=1)
    check_posts(world, channel, messages, faults=1)
    check_history(store, channel, report, RunStatus.COMPLETED)


def test_platform_answering_500_leaves_exact_expectations_and_a_closed_work(
    world: World, platform: FakeOpenCTI, push_queue: str, monkeypatch
):
    """At the start (workAdd retried) and mid-run (addExpectations owed, then added before
    workToProcessed, which is retried too)."""
    channel = world.channel("api-500")
    world.populate(channel, 500)
    world.configure([channel], **env(platform))
    from mattermost_prefect.tasks import resources

    resources.outputs()  # registered before the outages
    on_call(monkeypatch, OpenCTIDestination, "open_work", 1, lambda: platform.fail_for(OUTAGE))
    on_call(monkeypatch, Publisher, "publish", 3, lambda: platform.fail_for(OUTAGE))
    state, (report,) = sync(world)
    assert state.is_completed(), report
    assert {"workAdd", "addExpectations"} <= set(platform.refused), platform.refused
    messages = queue_messages(push_queue)
    check_works(platform, messages)
    check_posts(world, channel, messages, faults=1)
    check_history(store_of(world), channel, report, RunStatus.COMPLETED)


def test_state_store_blips_at_lease_load_and_close_are_ridden_out(
    world: World, platform: FakeOpenCTI, push_queue: str, postgres: str, monkeypatch
):
    channel = world.channel("store-blips")
    world.populate(channel, 500)
    proxy = TcpProxy(5432)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    url += f"?options=-csearch_path%3D{postgres}"
    world.configure([channel], **env(platform, CONNECTOR_STATE_DATABASE_URL=url))
    from mattermost_prefect.tasks import resources

    resources.store()  # the schema, before the first blip
    on_call(monkeypatch, loading, "record", 3, lambda: proxy.outage(OUTAGE))
    on_call(monkeypatch, lifecycle, "close", 1, lambda: proxy.outage(OUTAGE))
    proxy.outage(OUTAGE)  # as the channel starts: its lease
    state, (report,) = sync(world)
    assert state.is_completed(), report
    assert proxy.cuts >= 3
    messages = queue_messages(push_queue)
    check_works(platform, messages)
    check_posts(world, channel, messages, faults=3)
    check_history(store_of(world, url), channel, report, RunStatus.COMPLETED)
    proxy.close()


def test_state_store_down_at_close_fails_that_channel_only_and_releases_its_lease(
    world: World, platform: FakeOpenCTI, push_queue: str, postgres: str, monkeypatch
):
    """Down from the first channel's closing until its lease's release (longer than
    closing's budget): that channel fails with the store's cause, its lease is released,
    its outcome written once the store answers, and the second channel runs."""
    first, second = world.channel("store-down-1"), world.channel("store-down-2")
    world.populate(first, 100)
    world.populate(second, 100)
    proxy = TcpProxy(5432)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    url += f"?options=-csearch_path%3D{postgres}"
    world.configure(  # one channel at a time: the outage is the first one's alone
        [first, second],
        **env(platform, CONNECTOR_STATE_DATABASE_URL=url, CONNECTOR_CHANNEL_CONCURRENCY="1"),
    )
    on_call(monkeypatch, lifecycle, "close", 1, proxy.cut)
    on_call(monkeypatch, StateStore, "release_lease", 1, proxy.restore)
    state, (one, two) = sync(world)
    assert state.is_failed()
    assert one["status"] == "failed" and "state store unavailable" in one["error"], one
    assert two["status"] == "completed", two
    store = store_of(world, url)
    assert store.lease_holder(first["id"]) is None
    (run,) = store.runs(channel_id=first["id"])  # written once the store answered again:
    assert (run.status, run.posts, run.error) == (RunStatus.COMPLETED, 100, None)  # its own
    check_history(store, second, two, RunStatus.COMPLETED)
    messages = queue_messages(push_queue)
    check_works(platform, messages)
    check_posts(world, first, messages, faults=1)
    proxy.close()


def test_disk_full_fails_at_once_naming_the_spool_and_the_next_run_delivers(
    world: World, monkeypatch
):
    from mattermost_connector import stix

    channel = world.channel("disk-full")
    world.populate(channel, 400)
    world.configure([channel], CONNECTOR_BUNDLE_MAX_OBJECTS="60", **BUDGET)

    def full(self, handle) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    write = stix.BundlePart.write
    monkeypatch.setattr(stix.BundlePart, "write", full)
    started = time.monotonic()
    state, (report,) = sync(world)
    assert time.monotonic() - started < 10  # not retried as if it were transient
    assert state.is_failed() and report["status"] == "failed"
    spool = Path(tempfile.gettempdir())
    assert (
        f"No space left on device writing {spool}/mattermost-{channel['id']}-" in (report["error"])
    )
    assert "bytes needed" in report["error"] and "TMPDIR" in report["error"]
    assert not list(spool.glob(f"mattermost-{channel['id']}-*"))  # the failed run's spool
    monkeypatch.setattr(stix.BundlePart, "write", write)
    world.sync()
    world.assert_complete(channel)


def test_a_killed_runs_spool_is_removed_by_the_channels_next_run(world: World):
    channel = world.channel("spool-left")
    world.populate(channel, 20)
    world.configure([channel])
    store = store_identity(f"sqlite:///{world.workdir / 'state.db'}")
    left = Path(tempfile.gettempdir()) / f"mattermost-{channel['id']}-killed"
    left.mkdir()
    (left / "bundle-000001.json").write_text("{}")
    (left / OWNER_FILE).write_text(json.dumps({"store": store, "run": 1}))  # lock free: dead
    other = Path(tempfile.gettempdir()) / "mattermost-another-channel-x"
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({"store": store, "run": 2}))
    world.sync()
    assert not left.exists() and other.exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"mattermost-{channel['id']}-*"))


@pytest.mark.amqp
def test_the_cli_reports_a_broker_outage_in_one_line_per_problem(
    prefect_api: str, sim, workdir: Path, platform: FakeOpenCTI, push_queue: str
):
    world = World(sim, workdir, pytest.MonkeyPatch())
    channel = world.channel("cli-broker-down")
    world.populate(channel, 50)
    proxy = TcpProxy(5672)
    proxy.cut()
    variables = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": channel["id"],
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
        "MQ_PORT": str(proxy.port),
        **env(platform),
    }
    done = run_cli(["sync"], variables, workdir, prefect_api)
    proxy.close()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and '{"timestamp"' not in done.stderr, done.stderr
    assert OPENCTI_TOKEN not in done.stderr
    assert any(f"RabbitMQ at 127.0.0.1:{proxy.port} is unreachable" in line for line in lines)
    assert all(len(line) < 700 for line in lines), lines


def test_a_work_the_api_would_not_close_is_closed_by_the_next_run(
    world: World, platform: FakeOpenCTI, push_queue: str, monkeypatch
):
    """The API down from the end of a run past the budget (2.1 s): the run still completes,
    its work is left open with one warning line, and the next run closes it, expectations
    first."""
    channel = world.channel("close-refused")
    world.populate(channel, 200)
    world.configure([channel], **env(platform))
    on_call(monkeypatch, OpenCTIDestination, "close_work", 1, lambda: platform.fail_for(3.0))
    state, (report,) = sync(world)
    assert state.is_completed(), report
    (work,) = platform.works.values()
    assert work.status == "wait"  # left open
    first = world.sim.add_post(channel, world.authors[0], "after the outage")
    time.sleep(max(0.0, platform.down_until - time.monotonic()))
    state, (report,) = sync(world)
    assert state.is_completed(), report
    messages = queue_messages(push_queue)
    check_works(platform, messages)  # both works closed, each with its exact expectations
    assert len(platform.works) == 2 and first
