"""The state store, on SQLite and on the machine's PostgreSQL, through the same code."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.state import INTERRUPTED, SCHEMA_VERSION, StateStore, message_digest
from tests.support import POSTGRES


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'state.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_cursors_round_trip_and_accumulate(store_url: str):
    store = StateStore(store_url)
    assert store.cursor("c1") is None
    store.save_cursor("c1", Cursor(5, ("a",)), 10)
    store.save_cursor("c1", Cursor(9, ("b",), "a"), 3)
    store.save_cursor("c2", Cursor(1), 0)
    assert store.cursor("c1") == Cursor(9, ("b",), "a")
    rows = {row["channel_id"]: row for row in store.cursors()}
    assert rows["c1"]["posts_delivered"] == 13 and set(rows) == {"c1", "c2"}
    store.close()
    assert StateStore(store_url).cursor("c1").boundary_ms == 9  # persisted


def test_run_history(store_url: str):
    store = StateStore(store_url)
    run_id = store.start_run("c1", "sync", flow_run_id="fr-1")
    (running,) = store.runs()
    assert running.status == "running" and running.ended_at is None
    store.finish_run(run_id, "failed", Counts(posts=4, files=1, objects=12), error="boom")
    (done,) = store.runs(channel_id="c1")
    assert (done.status, done.posts, done.files, done.objects, done.error) == (
        "failed",
        4,
        1,
        12,
        "boom",
    )
    assert done.flow_run_id == "fr-1" and done.ended_at is not None


def test_a_run_left_running_is_closed_by_the_next_run_of_its_channel(store_url: str):
    store = StateStore(store_url)
    killed = store.start_run("c1", "sync")  # its process died: never finished
    other = store.start_run("c2", "sync")
    store.start_run("c1", "backfill")
    by_id = {run.id: run for run in store.runs()}
    assert by_id[killed].status == "failed" and by_id[killed].ended_at is not None
    assert by_id[killed].error == INTERRUPTED
    assert by_id[other].status == "running"  # another channel's run is left alone


def test_run_kinds_and_statuses_are_stored_as_their_plain_strings(store_url: str):
    store = StateStore(store_url)
    run_id = store.start_run("c1", RunKind.BACKFILL)
    store.finish_run(run_id, RunStatus.ARCHIVED)
    (run,) = store.runs()
    assert (type(run.kind), type(run.status)) == (RunKind, RunStatus)
    assert (run.kind, run.status) == ("backfill", "archived")
    with store._engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT kind, status FROM runs")).one()
    assert tuple(stored) == ("backfill", "archived")  # what earlier releases wrote and read


def old_store(path: Path, version: int, *statements: str) -> str:
    """A SQLite file as an older release left it: its schema version, then its tables."""
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        connection.execute(sa.text(f"INSERT INTO schema_version VALUES ({version})"))
        for statement in statements:
            connection.execute(sa.text(statement))
    engine.dispose()
    return url


def test_an_older_schema_is_migrated_in_place(tmp_path: Path):
    url = old_store(tmp_path / "old.db", 0)  # what a release before the first migration left
    store = StateStore(url)
    assert store.version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    store.save_cursor("c", Cursor(1), 1)


def test_a_v1_file_with_cursors_migrates_to_the_current_schema_keeping_them(tmp_path: Path):
    url = old_store(  # the schema and data the first release wrote
        tmp_path / "v1.db",
        1,
        "CREATE TABLE channel_cursors (channel_id VARCHAR(64) PRIMARY KEY, cursor TEXT NOT NULL,"
        " posts_delivered BIGINT NOT NULL, updated_at DATETIME NOT NULL)",
        'INSERT INTO channel_cursors VALUES (\'c1\', \'{"boundary_ms": 7, "boundary_ids": [], "anchor_id": "a"}\', 3, \'2026-01-01\')',
    )
    store = StateStore(url)
    assert store.version() == SCHEMA_VERSION  # the latest migration's, whatever it is
    assert store.cursor("c1").anchor_id == "a"
    store.record_attachments(
        "c1",
        [
            {
                "file_id": "f",
                "post_id": "p1",
                "name": "a",
                "mime_type": "x/y",
                "size": 1,
                "sha256": "0" * 64,
                "status": "embedded",
                "error": None,
            }
        ],
    )
    assert store.attachments("c1")[0]["sha256"] == "0" * 64
    store.record_posts("c1", [{"id": "p1", "user_id": "u", "create_at": 8, "message": "hi"}])
    assert store.delivered(["p1"])["p1"]["message"] == "hi"


def test_delivered_posts_upsert_and_sweep(store_url: str):
    store = StateStore(store_url)
    post = {"id": "p1", "user_id": "u", "create_at": 10, "update_at": 10, "message": "first"}
    store.record_delivery("c1", "c1", Cursor(10), [post, {**post, "id": "p2", "create_at": 11}], 1)
    store.record_posts("c1", [{**post, "message": "edited", "edit_at": 12, "update_at": 12}])
    row = store.delivered(["p1", "p2", "nope"])
    assert (
        set(row) == {"p1", "p2"} and row["p1"]["message"] == "edited" and row["p1"]["edit_at"] == 12
    )
    store.mark_seen("c1", ["p1"], run_id=5)
    assert [r["post_id"] for r in store.unseen("c1", run_id=5, created_from=0)] == ["p2"]
    assert store.unseen("c1", run_id=5, created_from=11.5) == []
    store.record_posts("c1", [{**post, "id": "p2", "create_at": 11, "delete_at": 20}])
    assert store.unseen("c1", run_id=5, created_from=0) == []


def test_a_large_delivery_is_recorded_whole_and_its_last_version_of_a_post_wins(
    store_url: str,
):
    """More posts than one statement takes (they go many to a statement), one of them twice:
    PostgreSQL would refuse a statement updating a row twice; the later version is kept."""
    store = StateStore(store_url)
    posts = [
        {"id": f"p{n:03d}", "user_id": "u", "create_at": n, "message": f"m{n}", "root_id": ""}
        for n in range(250)
    ]
    edited = {**posts[7], "message": "edited", "edit_at": 300, "update_at": 300}
    store.record_delivery("c1", "c1", Cursor(249), [*posts[:10], edited, *posts[10:]], 251)
    rows = store.delivered([p["id"] for p in posts])
    assert len(rows) == 250
    assert rows["p007"]["message"] == "edited" and rows["p007"]["edit_at"] == 300
    assert rows["p249"] == {
        **rows["p249"],
        "channel_id": "c1",
        "root_id": None,
        "create_at": 249,
        "update_at": 249,
        "delete_at": 0,
        "message": "m249",
        "message_sha256": message_digest("m249"),
    }


def test_channel_leases_exclude_and_expire(store_url: str):
    store = StateStore(store_url)
    assert store.try_lease("c1", "run-a", 60)
    assert not store.try_lease("c1", "run-b", 60)  # held
    assert store.try_lease("c1", "run-a", 60)  # renewal by its holder
    assert store.try_lease("c2", "run-b", 60)  # other channels are independent
    store.release_lease("c1", "run-b")  # not the holder: nothing happens
    assert store.lease_holder("c1")[0] == "run-a"
    store.release_lease("c1", "run-a")
    assert store.try_lease("c1", "run-b", 0.01)
    import time

    time.sleep(0.05)  # run-b died without releasing: its lease runs out
    assert store.try_lease("c1", "run-c", 60)


def test_a_new_store_opened_by_many_at_once_is_migrated_once(store_url: str):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        stores = list(pool.map(lambda _: StateStore(store_url), range(8)))
    assert {store.version() for store in stores} == {SCHEMA_VERSION}
    with stores[0]._engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM schema_version")).scalar() == 1


def test_first_names_are_kept_whatever_is_offered_later(tmp_path: Path):
    store = StateStore(f"sqlite:///{tmp_path / 'names.db'}")
    assert store.pin_names("channel", {"c1": "team/old"}) == {"c1": "team/old"}
    assert store.pin_names("channel", {"c1": "team/new", "c2": "team/other"}) == {
        "c1": "team/old",
        "c2": "team/other",
    }
    # kinds are separate: a user and a channel may share an id space
    assert store.pin_names("user", {"c1": "@someone"}) == {"c1": "@someone"}
    assert StateStore(f"sqlite:///{tmp_path / 'names.db'}").pin_names("channel", {"c1": "x"}) == {
        "c1": "team/old"
    }
