"""The channel pipeline's invariants as plain Python, with fakes for the Mattermost client,
the state store, the destinations and the clock: no Prefect, no tasks, no flows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mattermost_connector.changes import FullCheck, judge_since
from mattermost_connector.channel_run import Batch, BundleFile, ChannelRun
from mattermost_connector.config import TLP
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.delivery import Work
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline import loading, new_posts
from mattermost_connector.pipeline.discards import DISCARDS, Discards
from mattermost_connector.pipeline.ordered import deliver_in_order, take_new_posts
from mattermost_connector.pipeline.positions import bundle_cursors, cut_at_window_end
from mattermost_connector.pipeline.services import Services
from mattermost_connector.state import message_digest
from mattermost_connector.stix import FIRST_NAME, ChannelContext


def post(n: int, *, create_at: int | None = None, kind: str = "", **extra: Any) -> dict:
    created = 1000 + n if create_at is None else create_at
    return {
        "id": f"p{n:03d}",
        "create_at": created,
        "update_at": created,
        "type": kind,
        "user_id": "u1",
        "message": f"m{n}",
        **extra,
    }


def channel_run(tmp_path: Path, cursor: Cursor | None = None, **fields: Any) -> ChannelRun:
    cursor = cursor or Cursor(boundary_ms=1000)
    return ChannelRun(
        channel_id="c1",
        kind=RunKind.SYNC,
        run_id=7,
        context=ChannelContext("c1", "town", None, "team", "O", 900, "https://mm"),
        cursor=cursor,
        cursor_before=cursor,
        last_post_at=0,
        work=Work("c1", "test"),
        spool=tmp_path,
        cursor_key="c1",
        **fields,
    )


# -- ordered delivery within a batch ----------------------------------------------------------


def test_sends_overlap_but_records_follow_the_order_and_stop_at_a_failure():
    """Later sends finish first, yet records go 0, 1, 2...; item 3 fails: nothing after it is
    recorded, and no record ever has more than `concurrency` items sent past it."""
    sent: list[int] = []
    recorded: list[int] = []
    lock = threading.Lock()

    def send(item: int) -> None:
        time.sleep(0.02 * (4 - item % 4))  # the first of each window is the slowest
        if item == 3:
            raise RuntimeError("broker refused bundle 3")
        with lock:
            sent.append(item)

    def record(item: int) -> None:
        with lock:
            assert item in sent
            assert max(sent) < item + 3  # at most 3 sent beyond what is recorded
        recorded.append(item)

    with pytest.raises(RuntimeError, match="bundle 3"):
        deliver_in_order(range(10), send, record, concurrency=3)
    assert recorded == [0, 1, 2]


# -- ordered delivery across batches: read ahead, transform, load ----------------------------


class Stages:
    """take_new_posts's stages over a plain executor, keeping a log of what happened when."""

    def __init__(self, batches: list[Batch], pool: ThreadPoolExecutor, fail_load: int = -1):
        self.batches = iter(batches)
        self.pool = pool
        self.fail_load = fail_load
        self.events: list[str] = []
        self.loading = 0  # loads started and not finished
        self.loads = 0
        self.lock = threading.Lock()

    def read(self, run: ChannelRun, pending: list[dict]) -> Future:
        return self.pool.submit(lambda: (next(self.batches), {}))

    def transform(self, run, batch, files, recent):
        bundles = [
            BundleFile(
                Path("b"), 1, 0, batch.posts, [], batch.cursor, sequence=run.counts.bundles + 1
            )
        ]
        return run.delivering(bundles), bundles

    def load(self, run: ChannelRun, bundles: list[BundleFile]) -> Future:
        number = self.loads
        self.loads += 1
        with self.lock:
            assert self.loading == 0, "a load started before the one before landed"
            self.loading += 1
            self.events.append(f"load {number} started")

        def work() -> None:
            time.sleep(0.05)
            with self.lock:
                self.loading -= 1
            if number == self.fail_load:
                self.events.append(f"load {number} failed")
                raise RuntimeError(f"load {number} failed")
            self.events.append(f"load {number} recorded {bundles[-1].cursor.boundary_ms}")

        return self.pool.submit(work)

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        with self.lock:
            assert self.loading == 0, "the cursor moved past a load still in flight"
        self.events.append(f"advance {cursor.boundary_ms}")

    def progress(self, run: ChannelRun) -> None:
        pass


def batch_of(posts: list[dict], start: Cursor, exhausted: bool = False, skipped: int = 0):
    cursor = start
    for p in posts:
        cursor = cursor.advance(p)
    return Batch(posts, {}, cursor, exhausted, Counts(posts=len(posts), skipped=skipped)), cursor


