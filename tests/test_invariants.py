"""Invariants that once only a slow CLI or Prefect test (or none) would catch, each pinned here
in the domain, in seconds, without Prefect: a post's tenth file, the `deleted` label, the
`since` cap, OpenCTI work expectations, the channel lease, an archived channel's 403, the
change watermark's look-back, a deleted root's replies in live mode, a skipped `seq`, and a
reply whose root cannot be fetched."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mattermost_connector.attachments import download_attachments
from mattermost_connector.changes import (
    FULL_CHECK_REASONS,
    SINCE_CAP,
    FullCheck,
    deleted_version,
    judge_since,
    scan_since,
    stale,
    unaccounted,
)
from mattermost_connector.config import TLP
from mattermost_connector.cursor import Cursor
from mattermost_connector.errors import ChannelArchived, stops_the_run
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.live.events import HELLO, POST_DELETED, POSTED, LiveEvent
from mattermost_connector.live.socket import MattermostSocket
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.pipeline import changed_posts, lifecycle, new_posts
from mattermost_connector.pipeline.services import Services
from mattermost_connector.state import StateStore
from mattermost_connector.stix import DELETED_LABEL, ChannelContext, iter_bundles, message_id
from tests.mattermost_sim import MattermostSimulator
from tests.support import make_client

TOKEN = "invariants-reader-token"
CONTEXT = ChannelContext("c" * 26, "cti/town", None, "cti", "O", 1, "https://mm.example")
ALICE = {"id": "a" * 26, "username": "alice", "email": "", "create_at": 1}


def media(parts: Any) -> dict[str, dict[str, Any]]:
    """The media-contents of these bundle parts, by id."""
    return {
        o["id"]: o
        for part in parts
        for o in json.loads(part.json)["objects"]
        if o["type"] == "media-content"
    }


def relationships(parts: Any) -> set[tuple[str, str]]:
    return {
        (o["source_ref"], o["target_ref"])
        for part in parts
        for o in json.loads(part.json)["objects"]
        if o["type"] == "relationship"
    }


def row(n: int, *, root: str = "", **extra: Any) -> dict[str, Any]:
    """A post as the server lists it."""
    at = 1_700_000_000_000 + n
    return {
        "id": f"{n:026d}",
        "channel_id": CONTEXT.channel_id,
        "root_id": root,
        "user_id": ALICE["id"],
        "create_at": at,
        "update_at": at,
        "edit_at": 0,
        "delete_at": 0,
        "message": f"post {n}",
        "type": "",
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / 'state.db'}")


@pytest.fixture
def reader(sim: MattermostSimulator) -> SimpleNamespace:
    """A reader and an author in one channel of the simulator."""
    user = sim.add_user("reader", token=TOKEN)
    alice = sim.add_user("alice")
    team = sim.add_team("cti")
    channel = sim.add_channel(team, "town", members=[user, alice])
    return SimpleNamespace(sim=sim, alice=alice, channel=channel, client=make_client(sim, TOKEN))


# -- a post's files: all ten (the server's maximum) reach the bundles -------------------------


@pytest.mark.parametrize("queue", [False, True], ids=["directory", "opencti"])
def test_every_file_of_a_post_with_the_most_files_the_server_allows_is_delivered(
    reader: SimpleNamespace, tmp_path: Path, queue: bool
):
    """Post.IsValid allows 10 file ids (PostFileidsMaxRunes); each one is downloaded and
    carried by a bundle, whether one message holds them (directory) or they spread over
    several bundles (a queue message's size)."""
    sim = reader.sim
    files = [sim.add_file(reader.alice, f"f{n}.bin", bytes([n]) * 3000, "x/y") for n in range(10)]
    post = sim.add_post(reader.channel, reader.alice, "ten files", files=files)
    served = reader.client.post(post["id"])
    found = download_attachments(reader.client, [served], tmp_path / "spool", 10**6)
    assert [a.file_id for a in found[post["id"]]] == [f["id"] for f in files]
    parts = list(
        iter_bundles(
            CONTEXT,
            [served],
            {served["user_id"]: ALICE},
            found,
            TLP.AMBER,
            max_bytes=12_000 if queue else 10**15,
            queue=queue,
        )
    )
    carried = [a.file_id for part in parts for _, a in part.attachments]
    assert sorted(carried) == sorted(f["id"] for f in files)
    assert len(parts) > 1 if queue else len(parts) == 1
    if not queue:
        (message,) = media(parts).values()
        assert len(message["x_opencti_files"]) == len(files)


# -- deleted posts are labelled, whichever way the deletion was found ------------------------


def delivered_rows(store: StateStore, posts: list[dict[str, Any]]) -> dict[str, Any]:
    store.record_posts(CONTEXT.channel_id, posts)
    return store.delivered(post["id"] for post in posts)


def test_a_deletion_found_by_since_or_by_the_sweep_is_delivered_labelled_deleted(
    store: StateStore,
):
    """`since` answers a deleted post with an empty message; the sweep finds a post the
    listing no longer returns. Either way it goes again with its last text, labelled."""
    posts = [row(1), row(2), row(3)]
    delivered = delivered_rows(store, posts)
    by_since = {**posts[0], "message": "", "delete_at": 1_700_000_009_000, "update_at": 1}
    found = stale([by_since], delivered)
    found.append(deleted_version(delivered[posts[1]["id"]], 1_700_000_009_500))  # the sweep
    parts = iter_bundles(CONTEXT, found, {ALICE["id"]: ALICE}, {}, TLP.AMBER)
    objects = media(parts)
    for post in posts[:2]:
        message = objects.pop(message_id(CONTEXT, post["id"]))
        assert message["x_opencti_labels"] == [DELETED_LABEL]
        assert message["content"] == post["message"]  # the last text imported
    assert objects == {}  # the live post is not delivered again


# -- `since` is trusted only below its 1,000-row cap -----------------------------------------


class SinceClient:
    """Answers `since` with `changed` rows changed after it, and one root sent along."""

    def __init__(self, changed: int, since: int) -> None:
        root = row(0)  # update_at <= since: a root the server adds, not a change
        self.rows = [root] + [
            row(n, update_at=since + n, root=root["id"]) for n in range(1, changed + 1)
        ]

    def posts(self, channel_id: str, *, since: int) -> list[dict[str, Any]]:
        return self.rows


@pytest.mark.parametrize("changed", [SINCE_CAP - 1, SINCE_CAP, SINCE_CAP + 1])
def test_since_is_distrusted_from_exactly_its_cap(changed: int):
    since = 1_700_000_000_000
    rows = scan_since(SinceClient(changed, since), "c", since)  # type: ignore[arg-type]
    if changed < SINCE_CAP:
        assert rows is not None and len(rows) == changed + 1
    else:
        assert rows is None
    verdict = judge_since(
        rows,
        lambda ids: {},
        since,
        opened_at=Cursor(boundary_ms=since + 10**6, changes_ms=since),
        start_ms=0,
        include_system=False,
        msg_count=0,
        listed=0,
        last_post_at=0,
    )
    assert (verdict.full_check == FullCheck.CAPPED) == (changed >= SINCE_CAP)


def test_the_simulators_since_cut_makes_a_full_check(reader: SimpleNamespace):
    """Against the server's own cap (the simulator cuts at 1,000 rows, as
    post_store.go getPostsSinceCollapsedThreads does)."""
    sim = reader.sim
    for n in range(SINCE_CAP + 5):
        sim.add_post(reader.channel, reader.alice, f"burst {n}", create_at=1_700_000_000_000 + n)
    assert scan_since(reader.client, reader.channel["id"], 1) is None


# -- OpenCTI work expectations: exactly what OpenCTI's worker will report -------------------


def bundle_of(objects: int) -> str:
    ids = [f"identity--{n:08d}-0000-4000-8000-000000000000" for n in range(objects)]
    return json.dumps(
        {
            "type": "bundle",
            "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
            "objects": [
                {"type": "identity", "id": i, "name": i, "spec_version": "2.1"} for i in ids
            ],
        }
    )


@pytest.mark.amqp
@pytest.mark.parametrize(
    ("split", "ours"),
    [("false", True), ("false", False), ("true", False)],
    ids=["whole", "whole-by-pycti", "split"],
)
def test_a_work_expects_exactly_what_the_worker_will_report(
    platform: Any, push_queue: str, monkeypatch: pytest.MonkeyPatch, split: str, ours: bool
):
    """A work completes when the worker's reports reach its expectations: one too many and it
    never completes, one too few and it completes early. Whole bundles we publish, whole
    bundles pycti publishes (validation, drafts: pycti adds one expectation itself), and
    pycti's split path alike."""
    from mattermost_connector import delivery
    from mattermost_connector.delivery import OpenCTIDestination, Work
    from tests.checks import queue_messages, worker_reports
    from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN
    from tests.support import settings_with

    settings = settings_with(
        monkeypatch,
        OPENCTI_URL=platform.url,
        OPENCTI_TOKEN=OPENCTI_TOKEN,
        CONNECTOR_ID=CONNECTOR_ID,
        CONNECTOR_SEND_TO_QUEUE="true",
        CONNECTOR_SEND_TO_DIRECTORY="false",
        CONNECTOR_SPLIT_BUNDLES=split,
    )
    destination = OpenCTIDestination(settings)
    if not ours:
        monkeypatch.setattr(delivery, "plain_publish", lambda helper: False)
    work = Work("c1", "expectations")
    destination.open_work(work)
    sizes = [1, 4, 9]
    for sequence, objects in enumerate(sizes, 1):
        destination.send(work, bundle_of(objects), objects, sequence)
    destination.close_work(work, "done", in_error=False)
    messages = queue_messages(push_queue)
    assert sum(len(m["bundle"]["objects"]) for m in messages) == sum(sizes)
    (opened,) = platform.works.values()
    assert opened.expectations == worker_reports(messages) == sum(sizes)


# -- the channel lease ---------------------------------------------------------------------------


def test_a_released_lease_frees_the_channel_at_once_and_only_its_holder_releases_it(
    store: StateStore,
):
    assert store.try_lease("c", "run-1", 60)
    assert not store.try_lease("c", "run-2", 60)  # busy
    store.release_lease("c", "run-2")  # not the holder: changes nothing
    assert store.lease_holder("c")[0] == "run-1"
    assert not store.try_lease("c", "run-2", 60)
    store.release_lease("c", "run-1")
    assert store.lease_holder("c") is None
    assert store.try_lease("c", "run-2", 60)  # at once, not after the 60 s
    assert store.try_lease("c", "run-2", 60)  # its holder renews it


def test_a_lease_whose_holder_died_is_waited_for_then_expires(store: StateStore):
    """A run killed outright never releases: the next one waits for the lease to run out."""
    assert store.try_lease("c", "killed", 0.5)
    assert not store.try_lease("c", "next", 60)  # still held: wait
    threading.Event().wait(0.6)
    assert store.try_lease("c", "next", 60)


# -- an archived channel the server will not show is skipped, not failed ----------------------


class Destination:
    name = "fake"

    def __init__(self) -> None:
        self.closed: list[tuple[str, bool]] = []

    def open_work(self, work: Any) -> None:
        pass

    def close_work(self, work: Any, message: str, in_error: bool) -> None:
        self.closed.append((message, in_error))


def test_an_archived_channels_403_is_skipped_not_failed(
    reader: SimpleNamespace, store: StateStore, tmp_path: Path
):
    sim = reader.sim
    sim.add_post(reader.channel, reader.alice, "before the archive")
    sim.archive_channel(reader.channel["id"], reader.alice)
    sim.view_archived_channels = False
    mark = len(sim.requests)
    with pytest.raises(ChannelArchived) as refused:
        reader.client.posts(reader.channel["id"], page=0, per_page=60)
    assert not stops_the_run(refused.value)
    assert [r.status for r in sim.requests[mark:]] == [403]  # asked once
    destination = Destination()
    settings = SimpleNamespace(connector=SimpleNamespace(delivery_retries=0))
    services = Services(settings, reader.client, store, [destination], None)  # type: ignore[arg-type]
    run_id = store.start_run(reader.channel["id"], RunKind.SYNC)
    result = lifecycle.close(
        services,
        reader.channel["id"],
        run_id,
        None,
        RunKind.SYNC,
        None,
        archived=str(refused.value),
    )
    assert result.status == RunStatus.ARCHIVED and result.ok
    (history,) = store.runs(channel_id=reader.channel["id"])
    assert history.status == RunStatus.ARCHIVED


# -- the change watermark looks back -----------------------------------------------------------


class CursorStore:
    def __init__(self) -> None:
        self.saved: dict[str, Cursor] = {}

    def save_cursor(self, key: str, cursor: Cursor) -> None:
        self.saved[key] = cursor


def test_the_change_watermark_looks_back_past_changes_not_yet_committed(tmp_path: Path):
    """A change the server stamped just before the run started, but committed after the run's
    `since` read (up to SqlSettings.QueryTimeout, 30 s, later), must still be after the
    watermark the run commits, so that the next run's `since` returns it."""
    from tests.test_pipeline_core import channel_run

    store = CursorStore()
    destination = SimpleNamespace(name="fake", save_state=lambda channel, state: None)
    services = Services(None, None, store, [destination], None)  # type: ignore[arg-type]
    started = 1_700_000_600_000
    run = channel_run(tmp_path, Cursor(1000, changes_ms=1_700_000_000_000))
    run.server_start_ms = started
    committed = changed_posts.commit_changes(services, run)
    assert store.saved["c1"] == committed
    query_timeout_ms = 30_000
    late = {"update_at": started - query_timeout_ms + 1}  # committed within the timeout
    assert late["update_at"] > committed.changes_ms  # `since` returns UpdateAt > since
    again = changed_posts.commit_changes(services, run)  # never moves backwards
    assert again.changes_ms == committed.changes_ms


# -- live mode: a deleted root takes its replies -----------------------------------------------


def test_a_root_deleted_in_live_mode_takes_its_delivered_replies_along(store: StateStore):
    """The server sends one post_deleted event, for the root alone (its replies are deleted
    by the same statement, with no event): the witnessed changes must hold the replies too,
    and each is delivered again labelled deleted."""
    root = row(1)
    replies = [row(2, root=root["id"]), row(3, root=root["id"])]
    other = row(4)
    delivered_rows(store, [root, *replies, other])
    witness = ChangeWitness(clock_ms=lambda: 1_700_000_100_000)
    services = Services(None, None, store, [], None, witness=witness)  # type: ignore[arg-type]
    witness.opened(CONTEXT.channel_id)
    witness.end_scan(CONTEXT.channel_id)  # a first run, no gap since
    witness.saw(LiveEvent(POST_DELETED, 1, CONTEXT.channel_id, dict(root)))
    run = SimpleNamespace(channel_id=CONTEXT.channel_id)
    rows = changed_posts.changed_rows(services, run, 1)  # type: ignore[arg-type]
    assert rows is not None
    deleted = {r["id"] for r in rows if r.get("delete_at")}
    assert deleted == {root["id"], *(r["id"] for r in replies)}
    found = stale(rows, store.delivered(r["id"] for r in rows))
    objects = media(iter_bundles(CONTEXT, found, {ALICE["id"]: ALICE}, {}, TLP.AMBER))
    assert set(objects) == {message_id(CONTEXT, p["id"]) for p in [root, *replies]}
    assert all(o["x_opencti_labels"] == [DELETED_LABEL] for o in objects.values())


# -- live mode: a skipped `seq` is a gap ---------------------------------------------------------


class Frames:
    """A WebSocket connection that delivers these frames, then times out."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self.frames: Iterator[dict[str, Any]] = iter(frames)

    def recv(self, timeout: float | None = None) -> str:
        try:
            return json.dumps(next(self.frames))
        except StopIteration:
            raise TimeoutError from None

    def close(self) -> None:
        pass


def posted(seq: int, channel: str = "c1") -> dict[str, Any]:
    post = {"id": f"p{seq}", "channel_id": channel, "update_at": seq}
    return {"event": POSTED, "data": {"post": json.dumps(post)}, "seq": seq}


def test_a_skipped_seq_is_a_gap_that_resyncs_every_channel():
    """The server numbers a connection's events 0, 1, 2...: a number that skips means events
    were lost in between (a dropped queue), so every channel must be caught up over REST,
    and what the witness saw is no longer all there is."""
    from mattermost_connector.live.due import DueChannels
    from mattermost_connector.live.listener import RESYNC, Listener

    hello = {"event": HELLO, "data": {"connection_id": "k1"}, "seq": 0}
    frames = Frames([hello, posted(1), posted(2), posted(4), posted(5), posted(3)])
    settings = SimpleNamespace(api_url="http://mm/api/v4", protocol="http", token=None)
    socket = MattermostSocket(settings, connect=lambda url, **options: frames)  # type: ignore[arg-type]
    socket._conn = frames  # opened: the token and URL are the upgrade's tests' business
    events = [socket.receive(0) for _ in range(6)]
    assert [(e.seq, e.gap) for e in events] == [
        (0, True),  # a first hello: a new connection
        (1, False),
        (2, False),
        (4, True),  # 3 never came before it
        (5, False),
        (3, False),  # a late replay of an event already counted as lost: no new gap
    ]
    witness = ChangeWitness()
    due = DueChannels(settle=0)
    listener = Listener(
        socket, ["c1", "c2"], due, keepalive=True, delay=0, stop=threading.Event(), witness=witness
    )
    witness.opened("c2")
    witness.end_scan("c2")
    assert witness.snapshot("c2").complete
    for event in events:
        listener.handle(event)
    assert listener.resyncs == 1
    assert not witness.snapshot("c2").complete
    reasons = {d.channel_id: d.reasons for d in due.take(0)}
    assert set(reasons) == {"c1", "c2"} and RESYNC in reasons["c2"]


# -- a reply whose root cannot be fetched keeps its channel --------------------------------------


class NoRoots:
    """A server that has lost every root: GET /posts/{id} answers 404."""

    def post(self, post_id: str) -> dict[str, Any]:
        from mattermost_connector.errors import MattermostError

        raise MattermostError(f"GET /posts/{post_id}: 404", status=404)


def test_a_reply_whose_root_cannot_be_fetched_is_still_linked_to_its_channel(
    store: StateStore,
):
    from mattermost_connector.batches import complete_batch
    from mattermost_connector.stix import channel_id

    reply = row(5, root="r" * 26)
    users = SimpleNamespace(resolve=lambda ids: {ALICE["id"]: ALICE})
    batch = complete_batch(
        [reply], client=NoRoots(), store=store, users=users, include_system=False
    )  # type: ignore[arg-type]
    assert batch.missing_roots == ["r" * 26] and batch.posts == [reply]
    parts = list(
        iter_bundles(
            CONTEXT, batch.posts, batch.users, {}, TLP.AMBER, missing_roots=batch.missing_roots
        )
    )
    source = message_id(CONTEXT, reply["id"])
    assert relationships(parts) == {(source, channel_id(CONTEXT))}
    (message,) = media(parts).values()
    assert "thread root not available" in message["x_opencti_description"]


# -- the README's claims ---------------------------------------------------------------------


class Works:
    name = "works"

    def open_work(self, work: Any) -> None:
        pass

    def save_state(self, channel_id: str, state: dict[str, Any]) -> None:
        pass


def services_on(reader: SimpleNamespace, store: StateStore) -> Services:
    """The channel pipeline's services on the simulator, a SQLite store and no destination."""
    mattermost = SimpleNamespace(
        server_url=f"http://127.0.0.1:{reader.sim.port}",
        start_timestamp=0,
        include_system_messages=False,
    )
    connector = SimpleNamespace(state_database_url="sqlite:///unused.db")
    settings = SimpleNamespace(mattermost=mattermost, connector=connector)
    users = SimpleNamespace(resolve=lambda ids: {})
    return Services(settings, reader.client, store, [Works()], users)  # type: ignore[arg-type]


def deliver_new_posts(services: Services, channel_id: str) -> Any:
    """A sync's new-posts pass, each batch recorded as its delivery would record it."""
    run_id = lifecycle.start_run(services, channel_id, RunKind.SYNC, None, None)
    run = lifecycle.open_channel(services, channel_id, run_id, RunKind.SYNC)
    while True:
        batch = new_posts.read_batch(services, run)
        services.store.record_delivery(run.cursor_key, channel_id, batch.cursor, batch.posts)
        run = replace(
            run,
            cursor=batch.cursor,
            listed=run.listed + batch.listed,
            ahead=run.ahead + batch.ahead,
        )
        if batch.exhausted:
            return run


@pytest.mark.parametrize("failed", [True, False], ids=["failed", "completed"])
def test_a_run_that_failed_after_listing_new_posts_makes_the_next_check_every_post(
    reader: SimpleNamespace, store: StateStore, failed: bool
):
    """The channel's message count is compared with the posts each run listed, but only a run
    that completes (commits its changes) records the count it read: after a run that failed
    once it had listed new posts, the next run cannot tell them from posts that came in
    behind the cursor, and checks every post. After a completed run, `since` is trusted."""
    sim, channel_id = reader.sim, reader.channel["id"]
    for n in range(5):
        sim.add_post(reader.channel, reader.alice, f"before {n}")
    services = services_on(reader, store)
    first = deliver_new_posts(services, channel_id)
    changed_posts.commit_changes(services, first)
    sim.advance_clock(60_000)
    for n in range(3):
        sim.add_post(reader.channel, reader.alice, f"after {n}")
    second = deliver_new_posts(services, channel_id)
    assert second.listed == 3
    if not failed:
        changed_posts.commit_changes(services, second)
    sim.advance_clock(60_000)
    third = deliver_new_posts(services, channel_id)
    assert third.listed == 0
    checked = third.cursor_before.messages
    missing = unaccounted(checked, third.total_posts, third.listed)
    assert missing == (3 if failed else 0)
    batch, note = changed_posts.scan_changes(services, third)
    assert (batch is None) == failed
    assert note == (FULL_CHECK_REASONS[FullCheck.UNCOUNTED] if failed else None)


def test_a_second_signal_stops_live_mode_at_once_and_the_cli_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import signal

    from mattermost_connector.live.stopping import stop_on_signals
    from mattermost_prefect import cli

    stop, asked = threading.Event(), []
    handler = stop_on_signals(stop, lambda: (asked.append(True), stop.set()))
    handler(signal.SIGTERM, None)  # the first: finish the delivery in flight
    assert asked == [True] and stop.is_set()
    monkeypatch.setattr(cli, "_PREFECT_DEFAULTS", {})  # leave this process's environment be
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setitem(cli.COMMANDS, "live", lambda args: handler(signal.SIGINT, None))
    assert cli.main(["live"]) == 130  # the second: at once
    assert asked == [True]
    assert "interrupted" in capsys.readouterr().err


def channel_runs(events: int, seconds: float, run_seconds: float) -> int:
    """The runs DueChannels makes of `events` posts spread evenly over `seconds`, the
    delivery loop taking a channel whenever it is free and each run lasting `run_seconds`:
    time stepped by the millisecond on a fake clock."""
    from mattermost_connector.live.due import DueChannels

    now = 0.0
    due = DueChannels(clock=lambda: now)
    arrivals = iter([n * seconds / events for n in range(events)])
    upcoming = next(arrivals, None)
    free_at, runs = 0.0, 0
    while upcoming is not None or due.pending():
        while upcoming is not None and upcoming <= now + 1e-9:
            due.mark("c", "posted")
            upcoming = next(arrivals, None)
        if now >= free_at - 1e-9 and due.take(0):
            runs, free_at = runs + 1, now + run_seconds
        now = round(now + 0.001, 6)
    return runs


@pytest.mark.parametrize(("events", "seconds"), [(1000, 10.0), (300, 3.0)])
def test_a_burst_makes_one_run_per_busy_interval(events: int, seconds: float):
    """A first run SETTLE_SECONDS after the first post, then one every BUSY_INTERVAL while
    posts keep coming, the last taking the last post: 6 runs for 1,000 posts in 10 s (the
    README's "6 or 7": its 7th when the first run takes fewer than BUSY_EVENTS posts), 3 for
    tests/test_live.py's 300 in 3 s, whatever a run lasts up to BUSY_INTERVAL; fewer when
    runs last longer."""
    import math

    from mattermost_connector.live.due import BUSY_INTERVAL, SETTLE_SECONDS

    last_post = (events - 1) * seconds / events
    expected = 1 + math.ceil((last_post - SETTLE_SECONDS) / BUSY_INTERVAL)
    assert expected == {1000: 6, 300: 3}[events]
    for run_seconds in (0.0, 0.3, 1.0, BUSY_INTERVAL - 0.1):
        assert channel_runs(events, seconds, run_seconds) == expected
    assert 2 <= channel_runs(events, seconds, 2 * BUSY_INTERVAL) < expected


# -- the same invariants through a whole run (run_channel over plain steps, no Prefect) -------


def test_a_whole_run_delivers_all_ten_files_and_labels_a_deleted_thread(
    sim: MattermostSimulator, workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    """What the slow CLI tests checked, through every step a driver runs: the ten files of a
    post in its message and the state store, then a deleted root and its replies delivered
    again, labelled, by the next run's change scan."""
    from mattermost_connector.config import load_settings
    from mattermost_connector.delivery import destinations
    from mattermost_connector.mattermost.client import MattermostClient, RetryPolicy
    from mattermost_connector.mattermost.users import UserDirectory
    from mattermost_connector.pipeline.run import run_channel
    from mattermost_connector.pipeline.steps import plain_steps
    from tests.checks import directory_bundles, objects_by_id
    from tests.support import World

    world = World(sim, workdir, monkeypatch)
    channel = world.channel("whole")
    author = world.authors[0]
    files = [sim.add_file(author, f"f{n}.bin", bytes([n]) * 100, "x/y") for n in range(10)]
    loaded = sim.add_post(channel, author, "ten files", files=files)
    root = sim.add_post(channel, author, "root")
    replies = [sim.add_post(channel, world.authors[1], f"reply {n}", root=root) for n in range(2)]
    world.configure([channel])
    settings = load_settings()
    client = MattermostClient(settings.mattermost, retry=RetryPolicy(base_delay=0.01))
    store = StateStore(settings.connector.state_database_url)
    steps = plain_steps(
        Services(settings, client, store, destinations(settings), UserDirectory(client))
    )

    first = run_channel(steps, channel["id"])
    assert first.ok and first.counts.posts == 4 and first.counts.files == len(files)
    context = world.context(channel)
    objects = objects_by_id(directory_bundles(workdir / "bundles"))
    message = objects[message_id(context, loaded["id"])]
    assert sorted(f["name"] for f in message["x_opencti_files"]) == sorted(f["name"] for f in files)
    assert [a["status"] for a in store.attachments(channel["id"])] == ["embedded"] * len(files)

    sim.delete_post(root["id"])  # its replies go with it
    sim.advance_clock(60_000)
    before = set((workdir / "bundles").glob("*.json"))
    second = run_channel(steps, channel["id"])
    assert second.ok and second.counts.deleted == 1 + len(replies)
    latest = sorted(set((workdir / "bundles").glob("*.json")) - before)
    objects = objects_by_id([json.loads(path.read_text()) for path in latest])
    for post in [root, *replies]:
        again = objects[message_id(context, post["id"])]
        assert again["x_opencti_labels"] == [DELETED_LABEL]
        assert again["content"] == post["message"]