def test_loads_run_one_at_a_time_in_order_and_the_cursor_waits_for_them(tmp_path: Path):
    first, c1 = batch_of([post(1), post(2)], Cursor(1000))
    # only skipped system messages: the cursor moves alone, after batch 1's load landed
    system = Batch([], {}, Cursor(1005, ("p005",), "p002"), False, Counts(skipped=3))
    second, c2 = batch_of([post(6), post(7)], system.cursor)
    last = Batch([], {}, c2, True)
    with ThreadPoolExecutor(4) as pool:
        stages = Stages([first, system, second, last], pool)
        run = take_new_posts(channel_run(tmp_path), stages)
    assert stages.events == [
        "load 0 started",
        f"load 0 recorded {c1.boundary_ms}",
        "advance 1005",
        "load 1 started",
        f"load 1 recorded {c2.boundary_ms}",
    ]
    assert run.cursor == c2 and run.counts == Counts(
        posts=4, files=0, objects=2, skipped=3, bundles=2
    )


def test_a_failed_load_ends_the_pass_with_nothing_recorded_or_moved_after_it(tmp_path: Path):
    first, c1 = batch_of([post(1)], Cursor(1000))
    second, _ = batch_of([post(2)], c1)
    system = Batch([], {}, Cursor(1010), False, Counts(skipped=1))
    third, _ = batch_of([post(11)], system.cursor, exhausted=True)
    with ThreadPoolExecutor(4) as pool:
        stages = Stages([first, second, system, third], pool, fail_load=0)
        with pytest.raises(RuntimeError, match="load 0 failed"):
            take_new_posts(channel_run(tmp_path), stages)
        assert stages.loading == 0  # the load in flight was awaited before the error left
    assert "load 0 failed" in stages.events
    assert not [e for e in stages.events if "recorded" in e or "advance" in e]
    assert stages.loads <= 2  # batch 2 was built; it is never sent once batch 1 failed


def test_a_failure_while_a_load_is_in_flight_waits_for_it_before_leaving(tmp_path: Path):
    """Building batch 2 fails while batch 1 is loading: the load ends (it sends from the
    spool, which closing the run clears) before the error leaves the pass."""
    first, c1 = batch_of([post(1)], Cursor(1000))
    second, _ = batch_of([post(2)], c1)

    class Failing(Stages):
        def transform(self, run, batch, files, recent):
            if batch is second:
                raise ValueError("malformed post")
            return super().transform(run, batch, files, recent)

    with ThreadPoolExecutor(4) as pool:
        stages = Failing([first, second], pool)
        with pytest.raises(ValueError, match="malformed"):
            take_new_posts(channel_run(tmp_path), stages)
        assert stages.loading == 0 and stages.events[-1] == "load 0 recorded 1001"


# -- the cursor each bundle carries --------------------------------------------------------


def test_each_bundle_carries_the_cursor_after_its_posts_the_last_one_the_batchs():
    start = Cursor(1000)
    posts = [post(1), post(2), post(3), post(4)]
    skipped = post(5, kind="system_join_channel")  # read, left out: no bundle holds it
    batch_cursor = start
    for p in [*posts, skipped]:
        batch_cursor = batch_cursor.advance(p)
    bundles = [posts[:2], [], posts[2:]]  # the middle one: an Artifact alone, no post
    cursors = bundle_cursors(start, bundles, batch_cursor)
    assert cursors[0] == start.advance(posts[0]).advance(posts[1])
    assert cursors[1] == cursors[0]  # an artifact-only bundle holds where the one before did
    assert cursors[2] == batch_cursor and cursors[2].boundary_ids == ("p005",)
    assert bundle_cursors(start, bundles, None) == [None, None, None]  # edits: no move
    assert bundle_cursors(start, [], batch_cursor) == []


def test_transform_writes_bundles_that_carry_those_cursors(tmp_path: Path):
    """The pipeline's transform step over fake services: the last bundle is past a skipped
    post at the batch's end."""
    posts = [post(n) for n in range(1, 6)]
    batch, cursor = batch_of(posts, Cursor(1000))
    batch.cursor = cursor.advance(post(6, kind="system_join_channel"))
    settings = SimpleNamespace(
        connector=SimpleNamespace(
            bundle_max_objects=6, bundle_bytes=10**6, no_trigger_import=False, send_to_queue=True
        ),
        mattermost=SimpleNamespace(tlp=TLP.GREEN, extract_observables=False),
    )
    users = {"u1": {"id": "u1", "username": "ann", FIRST_NAME: "@ann"}}
    batch.users = users
    services = Services(settings, None, None, [], None)  # type: ignore[arg-type]
    bundles = new_posts.write_bundles(services, channel_run(tmp_path), batch, {})
    assert len(bundles) > 1 and all(b.path.exists() for b in bundles)
    assert [b.cursor for b in bundles] == bundle_cursors(
        Cursor(1000), [b.posts for b in bundles], batch.cursor
    )
    assert bundles[-1].cursor == batch.cursor


# -- the backfill window's cut -------------------------------------------------------------


def test_a_backfill_batch_stops_before_the_window_end():
    start = Cursor(1000)
    posts = [post(1), post(2), post(3, create_at=1003), post(4, create_at=1003), post(9)]
    read_to = start
    for p in posts:
        read_to = read_to.advance(p)
    kept, cursor, exhausted = cut_at_window_end(posts, start, read_to, False, end_ms=1003)
    assert [p["id"] for p in kept] == ["p001", "p002"]
    assert cursor == start.advance(posts[0]).advance(posts[1]) and exhausted
    # the read ends exactly at the window's end: those posts are after the window too
    at_end = start
    for p in posts[:4]:
        at_end = at_end.advance(p)
    kept, cursor, exhausted = cut_at_window_end(posts[:4], start, at_end, False, end_ms=1003)
    assert [p["id"] for p in kept] == ["p001", "p002"] and cursor.boundary_ms == 1002
    assert exhausted
    # nothing at or past the end: the read stands as it was
    assert cut_at_window_end(posts, start, read_to, False, end_ms=2000) == (posts, read_to, False)
    assert cut_at_window_end(posts, start, read_to, False, end_ms=None) == (posts, read_to, False)


# -- the edits/deletions decision ----------------------------------------------------------


def judge(rows, delivered=None, *, msg_count: int, listed: int = 0, checked=(10, 1000, 0)):
    opened = Cursor(1010, ("p010",), changes_ms=500, messages=checked)
    return judge_since(
        rows,
        lambda ids: {i: delivered[i] for i in ids if i in (delivered or {})},
        500,
        opened_at=opened,
        start_ms=0,
        include_system=False,
        msg_count=msg_count,
        listed=listed,
        last_post_at=1020,
    )


def delivered_row(p: dict, **changes: Any) -> dict:
    return {
        "post_id": p["id"],
        "user_id": p["user_id"],
        "root_id": "",
        "create_at": p["create_at"],
        "update_at": p["update_at"],
        "edit_at": 0,
        "delete_at": 0,
        "message": p["message"],
        "message_sha256": message_digest(p["message"]),
        **changes,
    }


def test_since_is_trusted_when_the_count_adds_up():
    old = post(1, create_at=900)
    edited = {**old, "message": "edited", "edit_at": 950, "update_at": 950}
    behind = post(2, create_at=950, update_at=960)  # never delivered, behind the cursor
    verdict = judge([edited, behind], {old["id"]: delivered_row(old)}, msg_count=11)
    assert verdict.full_check is None
    assert [p["id"] for p in verdict.stale] == ["p001"]
    assert [p["id"] for p in verdict.behind] == ["p002"]


def test_since_cut_at_1000_rows_means_a_full_check():
    assert judge(None, msg_count=10).full_check == FullCheck.CAPPED


def test_a_count_that_grew_beyond_the_posts_seen_means_a_full_check():
    verdict = judge([], msg_count=13, listed=1)  # 3 more posts, 1 listed: 2 came in unseen
    assert verdict.full_check == FullCheck.UNCOUNTED and verdict.missing == 2
    assert judge([], msg_count=11, listed=1).full_check is None


def test_counts_add_up_with_their_fates():
    total = Counts(posts=2, files=1, fates={"embedded": 1}) + Counts(
        posts=3, skipped=1, bundles=2, fates={"embedded": 2, "failed": 1}
    )
    assert total == Counts(
        posts=5, files=1, skipped=1, bundles=2, fates={"embedded": 3, "failed": 1}
    )
    assert total.fates_text() == "3 embedded, 1 failed"


# -- a step over fake services: the load records in order and mirrors the last cursor ---------


class FakeStore:
    def __init__(self) -> None:
        self.recorded: list[tuple[int | None, Cursor | None]] = []

    def record_delivery(
        self, key, channel_id, cursor, posts, count, files, run_id, tally=None
    ) -> None:
        self.recorded.append((posts[0]["create_at"] if posts else None, cursor))


class FakeDestination:
    name = "fake"

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.states: list[dict] = []

    def send(self, work, text, objects, sequence) -> None:
        if sequence == self.refuse:
            raise RuntimeError(f"bundle {sequence} refused")

    def save_state(self, channel_id, state) -> None:
        self.states.append(state)


def test_the_load_step_records_nothing_after_a_refused_bundle(tmp_path: Path):
    settings = SimpleNamespace(
        connector=SimpleNamespace(delivery_concurrency=2, delivery_retries=0)
    )
    store, destination = FakeStore(), FakeDestination(refuse=3)
    clock = lambda: datetime(2026, 1, 1, tzinfo=UTC)  # noqa: E731
    services = Services(settings, None, store, [destination], None, clock)  # type: ignore[arg-type]
    run = channel_run(tmp_path)
    bundles, cursor = [], run.cursor
    for n in range(1, 6):
        path = tmp_path / f"bundle-{n}.json"
        path.write_text("{}")
        cursor = cursor.advance(post(n))
        bundles.append(BundleFile(path, 1, 0, [post(n)], [], cursor, sequence=n))
    with pytest.raises(RuntimeError, match="bundle 3 refused"):
        loading.load(services, run, bundles)
    assert [c for _, c in store.recorded] == [bundles[0].cursor, bundles[1].cursor]
    DISCARDS.wait()  # recorded bundles' files are removed in the background
    assert not bundles[0].path.exists() and bundles[2].path.exists()  # kept for a retry
    assert destination.states == []  # mirrored once per batch, only when it completes
    store.recorded.clear()
    destination.refuse = -1
    loading.load(services, replace(run), bundles)  # the retry sends only what was not recorded
    assert [c for _, c in store.recorded] == [b.cursor for b in bundles[2:]]
    (state,) = destination.states
    assert state == {"cursor": bundles[-1].cursor.to_dict(), "updated_at": clock().isoformat()}


class StuckDiscards(Discards):
    """A disk so busy that no file handed over is removed yet."""

    def discard(self, *paths: Path) -> None:
        with self._lock:
            self._pending.update(paths)


class CountingDestination(FakeDestination):
    def __init__(self, refuse: int) -> None:
        super().__init__(refuse)
        self.sent: list[int] = []

    def send(self, work, text, objects, sequence) -> None:
        super().send(work, text, objects, sequence)
        self.sent.append(sequence)


def test_a_retried_load_skips_recorded_bundles_whose_files_are_not_removed_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Removing a delivered bundle's file is left to a background thread (pipeline/discards.py): until
    it is done the file is still there, and must count as gone, or the retry sends it again."""
    monkeypatch.setattr(loading, "DISCARDS", StuckDiscards())
    settings = SimpleNamespace(
        connector=SimpleNamespace(delivery_concurrency=1, delivery_retries=0)
    )
    store, destination = FakeStore(), CountingDestination(refuse=3)
    services = Services(settings, None, store, [destination], None)  # type: ignore[arg-type]
    run = channel_run(tmp_path)
    bundles, cursor = [], run.cursor
    for n in range(1, 5):
        path = tmp_path / f"bundle-{n}.json"
        path.write_text("{}")
        cursor = cursor.advance(post(n))
        bundles.append(BundleFile(path, 1, 0, [post(n)], [], cursor, sequence=n))
    with pytest.raises(RuntimeError, match="bundle 3 refused"):
        loading.load(services, run, bundles)
    assert bundles[0].path.exists()  # recorded, its removal still pending
    destination.refuse = -1
    loading.load(services, run, bundles)
    assert destination.sent == [1, 2, 3, 4]  # 3 refused then sent; 1 and 2 not sent again
    assert [c for _, c in store.recorded] == [b.cursor for b in bundles]


def test_a_file_downloaded_again_gets_a_path_of_its_own(tmp_path: Path):
    """A thread root's file is fetched again for a later batch's copies of the root while its
    first download may still be waiting for removal in the background: the same path would
    lose the new download."""
    from mattermost_connector.attachments import _fetch

    class Client:
        def download(self, file_id, sink, max_bytes):
            sink.write(b"bytes")
            return SimpleNamespace(mime_type="text/plain", size=5, sha256="x")

    info = {"id": "f" * 26, "name": "a.txt", "size": 5}
    first = _fetch(Client(), info, tmp_path, 100)  # type: ignore[arg-type]
    again = _fetch(Client(), info, tmp_path, 100)  # type: ignore[arg-type]
    assert first.path != again.path and first.path.exists() and again.path.exists()


class SlowRefusal(FakeDestination):
    """Refuses bundle `refuse` after the bundles sent beside it have gone through."""

    def __init__(self, refuse: int) -> None:
        super().__init__(refuse)
        self.sent: list[int] = []

    def send(self, work, text, objects, sequence) -> None:
        if sequence == self.refuse:
            time.sleep(0.3)
            raise RuntimeError(f"bundle {sequence} refused")
        self.sent.append(sequence)


def test_a_retried_load_sends_again_only_what_no_attempt_delivered(tmp_path: Path):
    """Bundles 3 and 4 were delivered while 2 failed, but not recorded (order): the retry
    records them without sending them again, so retries do not multiply duplicates."""
    settings = SimpleNamespace(
        connector=SimpleNamespace(delivery_concurrency=3, delivery_retries=0)
    )
    store, destination = FakeStore(), SlowRefusal(refuse=2)
    services = Services(settings, None, store, [destination], None)  # type: ignore[arg-type]
    run = channel_run(tmp_path)
    bundles, cursor = [], run.cursor
    for n in range(1, 6):
        path = tmp_path / f"bundle-{n}.json"
        path.write_text("{}")
        cursor = cursor.advance(post(n))
        bundles.append(BundleFile(path, 1, 0, [post(n)], [], cursor, sequence=n))
    with pytest.raises(RuntimeError, match="bundle 2 refused"):
        loading.load(services, run, bundles)
    assert sorted(destination.sent) == [1, 3, 4]
    assert [c for _, c in store.recorded] == [bundles[0].cursor]
    destination.refuse, destination.sent = -1, []
    loading.load(services, replace(run), bundles)
    assert destination.sent == [2, 5]
    assert [c for _, c in store.recorded[1:]] == [b.cursor for b in bundles[1:]]
    DISCARDS.wait()  # removed in the background (pipeline/discards.py)
    assert not list(tmp_path.glob("bundle-*"))  # recorded: files and markers gone


# -- spools: a run removes only its own store's dead runs' --------------------------------------

SPOOL_CHANNEL = "5i5rip6zaf8qprwfi86iu9xsjy"
HOLD_A_SPOOL = """
import sys, time
from mattermost_connector.pipeline.spool import new_spool
print(new_spool(sys.argv[1], sys.argv[2], 7), flush=True)
time.sleep(60)
"""


def _spool_held_by_another_process(store: str, tmp: Path):
    import os
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SPOOL, SPOOL_CHANNEL, store],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_spool_is_removed_only_when_it_is_this_stores_dead_run(tmp_path: Path, monkeypatch):
    """Two installs on one host sync the same channel: one's run must never remove the
    other's live spool (its run then fails on FileNotFoundError), nor any other install's;
    only its own store's runs that died (the owner file's lock is free)."""
    import tempfile

    from mattermost_connector.pipeline.spool import new_spool, release_spool, store_identity

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    ours = store_identity(f"sqlite:///{tmp_path / 'ours.db'}")
    theirs = store_identity(f"sqlite:///{tmp_path / 'theirs.db'}")
    assert ours != theirs
    their_live, their_spool = _spool_held_by_another_process(theirs, tmp_path)
    our_live, our_live_spool = _spool_held_by_another_process(ours, tmp_path)
    try:
        without_owner = tmp_path / f"mattermost-{SPOOL_CHANNEL}-older-install"
        without_owner.mkdir()
        mine = new_spool(SPOOL_CHANNEL, ours, 8)
        assert their_spool.is_dir() and our_live_spool.is_dir() and without_owner.is_dir()
        release_spool(mine)
        assert not mine.exists()
    finally:
        for process in (their_live, our_live):
            process.kill()
            process.wait()
    again = new_spool(SPOOL_CHANNEL, ours, 9)  # both processes died
    assert not our_live_spool.exists()  # ours: removed
    assert their_spool.is_dir() and without_owner.is_dir()  # another install's: left
    release_spool(again)


def test_a_sqlite_store_is_named_by_its_absolute_path_and_never_by_its_password(
    tmp_path: Path, monkeypatch
):
    from mattermost_connector.pipeline.spool import store_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    here = store_identity("sqlite:///data/state.db")
    assert here == store_identity(f"sqlite:///{tmp_path}/data/state.db")
    monkeypatch.chdir(tmp_path / "other")
    assert store_identity("sqlite:///data/state.db") != here
    named = store_identity("postgresql+psycopg://u:s3cret@db/state")
    assert "s3cret" not in named and named != store_identity("postgresql+psycopg://u:x@db/state")
